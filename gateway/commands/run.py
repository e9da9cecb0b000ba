"""`lora-gateway run`: the daemon in the foreground, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from gateway.commands.common import CONFIG_HELP, error, load


def setup_logging(level: str) -> None:
    # journald stamps every line itself; a second timestamp only clutters journalctl.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def handler(args: argparse.Namespace) -> int:
    # Imported when run, so that the other subcommands start without the daemon's modules.
    from gateway.daemon import Daemon
    from gateway.radio.serial_link import ModuleError

    cfg = load(args.config)
    setup_logging(cfg.log.level)
    try:
        return Daemon(cfg).run()
    except ModuleError as e:
        error(e)
        return 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run the gateway daemon", description="Run the gateway until SIGTERM or Ctrl-C.")
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.set_defaults(func=handler)
