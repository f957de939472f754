"""releases."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.commands import Invocation, command
from bae.console import ago


@command("releases")
@click.argument("target", metavar="APP[/DEP]")
def releases(inv: Invocation, target: str) -> None:
    """List a deployment's releases, newest first (v3  deploy 1a2b3c4  alice  2m ago)."""
    dep = deployment_for(inv.caller, inv.store, target)
    rows = []
    for r in inv.store.releases(dep):
        status = {"active": "current", "pending": "deploying", "superseded": ""}.get(r.status, r.status)
        if r.status == "failed" and r.error:
            status = f"failed: {r.error}"
        rows.append([r.name, r.description, r.user, ago(r.created_at), status])
    if not rows:
        inv.console.out(f"No releases yet. Push to {inv.platform.git_url(dep.app, dep.name)}")
        return
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        inv.console.out("  ".join(c.ljust(w) for c, w in zip(row[:4], width)) + ("  " + row[4] if row[4] else ""))
