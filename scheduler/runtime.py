"""The scheduler's runtime: everything a unit needs, as one small interface.

``Runtime`` is what the reconcile loop, ``ps``, the log collector and one-off
units use; they never see the engine behind it. Backends are sibling modules
(``runtime_docker.py``: the local Docker Engine, ``runtime_swarm.py``: the tasks of
Swarm services) and are the only modules that
touch an engine's SDK for units. They translate the engine's errors into
``BaeError`` (a unit that vanished is ``bae.errors.Gone``) once, at their edge.

Units are found by what the runtime reports about them (``UnitInfo``, read
back from the labels ``UnitSpec.labels()`` wrote), never by ids kept elsewhere.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from bae import config
from bae.model import Deployment, Release

__all__ = ["Runtime", "Attached", "UnitIdentity", "Workload", "UnitSpec", "UnitInfo", "OneOff", "Addresses"]

# app -> {add-on name: its fixed address}, from the add-ons' records (the composition root gives it to
# the runtime: control.platform.Platform.addon_addresses)
Addresses = Callable[[str], dict[str, str]]


@dataclass
class UnitIdentity:
    """What a unit's labels say: written when it starts, read back when it is listed.

    The labels are the only record of which units exist (never container ids in SQLite)."""
    app: str
    deployment: str
    process: str
    index: int
    release: int
    plan: str
    generation: int
    web: bool

    @property
    def unit(self) -> str:
        return f"{self.process}.{self.index}"

    def labels(self) -> dict[str, str]:
        return {"bae.app": self.app, "bae.deployment": self.deployment, "bae.process": self.process,
                "bae.index": str(self.index), "bae.release": str(self.release), "bae.plan": self.plan,
                "bae.generation": str(self.generation), "bae.web": "1" if self.web else "0"}

    @staticmethod
    def from_labels(labels: dict[str, str]) -> dict:
        """The identity fields from a unit's labels; KeyError or ValueError when it is not a unit."""
        return {"app": labels["bae.app"], "deployment": labels["bae.deployment"], "process": labels["bae.process"],
                "index": int(labels["bae.index"]), "release": int(labels["bae.release"]),
                "plan": labels.get("bae.plan", ""), "generation": int(labels.get("bae.generation", "0")),
                "web": labels.get("bae.web") == "1"}


@dataclass
class Workload:
    """What a unit runs (a release's image, a command, config vars) and within which limits (a plan's)."""

    image: str
    command: str
    env: dict
    memory: str
    cpu: float
    pids: int
    ca_bundle: str = ""  # the host's CA bundle the unit trusts (build.ca_bundle); empty: the stack's own

    @classmethod
    def of(cls, release: Release, command: str, plan: config.Plan, ca_bundle: str) -> Workload:
        return cls(release.image, command, dict(release.config), plan.memory, plan.cpu, plan.pids, ca_bundle)


@dataclass
class UnitSpec(UnitIdentity):
    """A unit of the formation to start: its identity (its labels), what it runs, its stop grace period."""

    workload: Workload
    stop_grace: int


@dataclass
class UnitInfo(UnitIdentity):
    """A unit as the runtime sees it now (running or exited)."""

    id: str
    name: str
    running: bool
    status: str  # the engine's word: created, running, exited ...
    ip: str | None = None
    address: str | None = None  # host:port the router and the health check connect to (web units)
    host_port: int | None = None  # $PORT as published on the host's loopback (what `ps` shows)
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    exit_code: int | None = None
    oom: bool = False
    node: str = ""  # the machine it runs on, when the runtime has several (swarm)


@dataclass
class OneOff:
    """A one-off unit (`run`, the release phase): a release's image and config outside the formation."""

    app: str
    deployment: str
    release: int
    workload: Workload
    name: str = "run"  # run.1234 / release
    tty: bool = False
    size: tuple[int, int] | None = None  # columns, rows

    @classmethod
    def for_release(cls, settings: config.Settings, dep: Deployment, release: Release, command: str,
                    **options) -> OneOff:
        """A one-off unit of ``release``: its image and config, the default plan's limits."""
        plan = settings.plans[settings.scheduler.default_plan]
        return cls(dep.app, dep.name, release.version, Workload.of(release, command, plan, settings.build.ca_bundle),
                   **options)


class Attached(Protocol):
    """A started one-off unit whose input and output this process holds."""

    def send(self, data: bytes) -> None:
        """Write to the unit's stdin (OSError once it is gone)."""

    def close_input(self) -> None:
        """End the unit's stdin (EOF), so `cat` and friends finish."""

    def output(self) -> Iterator[tuple[int, bytes]]:
        """(1 for stdout or 2 for stderr, bytes) as the unit writes them, until it ends (with a TTY: all 1)."""

    def resize(self, width: int, height: int) -> None:
        """Resize the unit's TTY; a unit that is gone is ignored."""

    def kill(self) -> None:
        """Stop the unit at once; a unit that ended meanwhile is ignored."""

    def wait(self) -> int:
        """The unit's exit code, once it has ended."""

    def oom(self) -> bool:
        """Once it has ended: was a process of the unit killed for exceeding its memory limit?"""


class Runtime(Protocol):
    """Where units run. Every method may raise BaeError (Unavailable when the engine does not answer)."""

    def list_units(self, **labels: str) -> list[UnitInfo]:
        """Every unit of this installation (running or exited), optionally only those with ``bae.KEY=VALUE`` labels."""

    def start(self, spec: UnitSpec) -> str:
        """Create and start a unit under the unit contract; returns its id."""

    def stop(self, unit_id: str, grace: int) -> str:
        """SIGTERM, up to ``grace`` seconds, SIGKILL; the unit stays listed until ``remove``. Gone units are ignored.
        Returns the id of the unit that stops: ``unit_id``, or another unit of its process type, release,
        plan and generation where the engine chooses which one goes (a swarm service's scale-in)."""

    def remove(self, unit_id: str) -> None:
        """Remove a unit (stopped or not); gone units are ignored."""

    def remove_exited(self, unit_id: str) -> bool:
        """Remove a unit that exited, unless it runs again (started by hand, e.g. `docker restart`: it
        is the same unit and stays; False then); gone units are ignored."""

    def remove_all(self, **labels: str) -> int:
        """Remove every unit with these labels (a destroyed deployment's); returns how many."""

    def remove_all_oneoffs(self) -> int:
        """Remove one-off units whose platform stopped while they ran; returns how many."""

    def prune_nodes(self, repository: str, keep: set[str]) -> None:
        """Remove ``repository``'s release images other than the ``keep`` tags from the other machines
        the runtime pulled them to (in the background; this engine's are removed by the deploy)."""

    def is_up(self, info: UnitInfo, age: float) -> bool:
        """A running web unit is up once it accepts connections on $PORT; any other once it ran a moment."""

    def logs(self, unit_id: str, tail: int = 20) -> str:
        """The unit's last ``tail`` lines of output ("" when there are none, or it is gone)."""

    def follow_logs(self, unit_id: str, since: float | None = None) -> Iterator[list[tuple[str, str]]]:
        """The unit's output after ``since`` (epoch seconds) as it comes, in batches of (ISO 8601 UTC time,
        line), until it ends."""

    def attach(self, job: OneOff, unit: str, stdin: bool) -> AbstractContextManager[Attached]:
        """Create, attach to and start a one-off unit named ``unit``; it is removed when the block ends."""

    def watch(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        """Call ``on_event(action, unit_id)`` (die, start, oom, ...) for events of this installation's units
        until ``stop`` is set (blocking; reconnects when the engine restarts). ``oom`` also comes for a
        process killed inside a unit that runs on."""
