"""stack:build (on the platform host)."""

from __future__ import annotations

import click

from control.commands import Invocation, command


@command("stack:build", local_only=True)
@click.option("--force", is_flag=True, help="Rebuild even if the image for this recipe exists.")
@click.option("--if-missing", is_flag=True, help="Quietly do nothing when the image exists (for make up).")
def stack_build(inv: Invocation, force: bool, if_missing: bool) -> None:
    """Build the stack image (Debian bookworm + Python, Node.js, toolchain) builds and units run on."""
    # imported here: the Docker SDK is loaded by the commands that use it only
    from buildpacks.stack import build_stack, stack_exists, stack_tag

    settings = inv.platform.settings.build
    if if_missing and not force and stack_exists(stack_tag(settings)):
        return
    inv.console.step("Building the stack image")
    build_stack(settings, inv.console.detail, force=force)
