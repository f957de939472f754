"""The route table: which hostnames lead to which deployment's up web units.

Pure logic. The router builds it from the deployments, their custom domains
and the scheduler's endpoints, and renders it for nginx. Hostnames are checked
here too (``check_hostname``) for domains:add.
"""

from __future__ import annotations

import re

from bae.errors import Invalid
from bae.model import Deployment, Endpoint, Route, hostname

__all__ = ["build_routes", "check_hostname"]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def check_hostname(text: str, base_domain: str) -> str:
    """A custom hostname, lowercased, or Invalid saying what is wrong with it."""
    host = text.strip().lower().rstrip(".")
    hint = "A hostname looks like www.example.com, or *.example.com for every subdomain."
    if not host or len(host) > 253:
        raise Invalid(f"'{text[:60]}' is not a hostname (empty or longer than 253 characters)", hint)
    labels = host.split(".")
    wildcard = labels[0] == "*"
    if wildcard:
        labels = labels[1:]
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Invalid(f"'{text[:60]}' is not a hostname", hint)
    if labels[-1].isdigit():
        raise Invalid(f"'{text[:60]}' looks like an IP address, not a hostname", hint)
    base = base_domain.lower()
    if host == base or host.endswith("." + base) or (wildcard and base.endswith("." + ".".join(labels))):
        raise Invalid(f"{host} is inside the platform's own domain {base}",
                      f"Apps get APP.{base} automatically; custom domains must be outside it.")
    return host


def build_routes(deployments: list[Deployment], domains: dict[int, list[str]],
                 endpoints: dict[tuple[str, str], tuple[Endpoint, ...]], base_domain: str) -> list[Route]:
    """One route per deployment: APP.BASE (default) or DEP.APP.BASE, plus its custom domains."""
    routes = []
    for dep in deployments:
        hostnames = (hostname(dep.app, dep.name, base_domain), *sorted(domains.get(dep.id, [])))
        routes.append(Route(dep.app, dep.name, hostnames, tuple(endpoints.get((dep.app, dep.name), ()))))
    return sorted(routes, key=lambda r: r.key)
