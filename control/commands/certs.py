"""certs, certs:add, certs:remove, certs:auto, certs:redirect: HTTPS for a deployment's hostnames.

``--platform`` (admins) instead of APP[/DEP] names the platform's own certificate:
one uploaded wildcard for ``*.BASE_DOMAIN`` that serves every app hostname no
certificate of its own covers. Keys are read, checked and written root-only;
no command ever prints one.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import click

from bae.access import deployment_for, require_admin
from bae.console import ago, duration
from bae.errors import Invalid, NotFound
from bae.model import TlsState
from control.commands import Invocation, command

_ON_OFF = click.Choice(["on", "off"])


def _target(inv: Invocation, args: tuple[str, ...], platform: bool, usage: str):
    """(deployment or None for --platform, the remaining arguments)."""
    if platform:
        require_admin(inv.caller, "manage the platform's certificate")
        return None, list(args)
    if not args:
        raise Invalid("name a deployment (APP or APP/DEP), or --platform", f"Usage: {inv.prog} {usage}")
    return deployment_for(inv.caller, inv.store, args[0]), list(args[1:])


def _hostnames(inv: Invocation, dep) -> list[str]:
    if dep is None:
        base = inv.platform.settings.base_domain
        return [f"*.{base}"]
    return [inv.platform.hostname(dep.app, dep.name), *inv.store.domains(dep).get(dep.id, [])]


def _read(inv: Invocation, files: list[str]) -> tuple[bytes, bytes | None]:
    from router.certs import MAX_PEM

    if len(files) > 2:
        raise Invalid("too many arguments", "Give CERT.pem KEY.pem, or - to read both from standard input.")
    if not files or files == ["-"]:
        data = inv.stdin.read(2 * MAX_PEM + 1)
        return data, None
    if inv.remote:
        raise Invalid("over SSH the certificate and key are read from standard input, not from files on the platform",
                      f"Run: cat cert.pem key.pem | {inv.prog} certs:add APP -")
    if len(files) != 2:
        raise Invalid("give the certificate file and the key file", "Usage: certs:add APP CERT.pem KEY.pem")
    out = []
    for path in files:
        try:
            with open(path, "rb") as fh:
                out.append(fh.read(MAX_PEM + 1))
        except OSError as exc:
            raise Invalid(f"cannot read {path}: {exc.strerror}", "Give the paths of PEM files, or - for stdin.") from None
    return out[0], out[1]


def _left(not_after: str) -> str:
    seconds = (datetime.fromisoformat(not_after) - datetime.now(timezone.utc)).total_seconds()
    return "expired" if seconds <= 0 else duration(seconds)


def _day(stamp: str) -> str:
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M")


@command("certs")
@click.argument("target", required=False, metavar="APP[/DEP]")
@click.option("--platform", is_flag=True, help="Show the platform's own certificate (*.BASE_DOMAIN).")
def certs(inv: Invocation, target: str | None, platform: bool) -> None:
    """Show each hostname's certificate: issuer, expiry, days left, automatic or uploaded, renewal state."""
    from router.certs import choose

    dep, _ = _target(inv, (target,) if target else (), platform, "certs APP[/DEP]")
    settings = inv.platform.settings
    own = inv.store.certificates(dep) if dep else []
    shared = inv.store.certificates(platform=True)
    now = datetime.now(timezone.utc)
    port = settings.router.https_port
    title = dep.slug if dep else f"the platform (*.{settings.base_domain})"
    inv.console.out(f"=== {title} certificates" + ("" if port else "  (HTTPS is off: router.https_port = 0)"))
    rows = []
    for host in _hostnames(inv, dep):
        cert = choose(host, own + shared if dep else shared, now)
        if cert is None:
            rows.append([host, "(none)", "", "", "", ""])
        else:
            source = "platform" if cert.deployment_id is None and dep else cert.source
            rows.append([host, cert.short, source, cert.issuer[:32], _day(cert.not_after), _left(cert.not_after)])
    inv.console.table(["hostname", "certificate", "source", "issuer", "not after (UTC)", "left"], rows)
    listed = own if dep else shared
    if listed:
        inv.console.out("")
        inv.console.table(["certificate", "source", "names", "serial", "added"],
                          [[c.short, c.source, " ".join(c.hostnames)[:60], c.serial[:20], ago(c.created_at)]
                           for c in listed])
    if dep is None:
        return
    state = inv.store.tls_state(dep)
    inv.console.out("")
    auto = "on" if state.auto else "off"
    inv.console.out(f"Automatic certificates (ACME): {auto}")
    if state.last_attempt:
        outcome = f"failed: {state.last_error}" if state.last_error else "succeeded"
        inv.console.out(f"  last attempt: {ago(state.last_attempt)}, {outcome}")
    if state.auto and state.failures and state.not_before:
        wait = (datetime.fromisoformat(state.not_before) - now).total_seconds()
        inv.console.out(f"  failures in a row: {state.failures}; next attempt "
                        + (f"in {duration(wait)}" if wait > 0 else "now"))
    if state.last_success:
        inv.console.out(f"  last renewal: {ago(state.last_success)}")
    inv.console.out(f"Redirect HTTP to HTTPS: {'on (308)' if state.redirect else 'off'}"
                    + (f", HSTS max-age={settings.tls.hsts_max_age}" if state.redirect and state.hsts else ""))


