"""nodes, nodes:drain, nodes:activate, nodes:label, nodes:join-token, ps:place (the swarm runtime)."""

from __future__ import annotations

import re
import time

import click

from bae.access import deployment_for, require_admin
from bae.errors import BaeError, Conflict, Invalid, Unavailable
from bae.model import slug
from control.commands import Invocation, command
from scheduler.placement import describe, homes, uneven
from scheduler.plans import memory_bytes

_LABEL = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})(?:=(.{0,200}))?")
_CONSTRAINT = re.compile(r"node\.(?:labels\.[A-Za-z0-9_.-]+|hostname|role|id|platform\.os|platform\.arch)\s*(==|!=)\s*[A-Za-z0-9_.-]+")


def _swarm(inv: Invocation):
    runtime = inv.platform.runtime
    if getattr(runtime, "name", "") != "swarm":
        raise Invalid("this platform runs its units on one machine (scheduler.runtime is \"docker\")",
                      "Set scheduler.runtime = \"swarm\" on a Swarm manager to use nodes.")
    return runtime


def _gib(n: int) -> str:
    return f"{n / 1024 ** 3:.1f} GB"


@command("nodes")
def nodes(inv: Invocation) -> None:
    """List the cluster's nodes: state, availability, labels, units, free memory and CPU."""
    require_admin(inv.caller, "list nodes")
    runtime = _swarm(inv)
    units = runtime.list_units()
    plans = inv.platform.settings.plans
    rows = []
    for node in sorted(runtime.nodes(fresh=True).values(), key=lambda n: (n.role != "manager", n.hostname)):
        mine = [u for u in units if u.node == node.hostname and u.running]
        used_mem = sum(memory_bytes(plans[u.plan].memory) for u in mine if u.plan in plans)
        used_cpu = sum(plans[u.plan].cpu for u in mine if u.plan in plans)
        rows.append([node.hostname, node.state, node.availability, node.role + ("*" if node.leader else ""),
                     node.address, ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-", len(mine),
                     _gib(max(0, node.memory - used_mem)), f"{max(0.0, node.cpus - used_cpu):.1f}"])
    inv.console.table(["node", "state", "availability", "role", "address", "labels", "units", "free memory",
                       "free cpu"], rows, empty="No nodes.")


@command("nodes:drain")
@click.argument("node")
def nodes_drain(inv: Invocation, node: str) -> None:
    """Move every unit away from NODE (their replacements up elsewhere first) and place none there until nodes:activate."""
    require_admin(inv.caller, "drain nodes")
    runtime = _swarm(inv)
    target = runtime.node(node)
    # the scheduler of `bae serve` moves the units (new ones up before old ones stop); a plain Swarm drain
    # would stop them first, and with no other node for them, for good
    if not inv.platform.notify():
        raise Unavailable(f"bae serve is not running, so nothing can start {target.hostname}'s units elsewhere "
                          "before they stop", f"Start it (make up), then run nodes:drain {target.hostname} again.")
    nodes = runtime.nodes(fresh=True)
    here = [u for u in runtime.list_units() if u.node == target.hostname and u.running]
    for app, deployment, process in sorted({(u.app, u.deployment, u.process) for u in here}):
        constraints = runtime.placement(app, deployment, process)
        if not homes(nodes.values(), constraints, besides=target.id):
            where = f"meets {' and '.join(constraints)}" if constraints else "can take them"
            raise Conflict(f"{process} units of {slug(app, deployment)} run on {target.hostname}, and no other ready, "
                           f"active worker node {where}; draining it would stop them",
                           f"Nodes: {describe(nodes.values())}. Add or activate a worker node"
                           + (f", label one (nodes:label NODE KEY=VALUE), or change the constraint (ps:place "
                              f"{slug(app, deployment)} {process} ... or --clear)" if constraints else "")
                           + f", then run nodes:drain {target.hostname} again.")
    paused = runtime.update_node(target.id, availability="pause")
    inv.platform.notify()
    if here:
        # paused: nothing new lands there, and the scheduler replaces its units elsewhere, new ones up
        # before old ones stop
        inv.console.step(f"Moving {len(here)} unit(s) away from {paused.hostname}")
        limit = inv.platform.settings.scheduler.boot_timeout + inv.platform.settings.scheduler.stop_grace + 60
        deadline = time.monotonic() + limit
        while True:
            left = [u for u in runtime.list_units() if u.node == paused.hostname and u.running]
            if not left:
                break
            if time.monotonic() > deadline:
                names = ", ".join(sorted(f"{slug(u.app, u.deployment)} {u.process}.{u.index}" for u in left))
                raise BaeError(f"{len(left)} unit(s) still run on {paused.hostname} after {limit} s: {names}; "
                               f"{paused.hostname} stays paused (no new units land there)",
                               f"See `ps APP` for why they did not move; run nodes:drain {paused.hostname} again to "
                               f"wait longer, or nodes:activate {paused.hostname} to keep using it.")
            time.sleep(0.5)
    drained = runtime.update_node(paused.id, availability="drain")
    inv.console.step(f"{drained.hostname} is {drained.availability}")


