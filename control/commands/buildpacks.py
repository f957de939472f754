"""buildpacks, buildpacks:set, buildpacks:clear."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.errors import Invalid
from buildpacks.catalog import BUILTINS, validate_spec
from control.commands import Invocation, command


@command("buildpacks")
@click.argument("target", metavar="APP[/DEP]")
def buildpacks_list(inv: Invocation, target: str) -> None:
    """Show the buildpacks a deployment builds with (default: detected among the built-ins)."""
    dep = deployment_for(inv.caller, inv.store, target)
    if dep.buildpacks:
        inv.console.out(f"=== {dep.slug} builds with, in order:")
        for i, spec in enumerate(dep.buildpacks, 1):
            inv.console.out(f"{i}. {spec}")
    else:
        inv.console.out(f"=== {dep.slug} detects its buildpack among the built-ins:")
        for bp in BUILTINS:
            inv.console.out(f"- {bp.name}: looks for {bp.looks_for}")


@command("buildpacks:set")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("specs", nargs=-1, metavar="BUILDPACK...")
def buildpacks_set(inv: Invocation, target: str, specs: tuple[str, ...]) -> None:
    """Build with these buildpacks, in order: built-in names, git URLs (#ref), or (admins) local paths."""
    dep = deployment_for(inv.caller, inv.store, target)
    if not specs:
        raise Invalid("name at least one buildpack", f"For example: buildpacks:set {dep.slug} python")
    if len(specs) > 10:
        raise Invalid("at most 10 buildpacks per deployment")
    checked = [validate_spec(spec, inv.caller.admin) for spec in specs]
    inv.store.set_buildpacks(dep, checked, inv.caller.admin)
    inv.console.step(f"{dep.slug} will build with: {', '.join(checked)}")
    inv.console.detail("The next push uses them.")


@command("buildpacks:clear")
@click.argument("target", metavar="APP[/DEP]")
def buildpacks_clear(inv: Invocation, target: str) -> None:
    """Go back to detecting the buildpack among the built-ins."""
    dep = deployment_for(inv.caller, inv.store, target)
    inv.store.set_buildpacks(dep, [])
    inv.console.step(f"{dep.slug} will detect its buildpack among the built-ins on the next push")
