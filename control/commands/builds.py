"""builds, builds:output."""

from __future__ import annotations

from datetime import datetime

import click

from bae.access import deployment_for
from bae.console import ago
from bae.errors import Invalid
from control.commands import Invocation, command


def _duration(start: str, end: str | None) -> str:
    if not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{seconds:.1f}s"


@command("builds")
@click.argument("target", metavar="APP[/DEP]")
def builds(inv: Invocation, target: str) -> None:
    """List the recent builds of a deployment, newest first."""
    dep = deployment_for(inv.caller, inv.store, target)
    inv.console.table(
        ["build", "status", "commit", "user", "started", "took"],
        [[b.number, b.status, b.commit[:7], b.user, ago(b.started_at), _duration(b.started_at, b.finished_at)]
         for b in inv.store.builds(dep)],
        empty=f"No builds yet. Push to {inv.platform.git_url(dep.app, dep.name)}",
    )


@command("builds:output")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("build", metavar="BUILD")
def builds_output(inv: Invocation, target: str, build: str) -> None:
    """Print the log of one build (its number, as `builds` lists it)."""
    dep = deployment_for(inv.caller, inv.store, target)
    if not build.isdigit() or len(build) > 9:
        raise Invalid(f"'{build[:40]}' is not a build number", f"See `builds {dep.slug}` for the numbers.")
    found = inv.store.build(dep, int(build))
    inv.console.raw(found.log.encode("utf-8", "replace"))
    if found.status == "running":
        inv.console.err("(this build is still running)")
