"""config, config:get, config:set, config:unset.

``APP`` (no slash) names the app's shared vars when setting, and the default
deployment when reading; ``APP/DEP`` names one deployment's overrides.
"""

from __future__ import annotations

import json
import re

import click

from bae.access import MEMBER, app_for, deployment_for
from bae.errors import BaeError, Invalid
from bae.model import parse_target
from bae.unit import RESERVED_PREFIX, RESERVED_VARS
from control.commands import Invocation, command
from control.deploy import change_config

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUE = 32 * 1024


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or len(key) > 200:
        raise Invalid(f"'{key[:60]}' is not a config var name",
                      "Names are letters, digits and underscores, not starting with a digit (like DATABASE_URL).")
    if key in RESERVED_VARS or key.startswith(RESERVED_PREFIX):
        raise Invalid(f"{key} is set by the platform and cannot be changed", "Reserved: PORT, DYNO, HOME and BAE_*.")
    return key


def _scope(inv: Invocation, target: str):
    """(app, scope id, the deployments the change affects, label) for APP or APP/DEP."""
    app_name, dep_name = parse_target(target)
    app = app_for(inv.caller, inv.store, app_name, MEMBER)
    if "/" in target:
        dep = inv.store.deployment(app_name, dep_name)
        return app, dep.id, [dep], f"{dep.app}/{dep.name}"  # APP/default: not the shared vars
    return app, 0, inv.store.deployments(app), f"{app.name} (all its deployments)"


@command("config")
@click.argument("target", metavar="APP[/DEP]")
@click.option("--json", "as_json", is_flag=True, help="Print the effective vars as a JSON object (exact values).")
def config(inv: Invocation, target: str, as_json: bool) -> None:
    """Show the effective config vars of a deployment and where each comes from (app or deployment)."""
    dep = deployment_for(inv.caller, inv.store, target)
    effective = inv.store.effective_config(dep)
    if as_json:
        inv.console.out(json.dumps({k: v for k, (v, _) in effective.items()}, ensure_ascii=False, indent=2))
        return
    inv.console.out(f"=== {dep.slug} config vars")
    if not effective:
        inv.console.out(f"(none) Set one with: config:set {dep.app} KEY=value")
        return
    width = max(len(k) for k in effective) + 1
    for key, (value, source) in effective.items():
        origin = "app" if source == "app" else f"deployment {dep.name}"
        lines = value.split("\n")
        inv.console.out(f"{key + ':':<{width}} {lines[0]}" + ("" if len(lines) > 1 else f"   ({origin})"))
        for extra in lines[1:]:
            inv.console.out(f"{'':<{width}} {extra}")
        if len(lines) > 1:
            inv.console.out(f"{'':<{width}} ({origin})")


@command("config:get")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("key")
def config_get(inv: Invocation, target: str, key: str) -> None:
    """Print one config var's value exactly (effective for the deployment)."""
    dep = deployment_for(inv.caller, inv.store, target)
    effective = inv.store.effective_config(dep)
    if key not in effective:
        raise BaeError(f"{dep.slug} has no config var {key[:60]}", f"See `config {dep.slug}`.")
    inv.console.raw(effective[key][0].encode("utf-8") + b"\n")


@command("config:set")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option("--no-restart", is_flag=True, help="Record the change for the next deploy; do not roll the units now.")
def config_set(inv: Invocation, target: str, pairs: tuple[str, ...], no_restart: bool) -> None:
    """Set config vars: on APP they are shared by all its deployments, on APP/DEP they override for one."""
    app, scope, deps, label = _scope(inv, target)
    if not pairs:
        raise Invalid("give at least one KEY=VALUE", f"For example: config:set {target} DEBUG=0")
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise Invalid(f"'{pair[:60]}' is not KEY=VALUE", "Over SSH, quote values for the remote shell too: "
                          "ssh … config:set APP \"'KEY=two words'\"")
        if len(value.encode("utf-8")) > MAX_VALUE:
            raise Invalid(f"the value of {key[:60]} is longer than {MAX_VALUE // 1024} KiB")
        values[check_key(key)] = value
    inv.console.step(f"Set {', '.join(values)} on {label}")
    change_config(inv.platform, app, scope, deps, values, user=inv.caller.name, out=inv.console, restart=not no_restart)


@command("config:unset")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("keys", nargs=-1, metavar="KEY...")
@click.option("--no-restart", is_flag=True, help="Record the change for the next deploy; do not roll the units now.")
def config_unset(inv: Invocation, target: str, keys: tuple[str, ...], no_restart: bool) -> None:
    """Remove config vars from APP (shared) or APP/DEP (its overrides)."""
    app, scope, deps, label = _scope(inv, target)
    if not keys:
        raise Invalid("name at least one config var", f"For example: config:unset {target} DEBUG")
    for key in keys:
        check_key(key)
    present = inv.store.config_vars(app, scope)
    removed = [k for k in dict.fromkeys(keys) if k in present]
    if not removed:
        raise BaeError(f"none of {', '.join(keys)} is set on {label}", f"See `config {target}`.")
    inv.console.step(f"Unset {', '.join(removed)} on {label}")
    change_config(inv.platform, app, scope, deps, dict.fromkeys(removed), user=inv.caller.name, out=inv.console,
                  restart=not no_restart)
