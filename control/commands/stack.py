"""stack:build (on the platform host), stacks, stack:set."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.errors import Invalid
from control.commands import Invocation, command


@command("stack:build", local_only=True)
@click.argument("names", nargs=-1, metavar="[NAME|--all]...")
@click.option("--all", "all_", is_flag=True, help="Build every stack (bookworm, trixie, sid).")
@click.option("--force", is_flag=True, help="Rebuild even if the image for this recipe exists.")
@click.option("--if-missing", is_flag=True, help="Quietly do nothing when the image exists (for make up).")
def stack_build(inv: Invocation, names: tuple[str, ...], all_: bool, force: bool, if_missing: bool) -> None:
    """Build stack images (default: the default stack, bookworm); pushes build others when first needed."""
    # imported here: the Docker SDK is loaded by the commands that use it only
    from buildpacks.stack import DEFAULT, STACKS, build_stack, stack_exists, stack_named, stack_tag

    settings = inv.platform.settings.build
    chosen = [s.name for s in STACKS] if all_ else [stack_named(n).name for n in names] or [DEFAULT]
    for name in chosen:
        if if_missing and not force and stack_exists(stack_tag(settings, name)):
            continue
        inv.console.step(f"Building the {name} stack image")
        build_stack(settings, inv.console.detail, name, force=force)


@command("stacks")
def stacks_list(inv: Invocation) -> None:
    """List the stacks with their Python and Node.js versions, and whether they are built."""
    from buildpacks.stack import STACKS, stack_exists, stack_tag, versions

    settings = inv.platform.settings.build
    rows = []
    for stack in STACKS:
        found = versions(settings, stack.name)
        built = "built" if stack_exists(stack_tag(settings, stack.name)) else "built on first use"
        rows.append([stack.name, found["python"], found["node"], built])
    inv.console.table(["stack", "python", "node.js", "image"], rows)


@command("stack:set")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("name", metavar="NAME|auto")
def stack_set(inv: Invocation, target: str, name: str) -> None:
    """Build a deployment on stack NAME, or `auto`: the oldest stack whose Python satisfies the app's pins."""
    from buildpacks.stack import STACKS, stack_named

    dep = deployment_for(inv.caller, inv.store, target)
    if name == "auto":
        inv.store.set_stack(dep, "")
        inv.console.step(f"{dep.slug} will build on the stack its Python pins choose (now {', '.join(s.name for s in STACKS)})")
    else:
        if not name:
            raise Invalid("name a stack", "For example: stack:set APP trixie (see `stacks`).")
        stack_named(name)
        inv.store.set_stack(dep, name)
        inv.console.step(f"{dep.slug} will build on stack {name}")
    inv.console.detail("The next push uses it.")
