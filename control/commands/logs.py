"""logs: app, platform and router lines, merged and time-ordered."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.errors import Invalid
from control.commands import Invocation, command


@command("logs")
@click.argument("target", metavar="APP[/DEP]")
@click.option("-n", "--num", "lines", default=100, show_default=True, help="How many of the last lines to show.")
@click.option("-t", "--tail", "follow", is_flag=True, help="Keep following new lines until interrupted.")
@click.option("--type", "process", metavar="TYPE", help="Only lines of one process type (web, worker...).")
@click.option("--unit", metavar="UNIT", help="Only lines of one unit (web.2).")
@click.option("--router", is_flag=True, help="Only the router's access lines.")
def logs(inv: Invocation, target: str, lines: int, follow: bool, process: str | None, unit: str | None,
         router: bool) -> None:
    """Show a deployment's logs: its units' output, platform events and (--router) requests."""
    dep = deployment_for(inv.caller, inv.store, target)
    if lines < 1 or lines > 100000:
        raise Invalid(f"-n {lines} is out of range", "Ask for 1 to 100000 lines.")
    if unit and "." not in unit:
        raise Invalid(f"'{unit[:40]}' is not a unit name", "Units are named like web.1 (see `ps`).")
    filters = {"process": process, "unit": unit, "router": router}
    for entry in inv.platform.logs.read(dep.app, dep.name, lines=lines, **filters):
        inv.console.out(entry.render())
    if follow:
        try:
            for entry in inv.platform.logs.follow(dep.app, dep.name, lambda: not inv.alive(), **filters):
                inv.console.out(entry.render())
        except (KeyboardInterrupt, OSError):
            return
