"""releases."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.console import ago
from bae.errors import Invalid
from control.commands import Invocation, command
from control.deploy import rollback, rollback_target


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


def _version(text: str) -> int:
    value = text[1:] if text.lower().startswith("v") else text
    if not value.isdigit() or len(value) > 9:
        raise Invalid(f"'{text[:30]}' is not a release", "Releases are written like v3 (see `releases`).")
    return int(value)


@command("releases:info")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("version", metavar="vN")
def releases_info(inv: Invocation, target: str, version: str) -> None:
    """Show one release: image, commit, config var names, build, who and when."""
    dep = deployment_for(inv.caller, inv.store, target)
    r = inv.store.release(dep, _version(version))
    out = inv.console
    out.out(f"=== {dep.slug} {r.name}")
    out.out(f"Description:    {r.description}")
    out.out(f"Status:         {r.status}" + (f" ({r.error})" if r.error else ""))
    out.out(f"By:             {r.user}")
    out.out(f"When:           {r.created_at} ({ago(r.created_at)})")
    out.out(f"Image:          {r.image}")
    out.out(f"Commit:         {r.commit or '-'}")
    build = inv.store.build_by_id(r.build_id).number if r.build_id else None
    out.out(f"Build:          {build if build is not None else '-'}")
    out.out(f"Process types:  {', '.join(sorted(r.process_types)) or '(none)'}")
    out.out(f"Config vars:    {', '.join(sorted(r.config)) or '(none)'}")


@command("releases:rollback")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("version", required=False, metavar="[vN]")
def releases_rollback(inv: Invocation, target: str, version: str | None) -> None:
    """Roll back to release vN (default: the one before the current), as a new release with vN's image and config."""

    dep = deployment_for(inv.caller, inv.store, target)
    target_release = rollback_target(inv.platform, dep, None if version is None else _version(version))
    release = rollback(inv.platform, dep, target_release, user=inv.caller.name, out=inv.console)
    inv.console.detail(f"{release.name} runs {target_release.name}'s code and config vars.")
    inv.console.detail(f"The config vars you set stay as they are (see `config {dep.slug}`); the next deploy or "
                       "config change uses them.")