@command("certs:add")
@click.argument("args", nargs=-1, metavar="APP[/DEP] [CERT.pem KEY.pem|-]")
@click.option("--platform", is_flag=True, help="Install the platform's own wildcard for *.BASE_DOMAIN (admins).")
def certs_add(inv: Invocation, args: tuple[str, ...], platform: bool) -> None:
    """Install an uploaded certificate (chain, leaf first) and its key; over SSH both PEMs come on stdin."""
    from router.certs import CertFiles, check_upload, from_pem, parse_bundle

    dep, files = _target(inv, args, platform, "certs:add APP[/DEP] CERT.pem KEY.pem")
    cert_pem, key_pem = _read(inv, files)
    bundle = parse_bundle(cert_pem, key_pem)
    wanted = _hostnames(inv, dep)
    covered = check_upload(bundle, wanted)
    store = CertFiles(inv.platform.data / "tls")
    name = store.new_name()
    store.write(name, bundle)  # files first: the store refers to them only once they are complete
    info = from_pem(bundle, name=name, deployment_id=dep.id if dep else None, source="uploaded")
    old = [c for c in (inv.store.certificates(dep) if dep else inv.store.certificates(platform=True))
           if c.source == "uploaded" and set(c.hostnames) == set(info.hostnames)]  # a renewed upload replaces its predecessor
    cert = inv.store.add_certificate(info, replace=tuple(c.name for c in old))
    for c in old:
        store.remove(c.name)
    served = inv.platform.notify()
    where = dep.slug if dep else "the platform"
    inv.console.step(f"Added certificate {cert.short} for {where}" + (f" (replaces {', '.join(c.short for c in old)})"
                                                                       if old else ""))
    inv.console.detail(f"Names: {' '.join(cert.hostnames)}; issuer {cert.issuer}; valid until {_day(cert.not_after)} UTC")
    inv.console.detail(f"Serves: {', '.join(covered)}")
    missing = [h for h in wanted if h not in covered]
    if missing:
        inv.console.detail(f"Not covered: {', '.join(missing)}")
    if not served:
        inv.console.detail("bae serve is not running; the router serves it once it runs.")


@command("certs:remove")
@click.argument("args", nargs=-1, metavar="APP[/DEP] [CERTIFICATE]")
@click.option("--platform", is_flag=True, help="Remove the platform's own certificate (admins).")
def certs_remove(inv: Invocation, args: tuple[str, ...], platform: bool) -> None:
    """Stop serving a certificate (the id `certs` shows; optional when the deployment has one)."""
    from router.certs import CertFiles

    dep, rest = _target(inv, args, platform, "certs:remove APP[/DEP] [CERTIFICATE]")
    listed = inv.store.certificates(dep) if dep else inv.store.certificates(platform=True)
    where = dep.slug if dep else "the platform"
    if len(rest) > 1:
        raise Invalid("too many arguments", "Usage: certs:remove APP[/DEP] [CERTIFICATE]")
    if rest:
        found = [c for c in listed if c.fingerprint.startswith(rest[0].lower()) and len(rest[0]) >= 6]
        if not found:
            raise NotFound(f"{where} has no certificate {rest[0][:40]}", f"See `certs {dep.slug if dep else '--platform'}`.")
    else:
        found = listed
        if len(found) != 1:
            raise Invalid(f"{where} has {len(found)} certificates; say which one" if found else f"{where} has no certificate",
                          f"See `certs {dep.slug if dep else '--platform'}`.")
    cert = found[0]
    inv.store.remove_certificate(cert.name)
    inv.platform.notify()
    CertFiles(inv.platform.data / "tls").remove(cert.name)
    inv.console.step(f"Removed certificate {cert.short} ({' '.join(cert.hostnames)}) from {where}")
    if dep and cert.source == "acme" and inv.store.tls_state(dep).auto:
        inv.console.detail("Automatic certificates are on: a new one is ordered. Turn them off with certs:auto "
                           f"{dep.slug} off.")


