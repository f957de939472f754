"""The ``bae`` console script: run one command locally, as the platform's admin.

Usage: ``bae [--config FILE] COMMAND [ARGS]...``. The same command table serves
SSH clients (see gitserver.session); locally the caller is the operator.
"""

from __future__ import annotations

import sys

from bae.config import load
from bae.console import Console
from bae.errors import BaeError
from bae.model import Caller
from control.commands import Invocation, dispatch
from control.platform import Platform

__all__ = ["main"]


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    config = None
    while argv and argv[0].startswith("--config"):
        if argv[0] == "--config":
            if len(argv) < 2:
                raise BaeError("--config needs a file name", "Usage: bae --config FILE COMMAND [ARGS]...")
            config, argv = argv[1], argv[2:]
        else:
            config, argv = argv[0].split("=", 1)[1], argv[1:]
    return config, argv


def main(argv: list[str] | None = None) -> int:
    console = Console(sys.stdout.buffer, sys.stderr.buffer)
    try:
        config, args = _split_config(list(sys.argv[1:] if argv is None else argv))
        settings = load(config)
        try:
            platform = Platform(settings)
        except PermissionError as exc:
            raise BaeError(
                f"cannot use the data directory {settings.data_dir}: {exc.strerror}",
                "Run bae as root on the platform host, or point data_dir at a directory you own.",
            ) from None
    except BaeError as exc:
        console.error(exc.message, exc.hint)
        return exc.exit_code
    inv = Invocation(platform, Caller(None, local=True), console, sys.stdin.buffer)
    return dispatch(inv, args)


if __name__ == "__main__":
    sys.exit(main())
