"""users:add, users:list, users:remove (admins only)."""

from __future__ import annotations

import click

from bae.access import require_admin
from bae.console import ago
from bae.model import validate_name
from control.commands import Invocation, command


@command("users:add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user a platform admin.")
def users_add(inv: Invocation, name: str, admin: bool) -> None:
    """Register a user (then add their SSH key with keys:add)."""
    require_admin(inv.caller, "add users")
    user = inv.store.add_user(validate_name("user", name), admin)
    inv.console.step(f"Added user {user.name}{' (admin)' if user.admin else ''}")
    inv.console.detail(f"Next: {inv.prog} keys:add {user.name} < their-key.pub")


@command("users:list")
def users_list(inv: Invocation) -> None:
    """List the registered users with their number of keys and apps."""
    require_admin(inv.caller, "list users")
    keys: dict[str, int] = {}
    for key in inv.store.keys():
        keys[key.user] = keys.get(key.user, 0) + 1
    owned: dict[str, int] = {}
    for app in inv.store.apps():
        owned[app.owner or ""] = owned.get(app.owner or "", 0) + 1
    inv.console.table(
        ["user", "admin", "keys", "apps", "created"],
        [[u.name, "yes" if u.admin else "", keys.get(u.name, 0), owned.get(u.name, 0), ago(u.created_at)]
         for u in inv.store.users()],
        empty="No users yet. Add one with: users:add NAME",
    )


@command("users:remove")
@click.argument("name")
def users_remove(inv: Invocation, name: str) -> None:
    """Remove a user, their keys and their access (they must own no apps)."""
    require_admin(inv.caller, "remove users")
    inv.store.remove_user(validate_name("user", name))
    inv.console.step(f"Removed user {name} and their keys")
