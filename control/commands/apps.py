"""apps:create, apps:list, apps:info, apps:destroy."""

from __future__ import annotations

import click

from bae.access import MEMBER, OWNER, app_for
from bae.console import ago
from bae.errors import Invalid
from bae.model import DEFAULT_DEPLOYMENT, validate_name
from control.commands import Invocation, command
from control.deploy import destroy_app


def require_confirmation(given: str | None, expected: str, what: str) -> None:
    """Refuse a destructive command unless ``--confirm`` repeats its target exactly."""
    if given != expected:
        raise Invalid(
            f"this permanently destroys {what}" + ("" if given is None else f" ('{given[:60]}' does not match)"),
            f"To go ahead, run it again with --confirm {expected}",
        )


@command("apps:create")
@click.argument("app")
@click.option("--owner", metavar="USER", help="Owner of the app (admins only; default: you).")
def apps_create(inv: Invocation, app: str, owner: str | None) -> None:
    """Create an app and its default deployment; prints its git remote."""
    validate_name("app", app)
    if owner is not None:
        if not inv.caller.admin:
            raise Invalid("only admins may create apps for someone else", "Leave out --owner.")
        owner_user = inv.store.user(validate_name("user", owner))
    else:
        owner_user = inv.caller.user
    created = inv.store.create_app(app, owner_user)
    inv.platform.repos.create(app, DEFAULT_DEPLOYMENT)
    inv.console.step(f"Created app {created.name}" + (f" (owner {created.owner})" if created.owner else ""))
    url = inv.platform.git_url(app, DEFAULT_DEPLOYMENT)
    inv.console.detail(f"Git remote: {url}")
    inv.console.detail(f"Web URL:    {inv.platform.web_url(app, DEFAULT_DEPLOYMENT)}")
    inv.console.detail(f"Deploy:     git remote add bae {url} && git push bae master")


@command("apps:list")
def apps_list(inv: Invocation) -> None:
    """List the apps you own or collaborate on (admins: all apps)."""
    apps = inv.store.apps(None if inv.caller.admin else inv.caller.user)
    deps = inv.store.deployments()
    count = {a.name: sum(1 for d in deps if d.app == a.name) for a in apps}
    inv.console.table(
        ["app", "owner", "deployments", "collaborators", "created"],
        [[a.name, a.owner or "(admins)", count[a.name], len(a.collaborators), ago(a.created_at)] for a in apps],
        empty="No apps yet. Create one with: apps:create APP",
    )


@command("apps:info")
@click.argument("app")
def apps_info(inv: Invocation, app: str) -> None:
    """Show an app: owner, collaborators, deployments with git remotes and URLs."""
    found = app_for(inv.caller, inv.store, app, MEMBER)
    out = inv.console
    out.out(f"=== {found.name}")
    out.out(f"Owner:          {found.owner or '(admins)'}")
    out.out(f"Collaborators:  {', '.join(found.collaborators) or '(none)'}")
    out.out(f"Created:        {found.created_at} ({ago(found.created_at)})")
    # config var names only, never values
    out.out(f"Config vars:    {', '.join(sorted(inv.store.config_vars(found, 0))) or '(none)'}  (shared by all deployments)")
    domains = inv.store.domains()
    rows = []
    for dep in inv.store.deployments(found):
        own = sorted(inv.store.config_vars(found, dep.id))
        release = f"v{dep.release_version}" if dep.release_version else "nothing deployed"
        extra = f"; overrides {', '.join(own)}" if own else ""
        hosts = domains.get(dep.id, [])
        out.out(f"Deployment {dep.name}: {release}{extra}" + (f"; domains {', '.join(hosts)}" if hosts else ""))
        built = inv.store.last_successful_build(dep)
        setting = f"set to {dep.stack} (stack:set)" if dep.stack else "auto (from the Python pins)"
        used = f"; last build used {built.stack}: {built.stack_reason}" if built and built.stack else ""
        out.out(f"  stack: {setting}{used}")
        rows.append([dep.name, inv.platform.git_url(found.name, dep.name), inv.platform.web_url(found.name, dep.name)])
    out.out("")
    out.table(["deployment", "git remote", "url"], rows)


@command("apps:destroy")
@click.argument("app")
@click.option("--confirm", "confirmation", metavar="APP", help="Repeat the app's name to confirm.")
@click.option("--with-addons", is_flag=True, help="Also destroy its add-ons, their data and backups.")
def apps_destroy(inv: Invocation, app: str, confirmation: str | None, with_addons: bool) -> None:
    """Destroy an app: its deployments, repos, builds, releases and units (owner or admin)."""
    found = app_for(inv.caller, inv.store, app, OWNER)
    held = [a.name for a in inv.store.addons(found)]
    if held and not with_addons:
        raise Invalid(f"app '{found.name}' has add-ons holding data: {', '.join(held)}",
                      f"Back them up (addons:backups:capture) if needed, then add --with-addons, or destroy "
                      f"them first (addons:destroy {found.name} NAME).")
    require_confirmation(confirmation, found.name, f"app '{found.name}' with all its deployments, code, releases and units")
    destroy_app(inv.platform, found)
    inv.console.step(f"Destroyed app {found.name}")
