"""run: a one-off unit of the current release."""

from __future__ import annotations

import os
import re
import shlex
import sys
import termios
import tty as tty_

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
    if inv.request is not None:
        tty, size, read = inv.request.tty, inv.request.size, inv.request.read
        resize = inv.request.watch_resize if tty else None
    else:
        tty = sys.stdin.isatty() and sys.stdout.isatty()
        size = os.get_terminal_size()[:2] if tty else None
        read, resize = (lambda n: os.read(0, n)), None
    job = OneOff.for_release(inv.platform.settings, dep, release, command_line, tty=tty, size=size)
    inv.platform.logs.event(dep.app, dep.name, "run", f"one-off unit started by {inv.caller.name}: {command_line[:200]}")
    old_tty = _raw_mode() if tty and not inv.remote else None
    try:
        code = run_oneoff(inv.platform.runtime, job, stdin=read, stdout=inv.console.raw, stderr=inv.console.raw_err,
                          resize=resize, alive=inv.alive)
    finally:
        if old_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, old_tty)
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


def _raw_mode() -> list:
    old = termios.tcgetattr(0)
    tty_.setraw(0)
    return old
