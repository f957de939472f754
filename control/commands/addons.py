"""addons, addons:create, addons:info, addons:destroy, addons:restart, addons:credentials:rotate,
addons:connect, addons:backups, addons:backups:capture, addons:backups:restore,
addons:backups:schedule, addons:upgrade.

An add-on's URL is an app config var (shared by every deployment); creating,
rotating or destroying one rolls the app's deployments like config:set does.
Commands that change an add-on's container hold its lock, so the healer in
`bae serve` leaves it alone meanwhile.
"""

from __future__ import annotations

import re
import time

import click

from bae.access import MEMBER, OWNER, app_for
from control.commands import Invocation, command
from control.commands.apps import require_confirmation
from bae.console import ago
from bae.errors import BaeError, Conflict, Invalid
from bae.model import validate_name

_SCHEDULE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_BACKUP = re.compile(r"(?:(?P<app>[a-z][a-z0-9-]*)/(?P<addon>[a-z][a-z0-9-]*)/)?b?(?P<number>[0-9]+)")


def _services(inv: Invocation):
    return inv.platform.addons


def _addon(inv: Invocation, app: str, name: str, role: str = MEMBER):
    found = app_for(inv.caller, inv.store, app, role)
    return found, inv.store.addon(found.name, validate_name("add-on", name))


def _set_url(inv: Invocation, app, values: dict) -> None:
    """Set (or with None unset) the add-on's config var on the app and roll its deployments (config:set's rule)."""
    from control.deploy import change_config

    change_config(inv.platform, app, 0, inv.store.deployments(app), values, user=inv.caller.name, out=inv.console)


def status(info, starting: bool, now: float) -> tuple[str, str]:
    """An add-on's state as a word (``addons``) and as `ps` tells it: up for how long; starting (a
    command or the healer is starting its container); down, since when and why, when its container
    is missing or exited and nobody is starting it."""
    from addons.plan import down_reason
    from bae.console import clock, duration

    if info is not None and info.running:
        return "running", f"up {duration(now - (info.started_at or now))}"
    if starting:
        return "starting", "starting"
    if info is None:
        return "down", "down (no container)"
    return "down", (f"down since {clock(info.finished_at)}" if info.finished_at else "down") + f" ({down_reason(info)})"


def _states(inv: Invocation, app: str, addons) -> dict[str, tuple[str, str]]:
    """name -> (word, text) for ``addons`` of ``app`` (their current generation's containers)."""
    services = _services(inv)
    containers: dict[str, object] = {}
    for c in services.containers(app):
        name = c.labels.get("bae.addon")
        mine = next((a for a in addons if a.name == name), None)
        if mine is not None and c.labels.get("bae.generation") == str(mine.generation) and (
                name not in containers or c.running):
            containers[name] = c
    now = time.time()
    return {a.name: status(containers.get(a.name), services.being_started(a), now) for a in addons}


def addon_states(inv: Invocation, addons) -> list[str]:
    """One `ps` line per add-on: name, state and for how long (or since when it is down), kind and version, plan."""
    states = _states(inv, addons[0].app, addons)
    lines = []
    for a in addons:
        state = states[a.name][1]
        if a.failures and states[a.name][0] != "running":
            state += f", failed {a.failures}x"
        lines.append(f"{a.name:<14} {state:<30} {a.kind} {a.version:<6} {a.plan}")
    return lines


def _notify_healer(inv: Invocation) -> None:
    healer = getattr(inv.platform, "addons_healer", None)
    if healer is not None:
        healer.wake()


def _config_var(inv: Invocation, app, kind, name: str) -> str:
    """REDIS_URL / DATABASE_URL for the app's first of its family, else NAME_URL."""
    taken = {a.config_var for a in inv.store.addons(app)}
    user_set = set(inv.store.config_vars(app, 0))
    if kind.first_var not in taken and kind.first_var not in user_set:
        return kind.first_var
    var = name.upper().replace("-", "_") + "_URL"
    if var in taken or var in user_set:
        raise Conflict(f"the config var {var} is in use already", "Pick another name with --as NAME.")
    return var


