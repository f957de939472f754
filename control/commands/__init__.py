"""The command table, shared by the local CLI and the SSH server.

Each module in this package adds the commands of one topic (``apps:*`` in
apps.py, ...) with ``@command``. ``dispatch`` runs one command line for a caller
and turns every error into a message on the caller's stderr and an exit code;
it never lets a traceback through. Commands write through ``inv.console`` only
(never to sys.stdout), so concurrent SSH sessions cannot mix their output.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import secrets
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

import click

from bae.console import Console
from bae.errors import AccessDenied, BaeError, Invalid
from bae.model import Caller, Deployment, Release
from bae.store import Store
from control.platform import Platform

__all__ = ["Invocation", "Terminal", "command", "dispatch", "table", "TOPICS", "command_help"]

log = logging.getLogger("bae.commands")

TOPICS = ["system", "users", "keys", "apps", "deployments", "access", "builds", "buildpacks", "stack", "ps",
          "releases", "domains", "config", "logs", "run", "certs", "nodes", "addons"]


class _Table(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)


table = _Table(name="bae", context_settings={"help_option_names": []})


class Terminal(Protocol):
    """What an SSH session offers an interactive command (``gitserver.session.Request``)."""

    data: str | None  # the command line as it arrived

    @property
    def tty(self) -> bool: ...

    @property
    def size(self) -> tuple[int, int] | None: ...

    def read(self, n: int) -> bytes: ...

    def watch_resize(self, callback: Callable[[int, int], None]) -> None: ...


@dataclass
class Invocation:
    """Everything a command may use: the platform, who called, where to write."""

    platform: Platform
    caller: Caller
    console: Console
    stdin: BinaryIO
    prog: str = "bae"
    request: Terminal | None = None  # over SSH: the session, for interactive commands (run)
    alive: Callable[[], bool] = lambda: True  # False once the caller went away (long commands stop)

    @property
    def remote(self) -> bool:
        """Over SSH (not the `bae` command on the platform host)."""
        return not self.caller.local

    @property
    def store(self) -> Store:
        return self.platform.store

    def current_release(self, dep: Deployment) -> Release:
        """The release ``dep`` runs, or Invalid saying to push first."""
        if not dep.release_version:
            raise Invalid(f"nothing is deployed to {dep.slug} yet",
                          f"Push first: git push {self.platform.git_url(dep.app, dep.name)} master")
        return self.store.release(dep, dep.release_version)


def command(name: str, *, local_only: bool = False, passthrough: bool = False, **settings):
    """Register the decorated function as command ``name`` (its docstring is the help)."""

    def deco(fn: Callable) -> click.Command:
        context = {"help_option_names": [], **settings}
        cmd = click.command(name, context_settings=context)(click.pass_obj(fn))
        cmd.local_only = local_only  # type: ignore[attr-defined]
        cmd.passthrough = passthrough  # type: ignore[attr-defined]
        table.add_command(cmd)
        return cmd

    return deco


def _load() -> None:
    for topic in TOPICS:
        importlib.import_module(f"control.commands.{topic}")


def _context(cmd: click.Command, name: str, inv: Invocation) -> click.Context:
    return click.Context(cmd, info_name=f"{inv.prog} {name}", obj=inv)


def command_help(inv: Invocation, name: str) -> str:
    cmd = table.commands[name]
    return cmd.get_help(_context(cmd, name, inv))


def visible(inv: Invocation) -> dict[str, click.Command]:
    return {n: c for n, c in sorted(table.commands.items()) if not (inv.remote and c.local_only)}


def dispatch(inv: Invocation, argv: list[str]) -> int:
    """Run ``argv`` (command name first) for ``inv.caller``; return the exit code."""
    _load()
    console = inv.console
    name = argv[0] if argv else "help"
    args = list(argv[1:])
    if name in ("--help", "-h"):
        name = "help"
    try:
        cmd = table.commands.get(name)
        if cmd is None or (inv.remote and cmd.local_only):
            if cmd is not None:
                raise AccessDenied(f"'{name}' runs only on the platform host, not over SSH")
            close = difflib.get_close_matches(name, list(visible(inv)), n=3)
            raise Invalid(
                f"'{name[:60]}' is not a bae command",
                (f"Did you mean: {', '.join(close)}? " if close else "") + f"See `{inv.prog} help`.",
            )
        if not cmd.passthrough and any(a in ("--help", "-h") for a in args[: args.index("--") if "--" in args else None]):
            console.out(command_help(inv, name))
            return 0
        ctx = cmd.make_context(f"{inv.prog} {name}", args, obj=inv)
        with ctx:
            result = cmd.invoke(ctx)
        return result if isinstance(result, int) else 0
    except BaeError as exc:
        console.error(exc.message, exc.hint)
        return exc.exit_code
    except click.UsageError as exc:
        cmd = table.commands.get(name)
        usage = _context(cmd, name, inv).get_usage() if cmd else ""
        console.error(exc.format_message(), f"{usage}\nSee `{inv.prog} help {name}`.")
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        return 1
    except OSError:
        if not inv.alive():  # the caller hung up while the command wrote to them: nothing left to tell
            return 255
        return _internal_error(inv, name, argv)
    except Exception:
        return _internal_error(inv, name, argv)


def _internal_error(inv: Invocation, name: str, argv: list[str]) -> int:
    """An error of ours: a reference for the user, the traceback for the operator's log only."""
    ref = secrets.token_hex(4)
    log.exception("command %r by %s failed (ref %s)", argv[:1], inv.caller.name, ref)
    inv.console.error(f"internal error while running '{name}' (reference {ref}).",
                      "Nothing was half-done on purpose; the operator's log has the details.")
    return 70
