"""The scheduler's decision, as a pure function: ``plan(desired, observed) -> actions``.

Level-based: it looks only at what should run (``Want``, one per deployment and
process type) and what runs now (``Seen``, one per unit container, found by its
labels), never at events. The executor (``scheduler.loop``) does the I/O.

Rules, per deployment:
- a unit is *current* when its release, plan and restart generation are the
  wanted ones; others are *outdated* (an older release, a resize, a restart);
- missing current units are started (lowest free index first; while units
  are being replaced, at most ``batch`` web units starting at once), unless the process type is backing off after
  crashes; extra current units are stopped at once (scale down): a second unit
  with an index first (the one not up), never a healthy unit of another index;
- outdated units keep serving until every wanted current unit is up, then they
  stop together: a deploy that fails leaves the old units untouched;
- a web unit that does not accept connections within the boot timeout, or any
  unit that exits, is a failure: during a deploy (release ``pending``) the
  deploy fails; otherwise the type backs off exponentially and is restarted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Want", "Seen", "Backoff", "Start", "Stop", "Remove", "Crashed", "Failed", "Done", "plan", "backoff_delay", "rollout_limit"]


@dataclass(frozen=True)
class Want:
    """What should run for one process type of one deployment."""

    app: str
    deployment: str
    process: str
    release: int
    pending: bool  # the release is being deployed: a failure fails the deploy
    quantity: int
    plan: str
    generation: int
    web: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.app, self.deployment, self.process)


@dataclass(frozen=True)
class Seen:
    """One unit container as the runtime reports it, plus what the executor knows of it."""

    id: str
    app: str
    deployment: str
    process: str
    release: int
    index: int
    plan: str
    generation: int
    running: bool
    age: float  # seconds since it started (or was asked to start)
    up: bool = False  # accepts connections on $PORT (web) / has been running a moment (worker)
    exit_code: int | None = None
    oom: bool = False
    stopping: bool = False  # the executor is stopping it
    web: bool = False
    recorded: bool = False  # its crash was counted already (the container is kept until replaced)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.app, self.deployment, self.process)

    @property
    def name(self) -> str:
        return f"{self.process}.{self.index}"


@dataclass(frozen=True)
class Backoff:
    failures: int = 0
    not_before: float = 0.0  # monotonic time the next start may happen


@dataclass(frozen=True)
class Start:
    want: Want
    index: int


@dataclass(frozen=True)
class Stop:
    unit: Seen
    reason: str


@dataclass(frozen=True)
class Remove:
    unit: Seen  # an exited container whose crash was recorded


@dataclass(frozen=True)
class Crashed:
    unit: Seen
    reason: str
    counts: bool = field(default=True, compare=False)  # one more failure for the type's backoff


@dataclass(frozen=True)
class Failed:
    app: str
    deployment: str
    release: int
    reason: str
    unit_id: str = ""  # the unit whose failure failed the deploy (its output is shown)
    unit: str = field(default="", compare=False)  # its name, web.1
    cause: str = field(default="", compare=False)  # "memory", "port" or "exit" (crash_cause): picks the hint


@dataclass(frozen=True)
class Done:
    app: str
    deployment: str
    release: int


def backoff_delay(failures: int, maximum: float) -> float:
    """0 s for a first crash, then 1, 2, 4 … seconds, capped at ``maximum``."""
    if failures <= 1:
        return 0.0
    return float(min(maximum, 2 ** (failures - 2)))


def rollout_limit(formation: dict, process_types: dict, boot_timeout: int, batch: int) -> int:
    """Seconds a deploy may take: every batch of new web units gets the boot timeout, plus slack."""
    web = formation["web"].quantity if "web" in formation and "web" in process_types else 0
    batches = max(1, -(-web // max(1, batch)))
    return boot_timeout * batches + 120


def crash_cause(unit: Seen) -> str:
    """Why a unit failed, as a word the executor picks a hint by."""
    return "memory" if unit.oom else "port" if unit.running else "exit"


def crash_reason(unit: Seen, memory: str | None = None) -> str:
    if unit.oom:
        return f"{unit.name} exceeded its {memory or unit.plan} memory limit"
    if unit.running:  # only web units get here while running: they never bound $PORT
        return f"{unit.name} never accepted connections on $PORT"
    return f"{unit.name} crashed (exit {unit.exit_code})"


@dataclass
class Context:
    now: float
    boot_timeout: float
    batch: int = 5
    backoff_max: float = 300.0
    backoff: dict = field(default_factory=dict)  # (app, dep, process) -> Backoff
    memory: dict = field(default_factory=dict)  # plan -> "256 MB", for messages


def plan(wants: list[Want], seen: list[Seen], ctx: Context, pending: tuple = ()) -> list:
    """What to do now so that ``seen`` moves towards ``wants``.

    ``pending`` lists (app, deployment, release) being deployed that have no
    process types at all: there is nothing to start, so they are done at once.
    """
    actions: list = []
    by_dep: dict[tuple[str, str], list[Want]] = {}
    for w in wants:
        by_dep.setdefault((w.app, w.deployment), []).append(w)
    for app, deployment, release in pending:
        if (app, deployment) not in by_dep:
            actions.append(Done(app, deployment, release))
    units: dict[tuple[str, str], list[Seen]] = {}
    for u in seen:
        units.setdefault((u.app, u.deployment), []).append(u)
    for dep in sorted(set(by_dep) | set(units)):
        actions += _plan_deployment(by_dep.get(dep, []), units.get(dep, []), ctx)
    return actions


def _failed(u: Seen, ctx: Context) -> bool:
    if not u.running:
        return True
    return u.web and not u.up and u.age > ctx.boot_timeout


def _keep(units: list[Seen], quantity: int) -> tuple[list[Seen], list[tuple[Seen, str]]]:
    """Which current units of a type stay (at most one per index, lowest indexes first) and which
    stop. Two units with one index happen when a unit that exited comes back by itself (`docker
    restart`) while its replacement starts: the one that is up stays (the older if both are), the
    other is the duplicate. Fixing an index never stops a healthy unit of another index."""
    best: dict[int, Seen] = {}
    extras: list[tuple[Seen, str]] = []
    for u in sorted(units, key=lambda u: (u.index, not u.up, -u.age)):
        if u.index in best:
            extras.append((u, f"a second {u.name}"))
        else:
            best[u.index] = u
    kept = [best[i] for i in sorted(best)]
    extras += [(u, "scaled down") for u in kept[quantity:]]
    return kept[:quantity], extras


def _plan_deployment(wants: list[Want], units: list[Seen], ctx: Context) -> list:
    actions: list = []
    live = [u for u in units if not u.stopping]
    if not wants:  # deployment gone or nothing to run: stop everything
        for u in live:
            actions.append(Remove(u) if not u.running else Stop(u, "no longer wanted"))
        return actions
    release, pending = wants[0].release, wants[0].pending
    want_of = {w.process: w for w in wants}

    def current(u: Seen) -> bool:
        w = want_of.get(u.process)
        return bool(w and u.release == w.release and u.plan == w.plan and u.generation == w.generation)

    # failures first: exited units and web units that never bound $PORT
    broken = [u for u in live if _failed(u, ctx)]
    new_crashes: dict[str, int] = {}
    for u in broken:
        reason = crash_reason(u, ctx.memory.get(u.plan))
        if pending and u.release == release and current(u):
            actions.append(Failed(u.app, u.deployment, release, reason, u.id, u.name, crash_cause(u)))
            return actions + [Stop(x, "the deploy failed") if x.running else Remove(x)
                              for x in live if x.release == release]
        if (current(u) or u.running) and not u.recorded:
            # units of a type dying together (a reboot, a shared fault) count once; outdated ones not at all
            counts = current(u) and u.process not in new_crashes
            actions.append(Crashed(u, reason, counts))
            if counts:
                new_crashes[u.process] = 1
        if u.running:
            actions.append(Stop(u, reason))
    ok = [u for u in live if u not in broken]
    exited_current = {u for u in broken if not u.running and current(u)}

    all_up = True
    for w in wants:
        mine, extras = _keep([u for u in ok if u.process == w.process and current(u)], w.quantity)
        for extra, reason in extras:
            actions.append(Stop(extra, reason))
        if sum(1 for u in mine if u.up) < w.quantity:
            all_up = False
        missing = w.quantity - len(mine)
        if missing <= 0:
            continue
        back = ctx.backoff.get(w.key, Backoff())
        if w.process in new_crashes:  # counted this very pass: the executor will store the same
            failures = back.failures + new_crashes[w.process]
            back = Backoff(failures, ctx.now + backoff_delay(failures, ctx.backoff_max))
        if back.not_before > ctx.now:
            continue  # crash-looping: wait (the crashed containers stay visible meanwhile)
        starting = sum(1 for u in mine if not u.up)
        replacing = any(u.process == w.process and not current(u) for u in ok)
        # batches only while replacing running units (deploy, resize, restart); a plain scale-up starts all
        room = max(0, ctx.batch - starting) if w.web and (replacing or pending) else missing
        used = {u.index for u in mine}
        free = [i for i in range(1, w.quantity + 1) if i not in used][: min(missing, room)]
        for index in free:
            for gone in [u for u in exited_current if u.process == w.process and u.index == index]:
                actions.append(Remove(gone))
                exited_current.discard(gone)
            actions.append(Start(w, index))
    for u in list(exited_current):
        want = want_of.get(u.process)
        if want is None or u.index > want.quantity:
            actions.append(Remove(u))
    for u in broken:
        if not u.running and not current(u):
            actions.append(Remove(u))

    outdated = [u for u in ok if not current(u)]
    if all_up:
        for u in outdated:
            actions.append(Stop(u, "replaced" if u.process in want_of and want_of[u.process].quantity else "scaled down"))
        if pending:
            actions.append(Done(wants[0].app, wants[0].deployment, release))
    else:
        # types no longer wanted at all (quantity 0 in the current formation) stop now
        for u in outdated:
            w = want_of.get(u.process)
            if u.release == release and (w is None or w.quantity == 0):
                actions.append(Stop(u, "scaled down"))
    return actions
