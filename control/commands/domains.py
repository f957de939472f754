"""domains, domains:add, domains:remove."""

from __future__ import annotations

import click

from bae.access import deployment_for
from bae.errors import AccessDenied
from control.commands import Invocation, command
from router.table import check_hostname


@command("domains")
@click.argument("target", metavar="APP[/DEP]")
def domains(inv: Invocation, target: str) -> None:
    """List the hostnames that route to a deployment."""
    dep = deployment_for(inv.caller, inv.store, target)
    inv.console.out(f"=== {dep.slug}")
    inv.console.out(f"{inv.platform.hostname(dep.app, dep.name)}  (the platform's)")
    for host in inv.store.domains(dep).get(dep.id, []):
        inv.console.out(host)


@command("domains:add")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("hostname")
def domains_add(inv: Invocation, target: str, hostname: str) -> None:
    """Route a custom hostname (or *.example.com) to a deployment."""
    dep = deployment_for(inv.caller, inv.store, target)
    host = check_hostname(hostname, inv.platform.settings.base_domain)

    def under(wildcard: str, app) -> None:
        # Names under a wildcard belong to the wildcard's owner: a more specific name
        # would take its traffic.
        if not inv.caller.admin and (inv.caller.user is None or app.owner != inv.caller.user.name):
            raise AccessDenied(f"{host} is under {wildcard}, which routes to an app you do not own",
                               f"Only the owner of {wildcard} (or an admin) may add names under it.")

    inv.store.add_domain(dep, host, under)
    inv.platform.notify()
    inv.console.step(f"{host} now routes to {dep.slug}")
    inv.console.detail(f"Point its DNS at this platform (an A record, or a CNAME to {inv.platform.hostname(dep.app, dep.name)}).")


@command("domains:remove")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("hostname")
def domains_remove(inv: Invocation, target: str, hostname: str) -> None:
    """Stop routing a custom hostname to a deployment."""
    dep = deployment_for(inv.caller, inv.store, target)
    inv.store.remove_domain(dep, hostname.strip().lower().rstrip("."))
    inv.platform.notify()
    inv.console.step(f"{hostname} no longer routes to {dep.slug}")