@command("nodes:activate")
@click.argument("node")
@click.option("--keep", is_flag=True, help="Leave running units where they are.")
def nodes_activate(inv: Invocation, node: str, keep: bool) -> None:
    """Let units run on NODE again (after nodes:drain) and move units back: each process type spread
    unevenly over its nodes gets new units, spread by Swarm, up before the old ones stop."""
    require_admin(inv.caller, "activate nodes")
    runtime = _swarm(inv)
    active = runtime.update_node(node, availability="active")
    inv.console.step(f"{active.hostname} is {active.availability}")
    if keep:
        inv.platform.notify()
        inv.console.detail("New and re-placed units may run there; running units stay where they are.")
        return
    nodes = list(runtime.nodes(fresh=True).values())
    units_on: dict[tuple[str, str, str], dict[str, int]] = {}
    for u in runtime.list_units():
        if u.running and u.node:
            per = units_on.setdefault((u.app, u.deployment, u.process), {})
            per[u.node] = per.get(u.node, 0) + 1
    moved = []
    for (app, deployment, process), per in sorted(units_on.items()):
        places = homes(nodes, runtime.placement(app, deployment, process))
        if any(n.id == active.id for n in places) and uneven(per, places):
            inv.store.set_formation(inv.store.deployment(app, deployment), process, restart=True)
            moved.append(f"{slug(app, deployment)} {process}")
    inv.platform.notify()
    if moved:
        inv.console.step("Spreading units over the nodes again, new ones up before old ones stop: " + ", ".join(moved))
    else:
        inv.console.detail("Every process type is spread evenly: new and re-placed units may run there.")


@command("nodes:label")
@click.argument("node")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
def nodes_label(inv: Invocation, node: str, labels: tuple[str, ...]) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of NODE, for ps:place constraints."""
    require_admin(inv.caller, "label nodes")
    changes: dict[str, str | None] = {}
    for arg in labels:
        if arg.endswith("-") and _LABEL.fullmatch(arg[:-1]):
            changes[arg[:-1]] = None
            continue
        match = _LABEL.fullmatch(arg)
        if not match or match.group(2) is None:
            raise Invalid(f"'{arg[:60]}' is not KEY=VALUE or KEY-", "For example: nodes:label n2 zone=a")
        changes[match.group(1)] = match.group(2)
    updated = _swarm(inv).update_node(node, labels=changes)
    inv.console.step(f"{updated.hostname}: " + (", ".join(f"{k}={v}" for k, v in sorted(updated.labels.items())) or "no labels"))


@command("nodes:join-token")
def nodes_join_token(inv: Invocation) -> None:
    """Print the commands that make a new machine a node: trust the registry, join the swarm."""
    require_admin(inv.caller, "add nodes")
    runtime = _swarm(inv)
    inv.console.out("# on the new machine (Docker Engine running), as root:")
    inv.console.out(runtime.registry.trust_command())
    inv.console.out(runtime.join_command())


@command("ps:place")
@click.argument("target", metavar="APP[/DEP]")
@click.argument("process")
@click.argument("constraint", required=False)
@click.option("--clear", is_flag=True, help="Place the units anywhere again.")
def ps_place(inv: Invocation, target: str, process: str, constraint: str | None, clear: bool) -> None:
    """Run a process type's units only on nodes matching CONSTRAINT (node.labels.zone==a); units are replaced."""
    dep = deployment_for(inv.caller, inv.store, target)
    runtime = _swarm(inv)
    if clear == bool(constraint):
        raise Invalid("give a constraint or --clear", f"For example: ps:place {target} {process} node.labels.zone==a")
    if constraint and not _CONSTRAINT.fullmatch(constraint.strip()):
        raise Invalid(f"'{constraint[:80]}' is not a placement constraint",
                      "Use node.labels.KEY==VALUE (or !=), node.hostname==NAME or node.role==worker, "
                      "e.g. node.labels.zone==a.")
    formation = inv.store.formation(dep)
    if process not in formation:
        raise Invalid(f"{dep.slug} has no process type '{process}'",
                      f"Its process types: {', '.join(sorted(formation)) or '(none: push first)'}.")
    if constraint:
        nodes = runtime.nodes(fresh=True).values()
        if not homes(nodes, [re.sub(r"\s+", "", constraint)]):
            raise Invalid(f"no ready, active worker node meets {constraint.strip()}, so {process} units would not "
                          "start (units run on worker nodes only)",
                          f"Nodes: {describe(nodes)}. Label a worker first (nodes:label NODE zone=a), or give a "
                          "constraint one of them meets.")
    inv.store.set_placement(dep, process, [] if clear else [re.sub(r"\s+", "", constraint)],
                            inv.platform.settings.scheduler.default_plan)
    inv.platform.notify()
    inv.console.step(f"{process} units of {dep.slug} run " + ("anywhere" if clear else f"where {constraint}")
                     + "; replacing them")