@command("addons")
@click.argument("app")
def addons_list(inv: Invocation, app: str) -> None:
    """List an app's add-ons: kind, version, plan, status and config var."""
    found = app_for(inv.caller, inv.store, app, MEMBER)
    rows = []
    addons = inv.store.addons(found)
    states = _states(inv, found.name, addons) if addons else {}
    for a in addons:
        rows.append([a.name, a.kind, a.version, a.plan, states[a.name][0], a.config_var, ago(a.created_at)])
    inv.console.table(["name", "kind", "version", "plan", "status", "config var", "created"], rows,
                      empty=f"No add-ons. Create one with: addons:create {found.name} postgres")


@command("addons:create")
@click.argument("app")
@click.argument("kind", metavar="KIND")
@click.option("--as", "name", metavar="NAME", help="The add-on's name (default: KIND-N); its host name for the app's units.")
@click.option("--plan", metavar="PLAN", help="Memory and CPU limits (see `plans`; default: the scheduler's default plan).")
@click.option("--version", "version", metavar="V", help="Major version (default: the newest available).")
def addons_create(inv: Invocation, app: str, kind: str, name: str | None, plan: str | None, version: str | None) -> None:
    """Create a Redis, PostgreSQL or MySQL (MariaDB) add-on for APP; its URL becomes a config var."""
    from addons import kind_for
    from addons.healer import app_event, lock

    found = app_for(inv.caller, inv.store, app, MEMBER)
    spec, major = kind_for(kind, version)
    plan = plan or inv.platform.settings.scheduler.default_plan
    if plan not in inv.platform.settings.plans:
        raise Invalid(f"there is no plan '{plan[:30]}'", f"Plans: {', '.join(sorted(inv.platform.settings.plans))}.")
    existing = {a.name for a in inv.store.addons(found)}
    if name is None:
        n = 1
        while f"{spec.name}-{n}" in existing:
            n += 1
        name = f"{spec.name}-{n}"
    validate_name("add-on", name)
    if name in existing:
        raise Conflict(f"app '{found.name}' has an add-on named '{name}' already",
                       "Pick another name with --as NAME, or see `addons " + found.name + "`.")
    services = _services(inv)
    out = inv.console
    services.image_for(spec, major, out.detail)  # built once per recipe; later creates skip this
    var = _config_var(inv, found, spec, name)
    out.step(f"Creating {spec.title} {major} add-on {name} for {found.name} (plan {plan})")
    with lock(services, found.name, name):  # held before the row exists: the healer must not start it too
        addon = inv.store.add_addon(found, name=name, kind=spec.name, version=major, plan=plan,
                                    password=services.new_password(), config_var=var)
        started = time.monotonic()
        try:
            services.start(addon)
            services.wait_ready(addon)
        except BaseException:
            services.destroy(addon)
            inv.store.remove_addon(addon)
            services.drop_network_if_unused(found.name)
            raise
    out.detail(f"Accepting connections after {time.monotonic() - started:.2f} s")
    services.refill_spare(addon)  # the next create's data directory, copied while nobody waits
    app_event(inv.platform, found.name, f"{name} ({spec.title} {major}) created by {inv.caller.name}; {var} set")
    out.detail(f"{var} is set on {found.name} (all deployments): {services.masked_url(addon)}")
    _set_url(inv, found, {var: services.url(addon)})
    _notify_healer(inv)


@command("addons:info")
@click.argument("app")
@click.argument("name")
def addons_info(inv: Invocation, app: str, name: str) -> None:
    """Show an add-on: kind, version, status, data size, URL (password masked), last verified backup."""
    from addons.backups import age_seconds, human

    found, addon = _addon(inv, app, name)
    services = _services(inv)
    out = inv.console
    out.out(f"=== {found.name} {addon.name}")
    out.out(f"Kind:         {services.kind(addon).title} {addon.version}")
    out.out(f"Plan:         {addon.plan}")
    word, text = _states(inv, found.name, [addon])[addon.name]
    status = f"running ({text})" if word == "running" else text
    if addon.failures:
        status += f" (failed to start {addon.failures} time(s))"
    out.out(f"Status:       {status}")
    out.out(f"Data size:    {human(services.data_size(addon))}")
    out.out(f"Config var:   {addon.config_var}={services.masked_url(addon)}")
    out.out(f"Created:      {addon.created_at} ({ago(addon.created_at)})")
    backups = inv.store.backups(found.name, addon.name)
    verified = [b for b in backups if b.status == "verified"]
    if verified:
        b = verified[0]
        out.out(f"Last backup:  b{b.number}, {human(b.size)}, {ago(b.created_at)}, verified ({_counts(b.counts)})")
    else:
        out.out("Last backup:  none verified")
    from addons.upgrade import kept_versions

    kept = kept_versions(services, addon)
    if kept:
        out.out(f"Kept data:    {', '.join(kept)} (from before an upgrade: addons:upgrade --confirm NAME, or --revert)")
    out.out("Schedule:     " + (f"daily at {addon.schedule} UTC, keeping {addon.retention}" if addon.schedule else "none"))
    stale = 26 * 3600 if addon.schedule else None
    if stale and (not verified or age_seconds(verified[0].created_at) > stale):
        inv.console.err(" !     Warning: no verified backup is younger than its daily schedule; "
                        f"see `addons:backups {found.name} {addon.name}`.")


