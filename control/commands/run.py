"""run: a one-off unit of the current release."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import termios
import tty as tty_
from dataclasses import dataclass
from typing import Callable, Iterator

import click

from bae.access import deployment_for
from bae.errors import Invalid
from control.commands import Invocation, command
from scheduler.oneoff import run_oneoff
from scheduler.runtime import OneOff


@command("run", passthrough=True, ignore_unknown_options=True, allow_interspersed_args=False)
@click.argument("target", metavar="APP[/DEP]")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND...")
def run(inv: Invocation, target: str, cmd: tuple[str, ...]) -> int:
    """Run COMMAND in a one-off unit (the release's image, config and plan); ssh -t makes it interactive."""
    dep = deployment_for(inv.caller, inv.store, target)
    if cmd[:1] == ("--",):  # `run APP -- CMD`: `--` ends bae's options, as with heroku and dokku
        cmd = cmd[1:]
    if not cmd:
        raise Invalid("say what to run", f"For example: run {dep.slug} python manage.py migrate (or bash, with ssh -t)")
    release = inv.current_release(dep)
    command_line = _command_line(inv, target, cmd)
    term = terminal(inv)
    job = OneOff.for_release(inv.platform.settings, dep, release, command_line, tty=term.tty, size=term.size)
    inv.platform.logs.event(dep.app, dep.name, "run", f"one-off unit started by {inv.caller.name}: {command_line[:200]}")
    with raw_mode(inv, term):
        code = run_oneoff(inv.platform.runtime, job, stdin=term.read, stdout=inv.console.raw,
                          stderr=inv.console.raw_err, resize=term.resize, alive=inv.alive)
    inv.platform.logs.event(dep.app, dep.name, "run", f"one-off unit exited {code}: {command_line[:200]}")
    return code


def _command_line(inv: Invocation, target: str, cmd: tuple[str, ...]) -> str:
    """What to hand to bash -c. Over SSH, the rest of the line as it arrived (the pusher's shell has
    done its quoting, so `run app 'ls | wc -l'` and `run app bash -c "'echo a; echo b'"` both work);
    locally the words, quoted back (a single word is taken as a whole command line)."""
    raw = inv.request.data if inv.request is not None else None
    if raw:
        match = re.match(r"\s*run\s+(?:--\s+)?" + re.escape(target) + r"\s+(?:--(?:\s+|$))?(.*)$", raw, re.S)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


@dataclass(frozen=True)
class Terminal:
    """Where an interactive command's input comes from: the SSH channel (its pty, size, input and
    window changes) or, run locally, this process's own stdin."""

    tty: bool
    size: tuple[int, int] | None
    read: Callable[[int], bytes]
    resize: Callable | None


def terminal(inv: Invocation) -> Terminal:
    if inv.request is not None:
        tty = inv.request.tty
        return Terminal(tty, inv.request.size, inv.request.read, inv.request.watch_resize if tty else None)
    tty = sys.stdin.isatty() and sys.stdout.isatty()
    return Terminal(tty, os.get_terminal_size()[:2] if tty else None, lambda n: os.read(0, n), None)


@contextlib.contextmanager
def raw_mode(inv: Invocation, term: Terminal) -> Iterator[None]:
    """A local terminal in raw mode while an interactive command runs, restored however it ends
    (over SSH the client's own terminal is the raw one)."""
    if not term.tty or inv.remote:
        yield
        return
    old = termios.tcgetattr(0)
    tty_.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, old)
