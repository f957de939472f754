"""ps, ps:scale, ps:resize, ps:restart, plans."""

from __future__ import annotations

import re
import time

import click

from bae.access import deployment_for
from bae.console import duration
from bae.errors import Invalid
from control.commands import Invocation, command
from scheduler.plans import check_plan, memory_label
from scheduler.status import converged, deployment_status

_PAIR = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]{0,29})=(.+)")


def _pairs(args: tuple[str, ...], example: str) -> list[tuple[str, str]]:
    if not args:
        raise Invalid("say what to change", f"For example: {example}")
    out: dict[str, str] = {}
    for arg in args:
        match = _PAIR.fullmatch(arg)
        if not match:
            raise Invalid(f"'{arg[:60]}' is not TYPE=VALUE", f"For example: {example}")
        name, value = match.group(1).lower(), match.group(2)
        if name in out:  # which one was meant? refuse rather than guess
            raise Invalid(f"{name} is given twice ({name}={out[name][:30]} and {name}={value[:30]})",
                          f"Give each process type once. For example: {example}")
        out[name] = value
    return list(out.items())


def _known_type(release, process: str, dep) -> None:
    if process not in release.process_types or process == "release":
        known = ", ".join(p for p in sorted(release.process_types) if p != "release") or "(none)"
        raise Invalid(f"v{release.version} of {dep.slug} has no process type '{process}'",
                      f"Its process types: {known} (from the Procfile).")


def _wait(inv: Invocation, dep, processes: set[str], wait: bool) -> None:
    """Wake the scheduler; unless told not to, wait until the processes run as wanted.

    The wait ends early when a process type is clearly crashing (it crashed twice since the
    wait began: the scheduler goes on restarting it with backoff) and, quietly, when the
    caller goes away."""
    if not inv.platform.notify():
        inv.console.detail("bae serve is not running: the change applies when it starts.")
        return
    if not wait or not processes:
        inv.console.detail(f"Watch it with: {inv.prog} ps {dep.slug}")
        return
    limit = inv.platform.settings.scheduler.boot_timeout + 30
    deadline = time.monotonic() + limit
    crashes = _Crashes(inv, dep, processes)
    while time.monotonic() < deadline:
        if not inv.alive():  # the caller hung up: nobody to tell; the scheduler goes on
            raise click.exceptions.Exit(255)
        fresh = inv.store.deployment(dep.app, dep.name)
        formation = inv.store.formation(fresh)
        if converged(deployment_status(inv.store, inv.platform.settings.plans, fresh, inv.platform.runtime), fresh.release_version,
                     formation, processes):
            inv.console.step("done")
            return
        crashing = crashes.check()
        if crashing:
            process, reason = crashing
            output = [e for e in inv.platform.logs.read(dep.app, dep.name, lines=200, process=process)
                      if e.source == "app"][-5:]
            if output:
                inv.console.detail(f"The last output of {process}:")
                for entry in output:
                    inv.console.detail(f"  {entry.unit}: {entry.text[:300]}")
            inv.console.error(f"{process} is crashing: {reason}; bae keeps restarting it, waiting longer each time",
                              f"Its output is in `{inv.prog} logs {dep.slug} --type {process}`; "
                              f"stop it with `{inv.prog} ps:scale {dep.slug} {process}=0`.")
            raise click.exceptions.Exit(1)
        time.sleep(0.25)
    inv.console.error(f"the units did not settle within {limit} s", f"See `{inv.prog} ps {dep.slug}` and the app's logs.")
    raise click.exceptions.Exit(1)


class _Crashes:
    """Counts the crashes of process types since a wait began (from the scheduler's stored backoff)."""

    def __init__(self, inv: Invocation, dep, processes: set[str]) -> None:
        self.inv, self.dep, self.processes = inv, dep, processes
        self.seen = self._failures()
        self.count = dict.fromkeys(processes, 0)

    def _failures(self) -> dict[str, dict]:
        backoffs = self.inv.store.backoffs()
        return {p: backoffs.get((self.dep.id, p)) or {"failures": 0, "reason": ""} for p in self.processes}

    def check(self) -> tuple[str, str] | None:
        """(process type, its last crash) once a type crashed twice since the wait began."""
        now = self._failures()
        for process, row in now.items():
            before = self.seen[process]["failures"]
            if row["failures"] > before:
                self.count[process] += row["failures"] - before
            self.seen[process] = row  # after a reset (the type stayed up) counting starts again
            if self.count[process] >= 2:
                return process, row["reason"] or f"{process} exited"
        return None