def _counts(counts: dict) -> str:
    if list(counts) == ["keys"]:
        return f"{counts['keys']} keys"
    return f"{len(counts)} tables, {sum(counts.values())} rows"


def _refs(inv: Invocation, app, addon) -> list[str]:
    """Config vars (other than its own) whose values point at the add-on: they would break."""
    from addons import KINDS

    needle = f"@{addon.name}:{KINDS[addon.kind].port}"
    found = []
    for key, value in inv.store.config_vars(app, 0).items():
        if needle in value and key != addon.config_var:
            found.append(f"{key} (app)")
    for dep in inv.store.deployments(app):
        for key, value in inv.store.config_vars(app, dep.id).items():
            if needle in value:
                found.append(f"{key} (deployment {dep.name})")
    return found


@command("addons:destroy")
@click.argument("app")
@click.argument("name")
@click.option("--confirm", "confirmation", metavar="NAME", help="Repeat the add-on's name to confirm.")
def addons_destroy(inv: Invocation, app: str, name: str, confirmation: str | None) -> None:
    """Destroy an add-on and its data (its backups are kept); its config var is removed and units rolled."""
    from addons.healer import app_event, lock

    found, addon = _addon(inv, app, name, OWNER)
    refs = _refs(inv, found, addon)
    if refs:
        raise Conflict(f"{', '.join(refs)} still point(s) to {addon.name}",
                       f"Unset or change them first (config:unset {found.name}[/DEP] KEY), then destroy it.")
    require_confirmation(confirmation, addon.name, f"add-on '{addon.name}' of {found.name} and all its data")
    services = _services(inv)
    with lock(services, found.name, addon.name):
        inv.store.remove_addon(addon)
        services.destroy(addon)
    app_event(inv.platform, found.name, f"{addon.name} destroyed by {inv.caller.name}; {addon.config_var} unset")
    inv.console.step(f"Destroyed {addon.name}; {addon.config_var} is unset (backups are kept: addons:backups)")
    _set_url(inv, found, {addon.config_var: None})
    # the app's network stays (its units are on it) until the app is destroyed


@command("addons:restart")
@click.argument("app")
@click.argument("name")
def addons_restart(inv: Invocation, app: str, name: str) -> None:
    """Restart an add-on's service on the same data (a new container)."""
    from addons.healer import app_event, lock

    found, addon = _addon(inv, app, name)
    services = _services(inv)
    started = time.monotonic()
    with lock(services, found.name, addon.name):
        addon = inv.store.update_addon(addon, generation=addon.generation + 1, failures=0, not_before=None)
        services.replace(addon)
    app_event(inv.platform, found.name, f"{addon.name} restarted by {inv.caller.name}")
    inv.console.step(f"Restarted {addon.name}: accepting connections after {time.monotonic() - started:.1f} s")


@command("addons:credentials:rotate")
@click.argument("app")
@click.argument("name")
def addons_rotate(inv: Invocation, app: str, name: str) -> None:
    """Give an add-on a new password: its config var changes, units roll, the old password is refused."""
    from addons.healer import app_event, lock

    found, addon = _addon(inv, app, name)
    services = _services(inv)
    with lock(services, found.name, addon.name):
        addon = inv.store.update_addon(addon, password=services.new_password(), generation=addon.generation + 1)
        services.replace(addon)
    app_event(inv.platform, found.name, f"{addon.name} credentials rotated by {inv.caller.name}")
    inv.console.step(f"Rotated the password of {addon.name}; {addon.config_var} changes")
    _set_url(inv, found, {addon.config_var: services.url(addon)})


