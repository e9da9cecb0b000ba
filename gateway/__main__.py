"""`python -m gateway ...`: the `lora-gateway` command."""

import sys

from gateway.commands import main

if __name__ == "__main__":
    sys.exit(main())
