"""deployments:create, deployments:list, deployments:destroy."""

from __future__ import annotations

import click

from bae.access import MEMBER, OWNER, app_for, deployment_for
from bae.console import ago
from bae.errors import Invalid
from bae.model import DEFAULT_DEPLOYMENT, validate_name
from control.commands import Invocation, command
from control.commands.apps import require_confirmation
from control.deploy import destroy_deployment


@command("deployments:create")
@click.argument("app")
@click.argument("name")
def deployments_create(inv: Invocation, app: str, name: str) -> None:
    """Add a deployment (another code base, e.g. a worker) to an app (owner or admin)."""
    found = app_for(inv.caller, inv.store, app, OWNER)
    dep = inv.store.create_deployment(found, validate_name("deployment", name))
    inv.platform.repos.create(found.name, dep.name)
    inv.console.step(f"Created deployment {dep.slug}")
    inv.console.detail(f"Git remote: {inv.platform.git_url(found.name, dep.name)}")
    inv.console.detail(f"Web URL:    {inv.platform.web_url(found.name, dep.name)}")


@command("deployments:list")
@click.argument("app")
def deployments_list(inv: Invocation, app: str) -> None:
    """List an app's deployments with their git remotes and URLs."""
    found = app_for(inv.caller, inv.store, app, MEMBER)
    inv.console.table(
        ["deployment", "git remote", "url", "created"],
        [[d.name, inv.platform.git_url(found.name, d.name), inv.platform.web_url(found.name, d.name), ago(d.created_at)]
         for d in inv.store.deployments(found)],
    )


@command("deployments:destroy")
@click.argument("target", metavar="APP/NAME")
@click.option("--confirm", "confirmation", metavar="APP/NAME", help="Repeat APP/NAME to confirm.")
def deployments_destroy(inv: Invocation, target: str, confirmation: str | None) -> None:
    """Destroy one deployment of an app: its repo, builds, releases and units (owner or admin)."""
    if "/" not in target:
        raise Invalid(f"'{target[:60]}' names no deployment", "Write APP/NAME; to remove a whole app use apps:destroy.")
    dep = deployment_for(inv.caller, inv.store, target, OWNER)
    if dep.name == DEFAULT_DEPLOYMENT:
        raise Invalid("the default deployment lives as long as its app", f"Destroy the app instead: apps:destroy {dep.app}")
    require_confirmation(confirmation, f"{dep.app}/{dep.name}", f"deployment {dep.app}/{dep.name} with its code, releases and units")
    destroy_deployment(inv.platform, dep)
    inv.console.step(f"Destroyed deployment {dep.app}/{dep.name}")