@command("addons:connect")
@click.argument("app")
@click.argument("name")
def addons_connect(inv: Invocation, app: str, name: str) -> int:
    """Open psql, mariadb or redis-cli on an add-on (interactive with ssh -t), as the app's user."""
    found, addon = _addon(inv, app, name)
    services = _services(inv)
    info = services.current(addon)
    if info is None or not info.running:
        raise BaeError(f"{addon.name} is not running", f"See `addons:info {found.name} {addon.name}`.")
    kind = services.kind(addon)
    from addons.engine import engine
    from control.commands.run import raw_mode, terminal

    term = terminal(inv)
    client = list(kind.client)
    if term.tty and term.size:
        # the terminal's size before the client starts: Docker's resize of an exec comes after its
        # start, and a line editor that asks first (redis-cli's) would otherwise see 0 columns
        client = ["sh", "-c", 'stty cols "$1" rows "$2" 2>/dev/null; shift 2; exec "$@"', "sh", str(term.size[0]),
                  str(term.size[1]), *client]
    with raw_mode(inv, term):
        return engine().exec_interactive(
            info.id, client, env={**kind.client_env(addon.password), "HOME": "/tmp", "TERM": "xterm"},
            user="nobody", tty=term.tty, size=term.size, stdin=term.read, stdout=inv.console.raw,
            resize=term.resize, alive=inv.alive)


# -- backups ---------------------------------------------------------------------------------


@command("addons:backups")
@click.argument("app")
@click.argument("name")
def addons_backups(inv: Invocation, app: str, name: str) -> None:
    """List an add-on's backups (also those of a destroyed add-on of that name) with size, age and check."""
    from addons.backups import human

    found = app_for(inv.caller, inv.store, app, MEMBER)
    rows = []
    for b in inv.store.backups(found.name, validate_name("add-on", name)):
        state = f"verified ({_counts(b.counts)})" if b.status == "verified" else b.status
        if b.error:
            state += f": {b.error[:80]}"
        rows.append([f"b{b.number}", b.kind, human(b.size), ago(b.created_at), "scheduled" if b.scheduled else "manual", state])
    inv.console.table(["backup", "kind", "size", "age", "how", "state"], rows,
                      empty=f"No backups. Capture one with: addons:backups:capture {found.name} {name}")


@command("addons:backups:capture")
@click.argument("app")
@click.argument("name")
def addons_backups_capture(inv: Invocation, app: str, name: str) -> None:
    """Capture a consistent backup now, and verify it by restoring it into a throw-away container."""
    from addons.backups import capture, prune

    found, addon = _addon(inv, app, name)
    services = _services(inv)
    backup = capture(services, addon, inv.console.detail)
    prune(services, addon)
    inv.console.step(f"Backup b{backup.number} of {addon.name} is verified")


def _backup_for(inv: Invocation, found, name: str, ref: str | None):
    """The backup ``ref`` names (``bN``, or ``APP/NAME/bN`` of another add-on or app), default the newest verified."""
    if ref is None:
        verified = [b for b in inv.store.backups(found.name, name) if b.status == "verified"]
        if not verified:
            raise BaeError(f"{name} of {found.name} has no verified backup", "Capture one: addons:backups:capture.")
        return verified[0]
    match = _BACKUP.fullmatch(ref)
    if not match:
        raise Invalid(f"'{ref[:40]}' does not name a backup", "Write bN, or APP/ADDON/bN for another add-on's backup.")
    src_app, src_name = found.name, name
    if match["app"]:
        src_app = app_for(inv.caller, inv.store, match["app"], MEMBER).name
        src_name = match["addon"]
    for b in inv.store.backups(src_app, src_name):
        if b.number == int(match["number"]):
            return b
    raise BaeError(f"{src_app}/{src_name} has no backup b{match['number']}", f"See `addons:backups {src_app} {src_name}`.")