@command("certs:auto")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("switch", type=_ON_OFF, metavar="on|off")
@click.option("--no-wait", is_flag=True, help="Return at once; `certs` shows the outcome.")
def certs_auto(inv: Invocation, target: str, switch: str, no_wait: bool) -> None:
    """Obtain and renew certificates for the hostnames from the ACME CA ([tls] acme_directory), or stop."""
    dep = deployment_for(inv.caller, inv.store, target)
    settings = inv.platform.settings
    if switch == "off":
        inv.store.update_tls_state(dep.id, auto=False, failures=0, not_before=None)
        inv.console.step(f"Automatic certificates off for {dep.slug}")
        inv.console.detail("Its current certificate serves until it expires; remove it with certs:remove.")
        return
    if not settings.router.https_port:
        raise Invalid("HTTPS is off on this platform (router.https_port = 0)", "Ask the operator to set router.https_port.")
    if not settings.tls.acme_directory:
        raise Invalid("no ACME CA is configured (tls.acme_directory is empty)", "Ask the operator to set tls.acme_directory.")
    started = datetime.now(timezone.utc).isoformat()
    inv.store.update_tls_state(dep.id, auto=True, failures=0, not_before=None)
    running = inv.platform.notify()
    inv.console.step(f"Automatic certificates on for {dep.slug} (CA: {settings.tls.acme_directory})")
    if not running:
        inv.console.detail("bae serve is not running; certificates are ordered once it runs.")
        return
    if no_wait or not _order_due(inv, dep):
        inv.console.detail(f"See `certs {dep.slug}` for the certificates.")
        return
    inv.console.detail("Checking that the hostnames reach this router, then ordering…")
    deadline = time.monotonic() + settings.tls.acme_timeout + 60
    while time.monotonic() < deadline and inv.alive():
        state = inv.store.tls_state(dep)
        if state.last_error and (state.last_attempt or "") >= started:
            raise Invalid(f"no certificate for {dep.slug}: {state.last_error}",
                          "bae retries with backoff; see `certs` for the state.")
        if (state.last_success or "") >= started:
            inv.console.step(f"Certificate issued and served for {dep.slug}")
            return
        time.sleep(0.2)
    inv.console.detail(f"Still ordering; see `certs {dep.slug}`.")


def _order_due(inv: Invocation, dep) -> bool:
    """Whether the certificate loop will order for ``dep`` now (else there is nothing to wait for)."""
    from router import renewal

    hostnames = tuple(_hostnames(inv, dep))
    plan = renewal.plan([renewal.Wanted(dep.id, dep.slug, hostnames, TlsState(dep.id, auto=True),
                                        tuple(inv.store.certificates(dep)))],
                        inv.store.certificates(platform=True), datetime.now(timezone.utc))
    return bool(plan.orders)


@command("certs:redirect")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("switch", type=_ON_OFF, metavar="on|off")
@click.option("--hsts", is_flag=True, help="Also send Strict-Transport-Security over HTTPS.")
def certs_redirect(inv: Invocation, target: str, switch: str, hsts: bool) -> None:
    """Redirect plain HTTP to HTTPS (308) for the hostnames that have a certificate; optionally with HSTS."""
    dep = deployment_for(inv.caller, inv.store, target)
    on = switch == "on"
    inv.store.update_tls_state(dep.id, redirect=on, hsts=on and hsts)
    inv.platform.notify()
    if on:
        inv.console.step(f"HTTP now redirects to HTTPS (308) for {dep.slug}" + (" with HSTS" if hsts else ""))
        inv.console.detail("Hostnames without a certificate keep answering over HTTP; see `certs`.")
    else:
        inv.console.step(f"HTTP no longer redirects to HTTPS for {dep.slug}")
