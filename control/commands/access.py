"""access:add, access:remove, access:list (the app's owner and admins)."""

from __future__ import annotations

import click

from bae.access import OWNER, app_for
from bae.model import validate_name
from control.commands import Invocation, command


@command("access:add")
@click.argument("app")
@click.argument("user")
def access_add(inv: Invocation, app: str, user: str) -> None:
    """Let USER push to and operate APP as a collaborator."""
    found = app_for(inv.caller, inv.store, app, OWNER)
    member = inv.store.user(validate_name("user", user))
    inv.store.add_collaborator(found, member)
    inv.console.step(f"{member.name} is now a collaborator on {found.name}")


@command("access:remove")
@click.argument("app")
@click.argument("user")
def access_remove(inv: Invocation, app: str, user: str) -> None:
    """Take USER's access to APP away."""
    found = app_for(inv.caller, inv.store, app, OWNER)
    member = inv.store.user(validate_name("user", user))
    inv.store.remove_collaborator(found, member)
    inv.console.step(f"{member.name} no longer has access to {found.name}")


@command("access:list")
@click.argument("app")
def access_list(inv: Invocation, app: str) -> None:
    """List who has access to APP: its owner and collaborators."""
    found = app_for(inv.caller, inv.store, app, OWNER)
    rows = [[found.owner or "(admins)", "owner"]] + [[c, "collaborator"] for c in found.collaborators]
    inv.console.table(["user", "role"], rows)