@command("addons:backups:restore")
@click.argument("app")
@click.argument("name")
@click.argument("backup", required=False, metavar="[BACKUP]")
@click.option("--confirm", "confirmation", metavar="NAME", help="Repeat the add-on's name to confirm.")
def addons_backups_restore(inv: Invocation, app: str, name: str, backup: str | None, confirmation: str | None) -> None:
    """Replace an add-on's data with a verified backup (bN, or APP/ADDON/bN; default: its newest)."""
    from addons.backups import restore
    from addons.healer import app_event, lock

    found, addon = _addon(inv, app, name)
    chosen = _backup_for(inv, found, addon.name, backup)
    require_confirmation(confirmation, addon.name, f"the data of '{addon.name}' (replaced by b{chosen.number})")
    services = _services(inv)
    with lock(services, found.name, addon.name):
        restore(services, addon, chosen, inv.console.detail)
    app_event(inv.platform, found.name,
              f"{addon.name} restored from {chosen.app}/{chosen.addon}/b{chosen.number} by {inv.caller.name}")
    inv.console.step(f"Restored b{chosen.number} of {chosen.app}/{chosen.addon} into {addon.name}")


@command("addons:backups:schedule")
@click.argument("app")
@click.argument("name")
@click.argument("when", metavar="HH:MM|off")
@click.option("--retention", type=click.IntRange(1, 100), help="Verified backups to keep (default 7).")
def addons_backups_schedule(inv: Invocation, app: str, name: str, when: str, retention: int | None) -> None:
    """Capture and verify a backup every day at HH:MM (UTC), keeping the newest N verified ones."""
    found, addon = _addon(inv, app, name)
    if when == "off":
        inv.store.update_addon(addon, schedule=None, schedule_since=None)
        inv.console.step(f"No scheduled backups for {addon.name}")
        return
    if not _SCHEDULE.fullmatch(when):
        raise Invalid(f"'{when[:20]}' is not a time of day", "Write HH:MM in UTC (e.g. 03:30), or off.")
    from datetime import datetime, timezone

    since = datetime.now(timezone.utc).isoformat()
    fields = {"schedule": when, "schedule_since": since} | ({"retention": retention} if retention else {})
    addon = inv.store.update_addon(addon, **fields)
    _notify_healer(inv)
    inv.console.step(f"{addon.name} is backed up daily at {when} UTC; the newest {addon.retention} verified are kept")


@command("addons:upgrade")
@click.argument("app")
@click.argument("name")
@click.option("--version", "version", metavar="V", help="The major version to upgrade to.")
@click.option("--confirm", "confirmation", metavar="NAME", help="Delete the data the last upgrade kept (repeat NAME).")
@click.option("--revert", is_flag=True, help="Go back to the data the last upgrade kept (later writes are lost).")
def addons_upgrade(inv: Invocation, app: str, name: str, version: str | None, confirmation: str | None,
                   revert: bool) -> None:
    """Upgrade to a newer major version: verified backup, restored into it and checked, old data kept until --confirm."""
    from addons import kind_for, upgrade
    from addons.healer import app_event, lock

    found, addon = _addon(inv, app, name)
    services = _services(inv)
    if revert or confirmation is not None:
        with lock(services, found.name, addon.name):
            if revert:
                back = upgrade.revert(services, addon)
                app_event(inv.platform, found.name, f"{addon.name} reverted to {back.version} by {inv.caller.name}")
                inv.console.step(f"{addon.name} runs {back.version} again on its data from before the upgrade")
                return
            require_confirmation(confirmation, addon.name, f"the data {addon.name} kept from before its upgrade")
            gone = upgrade.confirm(services, addon)
        inv.console.step(f"Deleted the {', '.join(gone)} data of {addon.name}; the upgrade is final")
        return
    if version is None:
        raise Invalid("say which version to upgrade to", f"For example: addons:upgrade {found.name} {addon.name} --version 17")
    kind, major = kind_for(addon.kind, version)
    with lock(services, found.name, addon.name):
        upgraded = upgrade.upgrade(services, addon, major, inv.console.detail)
    app_event(inv.platform, found.name, f"{addon.name} upgraded from {addon.version} to {major} by {inv.caller.name}")
    inv.console.step(f"{addon.name} runs {kind.title} {upgraded.version}; its {addon.version} data is kept untouched")
    inv.console.detail(f"Keep it:  addons:upgrade {found.name} {addon.name} --confirm {addon.name}  (deletes the old data)")
    inv.console.detail(f"Undo it:  addons:upgrade {found.name} {addon.name} --revert")
