"""What runs on one SSH session channel: git receive/upload-pack for an
authorized user, or a command from bae's command table. Shells and subsystems
are refused with a one-line reason.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from typing import Callable

import paramiko
from dulwich.errors import GitProtocolError
from dulwich.protocol import ReceivableProtocol
from dulwich.server import DictBackend, UploadPackHandler

from bae.access import MEMBER, app_for
from bae.console import Console
from bae.errors import BaeError, Invalid
from bae.model import Caller, User, parse_target
from bae.store import Store
from gitserver.receive import DEFAULT_MAX_PUSH_SIZE, DeployHook, PushTarget, receive_pack
from gitserver.repos import Repositories

__all__ = ["Request", "SessionContext", "Session", "parse_repo_path"]

log = logging.getLogger("bae.ssh")

_GIT = {"git-receive-pack": "push", "git-upload-pack": "fetch"}


@dataclass
class Request:
    """What the client asked this channel to do (filled in on the transport thread)."""

    kind: str = ""  # exec, shell or subsystem
    data: str | None = None
    pty: tuple | None = None
    on_resize: Callable[[int, int], None] | None = None
    channel: object = None  # the paramiko channel, for commands that read input as it comes (run)

    def alive(self) -> bool:
        """False once the client went away: long commands and pushes stop."""
        chan = self.channel
        return chan is None or (not chan.closed and chan.get_transport().is_active())

    @property
    def tty(self) -> bool:
        """The client asked for a terminal (ssh -t)."""
        return self.pty is not None

    @property
    def size(self) -> tuple[int, int] | None:
        """The terminal's columns and rows, if there is one."""
        return (self.pty[1], self.pty[2]) if self.pty else None

    def read(self, n: int) -> bytes:
        """Input from the client as it comes (b"" at its end)."""
        return self.channel.recv(n)

    def watch_resize(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(columns, rows)`` when the client's terminal changes size."""
        self.on_resize = callback


@dataclass
class SessionContext:
    store: Store
    repos: Repositories
    deploy_hook: DeployHook
    # run_command(caller, argv, stdin, stdout, stderr, request) -> exit code
    run_command: Callable[..., int]
    prog: str = "ssh bae@HOST"
    max_push_size: int = DEFAULT_MAX_PUSH_SIZE  # bytes; 0: no limit


def redact(command: str) -> str:
    """The command line as the operator's log may show it: config values never appear."""
    if not command.lstrip().startswith("config:set"):
        return command
    try:
        argv = shlex.split(command)
    except ValueError:
        return "config:set (unreadable arguments)"
    return " ".join(a.split("=", 1)[0] + "=***" if "=" in a else a for a in argv)


def parse_repo_path(path: str) -> tuple[str, str]:
    """``/APP.git``, ``APP.git``, ``/APP/DEP.git`` (the ``.git`` optional) → (app, deployment)."""
    target = path.removesuffix(".git").removeprefix("/")
    if not target or target.count("/") > 1:
        raise Invalid(
            f"'{path[:80]}' is not a repository path bae serves",
            "Use ssh://bae@HOST:PORT/APP.git or ssh://bae@HOST:PORT/APP/DEPLOYMENT.git",
        )
    return parse_target(target)  # the names, as every command checks them


class _ChannelWriter:
    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send

    def write(self, data: bytes) -> int:
        self._send(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class Session:
    def __init__(self, context: SessionContext, chan: paramiko.Channel, user: User,
                 request: Request, peer: str) -> None:
        self.ctx = context
        self.chan = chan
        self.user = user
        self.request = request
        self.request.channel = chan
        self.peer = peer
        self.stdout = _ChannelWriter(chan.sendall)
        self.stderr = _ChannelWriter(chan.sendall_stderr)
        self.console = Console(self.stdout, self.stderr)

    def run(self) -> None:
        code = 1
        started = time.monotonic()
        what = self.request.kind
        try:
            if self.request.kind == "shell":
                self.console.error(
                    "bae offers no interactive shell.",
                    f"Run a command instead, e.g. `{self.ctx.prog} help`; use `run APP CMD` for a shell in your app.")
            elif self.request.kind == "subsystem":
                what = f"subsystem {self.request.data}"
                self.console.error(f"bae offers no '{self.request.data}' subsystem (no sftp or scp); push with git.")
            else:
                what = self.request.data or ""
                code = self._exec(self.request.data or "")
        except BaeError as exc:
            self.console.error(exc.message, exc.hint)
            code = exc.exit_code
        except OSError:
            code = 255  # the client went away
        finally:
            log.info("ssh %s: %s ran %r: exit %d (%.2f s)", self.peer, self.user.name,
                     redact(what)[:120], code, time.monotonic() - started)
            self._close(code)

    def _close(self, code: int) -> None:
        try:
            self.chan.send_exit_status(code)
            self.chan.shutdown_write()
        except Exception:
            pass
        self.chan.close()

    def _exec(self, command: str) -> int:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise Invalid(f"cannot read the command line: {exc}", "Check the quotes.") from None
        if len(argv) >= 2 and argv[0] == "git" and f"git-{argv[1]}" in _GIT:
            argv = [f"git-{argv[1]}"] + argv[2:]
        if argv and argv[0] in _GIT:
            if len(argv) != 2:
                raise Invalid(f"{argv[0]} takes exactly one repository path")
            return self._git(argv[0], argv[1])
        stdin = self.chan.makefile("rb")
        caller = Caller(self.user, local=False)
        return self.ctx.run_command(caller, argv, stdin, self.stdout, self.stderr, self.request)

    def _git(self, service: str, path: str) -> int:
        app, dep = parse_repo_path(path)
        caller = Caller(self.user, local=False)
        app_for(caller, self.ctx.store, app, MEMBER)
        self.ctx.store.deployment(app, dep)  # says clearly when the deployment does not exist
        proto = ReceivableProtocol(self.chan.recv, self.chan.sendall)
        alive = self.request.alive
        try:
            if service == "git-receive-pack":
                receive_pack(self.ctx.repos, PushTarget(app, dep, self.user), proto, self.ctx.deploy_hook, alive,
                             self.ctx.max_push_size)
            else:
                repo = self.ctx.repos.open(app, dep)
                try:
                    UploadPackHandler(DictBackend({"/": repo}), ["/"], proto).handle()
                finally:
                    repo.close()
        except GitProtocolError as exc:
            log.info("ssh %s: %s %s of %s/%s ended early: %s", self.peer, self.user.name,
                     _GIT[service], app, dep, exc)
            return 1
        return 0
