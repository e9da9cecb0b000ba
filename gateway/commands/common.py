"""What the subcommands share: which configuration file they read, and how they report a failure."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.config import GatewayConfig, load_config

DEFAULT_CONFIG = Path("/etc/lora-gateway/config.toml")
CONFIG_HELP = f"configuration file (default: $LORA_GATEWAY_CONFIG or {DEFAULT_CONFIG})"


def config_path(value: str | None) -> Path:
    """The file named by --config, else by $LORA_GATEWAY_CONFIG, else the default."""
    if value:
        return Path(value)
    env = os.environ.get("LORA_GATEWAY_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def load(value: str | None) -> GatewayConfig:
    """The configuration of `config_path(value)`, validated (ConfigError names file, key and value)."""
    return load_config(config_path(value))


def error(message: object, command: str = "") -> None:
    """One line on stderr, after the command that failed: `lora-gateway detect: ...`."""
    prog = f"lora-gateway {command}" if command else "lora-gateway"
    print(f"{prog}: {message}", file=sys.stderr)


# What a shell reports for a command that SIGPIPE ended: 128 + 13.
EXIT_CLOSED_STDOUT = 141


def closed_stdout_ends_quietly(command: Callable[[], int]) -> int:
    """`lora-gateway status | head`: a reader that stops early ends the command without a traceback.

    stdout is flushed here, after a return or an exit (argparse's --help), so that a closed pipe
    is met here and not in the interpreter's last flush; stdout then points at /dev/null, so that
    that flush finds nothing to complain about.
    """
    try:
        try:
            return command()
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_STDOUT
