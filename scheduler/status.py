"""What `ps` shows: each unit's state, read from the runtime (by label) and the
store (formation, crash backoff, units being stopped). Works in any process, not only `bae serve`:
a web unit is "up" when it accepts a connection on $PORT right now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from bae import config
from bae.console import duration
from bae.model import Deployment, FormationEntry
from bae.store import Store
from scheduler.plans import memory_labels
from scheduler.runtime import Runtime, UnitInfo

__all__ = ["UnitStatus", "deployment_status", "converged"]


@dataclass
class UnitStatus:
    unit: str
    process: str
    index: int
    state: str  # up, starting, stopping, crashed
    since: float  # seconds in that state
    release: int
    plan: str
    address: str
    detail: str = ""
    generation: int = 0


def _state(info: UnitInfo, runtime: Runtime, now: float, backoff: dict | None, memory: dict,
           stopping: dict | None = None) -> UnitStatus:
    address = f"127.0.0.1:{info.host_port}" if info.host_port else ""
    if info.node:  # a runtime of several machines: where the unit runs
        address = f"{info.address or ''} on {info.node}".strip()
    base = dict(unit=info.unit, process=info.process, index=info.index, release=info.release, plan=info.plan,
                address=address, generation=info.generation)
    if info.running and stopping:  # the scheduler is stopping it (SIGTERM, then its grace period)
        return UnitStatus(state="stopping", since=max(0.0, now - stopping["since"]), detail=stopping["reason"] or "",
                          **base)
    if info.running:
        age = now - (info.started_at or now)
        return UnitStatus(state="up" if runtime.is_up(info, age) else "starting", since=age, **base)
    since = now - (info.finished_at or now)
    if info.oom:
        detail = f"exceeded its {memory.get(info.plan, info.plan)} memory limit"
    else:
        detail = f"exit {info.exit_code}"
    if backoff and backoff.get("not_before"):
        wait = datetime.fromisoformat(backoff["not_before"]).timestamp() - now
        detail += f", restarting in {duration(wait)}" if wait > 0 else ", restarting"
    return UnitStatus(state="crashed", since=since, detail=detail, **base)


def deployment_status(store: Store, plans: dict[str, config.Plan], dep: Deployment,
                      runtime: Runtime) -> list[UnitStatus]:
    now = time.time()
    backoffs = store.backoffs()
    stopping = store.stopping_units(dep.id)
    memory = memory_labels(plans)
    units = [_state(info, runtime, now, backoffs.get((dep.id, info.process)), memory, stopping.get(info.id))
             for info in runtime.list_units(app=dep.app, deployment=dep.name)]
    return sorted(units, key=lambda u: (u.process, u.index, u.release))


def converged(statuses: list[UnitStatus], release: int, formation: dict[str, FormationEntry],
              processes: set[str]) -> bool:
    """Do the ``processes`` run exactly as wanted: every unit current and up, none left over?"""
    for process in processes:
        entry = formation.get(process)
        quantity = entry.quantity if entry else 0
        mine = [s for s in statuses if s.process == process]
        current = [s for s in mine if s.release == release and entry and s.plan == entry.plan
                   and s.generation == entry.generation and s.state == "up"]
        if len(current) != quantity or len(mine) != quantity:
            return False
    return True