@command("ps")
@click.argument("target", metavar="APP[/DEP]")
def ps(inv: Invocation, target: str) -> None:
    """Show the units of a deployment: state, age, release, plan and address."""
    dep = deployment_for(inv.caller, inv.store, target)
    release = inv.store.release(dep, dep.release_version) if dep.release_version else None
    formation = inv.store.formation(dep)
    statuses = deployment_status(inv.store, inv.platform.settings.plans, dep, inv.platform.runtime)
    if release is None:
        inv.console.out(f"Nothing is deployed to {dep.slug} yet.")
    for process, command_ in sorted((release.process_types if release else {}).items()):
        if process == "release":
            continue
        entry = formation.get(process)
        quantity, plan = (entry.quantity, entry.plan) if entry else (0, "-")
        inv.console.out(f"=== {process} ({plan}): {command_} ({quantity})")
        for s in (s for s in statuses if s.process == process):
            state = f"{s.state} {duration(s.since)}" + (f" ({s.detail})" if s.detail else "")
            inv.console.out(f"{s.unit:<10} {state:<44} v{s.release:<4} {s.plan:<4} {s.address}".rstrip())
    strays = [s for s in statuses if not release or s.process not in release.process_types]
    for s in strays:
        inv.console.out(f"{s.unit:<10} {s.state} {duration(s.since)} v{s.release} {s.plan}"
                        + ("" if s.state == "stopping" else " (stopping)"))
    moves = inv.platform.runtime.timeline(app=dep.app, deployment=dep.name)  # failovers (swarm runtime)
    if moves:
        inv.console.out("=== failovers")
        for line in moves[-20:]:
            inv.console.out(line)
    addons = inv.store.addons(inv.store.app(dep.app))
    if addons:
        from control.commands.addons import addon_states

        inv.console.out(f"=== add-ons of {dep.app} (shared by its deployments)")
        for line in addon_states(inv, addons):
            inv.console.out(line)


@command("ps:scale")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("changes", nargs=-1, metavar="TYPE=N[:PLAN]...")
@click.option("--wait/--no-wait", default=True, help="Wait until the units are up (default) or return at once.")
def ps_scale(inv: Invocation, target: str, changes: tuple[str, ...], wait: bool) -> None:
    """Set how many units of each process type run (horizontal scaling), optionally with a plan."""
    dep = deployment_for(inv.caller, inv.store, target)
    release = inv.current_release(dep)
    limit = inv.platform.settings.scheduler.max_units
    plans = inv.platform.settings.plans
    wanted = []
    for process, value in _pairs(changes, f"ps:scale {dep.slug} web=2 worker=1"):
        _known_type(release, process, dep)
        count, _, plan = value.partition(":")
        if not count.isdigit() or len(count) > 6:
            raise Invalid(f"'{value[:30]}' is not a number of units for {process}", "Use a whole number like 2 (or 2:m1).")
        if int(count) > limit:
            raise Invalid(f"{process}={count} is more than the limit of {limit} units per process type",
                          "The operator sets the limit (scheduler.max_units).")
        wanted.append((process, int(count), check_plan(plans, plan) if plan else None))
    for process, count, plan in wanted:
        inv.store.set_formation(dep, process, quantity=count, plan=plan,
                                default_plan=inv.platform.settings.scheduler.default_plan)
    formation = inv.store.formation(dep)
    inv.console.step("Scaling " + ", ".join(f"{p} to {n} ({formation[p].plan})" for p, n, _ in wanted))
    _wait(inv, dep, {p for p, _, _ in wanted}, wait)


@command("ps:resize")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("changes", nargs=-1, metavar="TYPE=PLAN...")
@click.option("--wait/--no-wait", default=True, help="Wait until the resized units are up (default).")
def ps_resize(inv: Invocation, target: str, changes: tuple[str, ...], wait: bool) -> None:
    """Change the plan (memory, CPU, pids) of process types: vertical scaling; units are replaced."""
    dep = deployment_for(inv.caller, inv.store, target)
    release = inv.current_release(dep)
    plans = inv.platform.settings.plans
    wanted = []
    for process, plan in _pairs(changes, f"ps:resize {dep.slug} web=m1"):
        _known_type(release, process, dep)
        wanted.append((process, check_plan(plans, plan)))
    for process, plan in wanted:
        inv.store.set_formation(dep, process, plan=plan, default_plan=plan)
    inv.console.step("Resizing " + ", ".join(f"{p} to {plan}" for p, plan in wanted))
    _wait(inv, dep, {p for p, _ in wanted}, wait)


@command("ps:restart")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("process", required=False, metavar="[TYPE]")
@click.option("--wait/--no-wait", default=True, help="Wait until the new units are up (default).")
def ps_restart(inv: Invocation, target: str, process: str | None, wait: bool) -> None:
    """Replace the units of a deployment (or of one process type), new ones up before old ones stop."""
    dep = deployment_for(inv.caller, inv.store, target)
    release = inv.current_release(dep)
    if process is not None:
        _known_type(release, process.lower(), dep)
    formation = inv.store.formation(dep)
    types = [process.lower()] if process else [p for p, f in formation.items() if f.quantity and p in release.process_types]
    for p in types:
        inv.store.set_formation(dep, p, restart=True)
    inv.console.step("Restarting " + (", ".join(types) or "nothing (no units are scaled up)"))
    _wait(inv, dep, set(types), wait)


@command("plans")
def plans(inv: Invocation) -> None:
    """List the plans (unit sizes) with their memory, CPU and process limits."""
    default = inv.platform.settings.scheduler.default_plan
    inv.console.table(
        ["plan", "memory", "cpu", "pids", ""],
        [[name, memory_label(p.memory), f"{p.cpu:g}", p.pids, "(default)" if name == default else ""]
         for name, p in sorted(inv.platform.settings.plans.items(), key=lambda kv: (kv[1].cpu, kv[0]))],
    )
