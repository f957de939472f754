"""keys:add, keys:list, keys:remove. Users manage their own keys; admins anyone's."""

from __future__ import annotations

import re

import click

from bae.access import user_for_keys
from bae.console import ago
from bae.errors import Invalid
from control.commands import Invocation, command
from gitserver.keys import parse_public_key

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_MAX = 64 * 1024


def _read_key(inv: Invocation, file: str | None) -> str:
    if file in (None, "-"):
        data = inv.stdin.read(_MAX + 1)
        source = "standard input"
    elif inv.remote:
        raise Invalid(
            "over SSH the key is read from standard input, not from a file on the platform",
            f"Run: {inv.prog} keys:add USER - < ~/.ssh/id_ed25519.pub",
        )
    else:
        try:
            with open(file, "rb") as fh:
                data = fh.read(_MAX + 1)
        except OSError as exc:
            raise Invalid(f"cannot read {file}: {exc.strerror}", "Pass the path of a .pub file, or - for stdin.") from None
        source = file
    if len(data) > _MAX:
        raise Invalid(f"{source} is larger than {_MAX // 1024} KiB; that is not a public key")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"{source} is not text; a public key is one line of text") from None


@command("keys:add")
@click.argument("user")
@click.argument("file", required=False, metavar="[FILE|-]")
def keys_add(inv: Invocation, user: str, file: str | None) -> None:
    """Register an SSH public key for USER (read from FILE, or stdin when - or omitted)."""
    owner = user_for_keys(inv.caller, inv.store, user)
    key = inv.store.add_key(owner, parse_public_key(_read_key(inv, file)))
    inv.console.step(f"Added {key.kind} key {key.fingerprint} for {owner.name}")
    if key.comment:
        inv.console.detail(f"Comment: {key.comment}")


@command("keys:list")
@click.argument("user", required=False)
def keys_list(inv: Invocation, user: str | None) -> None:
    """List SSH keys: USER's, or yours (admins: everyone's when USER is omitted)."""
    if user is None and not inv.caller.admin:
        user = inv.caller.name
    owner = user_for_keys(inv.caller, inv.store, user) if user else None
    keys = inv.store.keys(owner)
    inv.console.table(
        ["user", "fingerprint", "type", "comment", "added"],
        [[k.user, k.fingerprint, f"{k.kind}-{k.bits}" if k.kind == "rsa" else k.kind, k.comment, ago(k.created_at)]
         for k in keys],
        empty="No keys." + (f" Add one with: keys:add {user} < key.pub" if user else ""),
    )


@command("keys:remove")
@click.argument("user")
@click.argument("fingerprint")
def keys_remove(inv: Invocation, user: str, fingerprint: str) -> None:
    """Remove USER's key with FINGERPRINT (SHA256:…, as keys:list shows it)."""
    owner = user_for_keys(inv.caller, inv.store, user)
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise Invalid(
            f"'{fingerprint[:80]}' is not a key fingerprint",
            f"Fingerprints look like SHA256: followed by 43 characters; see `keys:list {owner.name}`.",
        )
    inv.store.remove_key(owner, fingerprint)
    inv.console.step(f"Removed key {fingerprint} of {owner.name}")
