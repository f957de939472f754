"""Which node an operator means, and which nodes a process type's units may run on (swarm runtime).

Pure rules over ``NodeInfo`` rows (``scheduler.runtime_swarm.nodes()``), used by the node
commands (control/commands/nodes.py) before they change anything:

- ``pick_node``: a node by exact hostname, exact id or unique id prefix; an empty name,
  an ambiguous prefix or an unknown name is refused, naming the matches or the known nodes.
- ``meets``: does a node meet a placement constraint (``node.labels.zone==a``), as Swarm
  decides it (values compared without regard to case; ``!=`` holds for a node without
  the label).
- ``homes``: the nodes a process type's units may land on: ready, active workers that meet
  every constraint (units run on worker nodes only).
- ``uneven``: are a process type's units spread so that one home has two more than another
  (`nodes:activate` moves such types back, new units up before old ones stop).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable

from bae.errors import Invalid, NotFound

if TYPE_CHECKING:
    from scheduler.runtime_swarm import NodeInfo

__all__ = ["pick_node", "meets", "homes", "uneven", "describe"]

_CONSTRAINT = re.compile(r"(node\.[A-Za-z0-9_.-]+?)\s*(==|!=)\s*(.*)")


def _listed(nodes: Iterable["NodeInfo"]) -> str:
    return ", ".join(sorted(n.hostname for n in nodes)) or "(none)"


def pick_node(nodes: Iterable["NodeInfo"], name: str) -> "NodeInfo":
    """The node ``name`` means: its hostname (a node that is not down first, when a machine left and
    joined again under the same name), its id, or a prefix of one id only."""
    nodes = list(nodes)
    if not name or not name.strip():
        raise Invalid("give a node: its hostname or id", f"Known nodes: {_listed(nodes)} (see `nodes`).")
    named = [n for n in nodes if n.hostname == name]
    if len(named) > 1:
        named = [n for n in named if n.state != "down"] or named
    if len(named) == 1:
        return named[0]
    exact = [n for n in nodes if n.id == name]
    if exact:
        return exact[0]
    found = named or [n for n in nodes if n.id.startswith(name)]
    if len(found) == 1:
        return found[0]
    if found:
        matches = ", ".join(f"{n.hostname} (id {n.id[:12]}, {n.state})" for n in sorted(found, key=lambda n: n.id))
        raise Invalid(f"'{name[:40]}' names {len(found)} nodes: {matches}",
                      "Give more of the id (see `docker node ls`).")
    raise NotFound(f"no node '{name[:40]}' in the swarm", f"Known nodes: {_listed(nodes)} (see `nodes`).")


def meets(node: "NodeInfo", constraint: str) -> bool:
    """Does ``node`` meet one placement constraint (``node.KEY==VALUE`` or ``!=``)? Unknown keys never do."""
    match = _CONSTRAINT.fullmatch(constraint.strip())
    if not match:
        return False
    key, op, want = match.group(1), match.group(2), match.group(3).strip()
    if key.startswith("node.labels."):
        have = [node.labels.get(key[len("node.labels."):], "")]
    else:
        fields = {"node.hostname": [node.hostname], "node.id": [node.id], "node.role": [node.role],
                  "node.platform.os": [getattr(node, "os", "")], "node.platform.arch": [getattr(node, "arch", "")]}
        if key not in fields:
            return False
        have = fields[key]
    equal = any(h.lower() == want.lower() for h in have)
    return equal if op == "==" else not equal


def homes(nodes: Iterable["NodeInfo"], constraints: list[str], *, besides: str = "") -> list["NodeInfo"]:
    """The nodes new units of a process type with ``constraints`` may start on: ready, active workers
    meeting them all (other than the node id ``besides``)."""
    return [n for n in nodes if n.id != besides and n.role == "worker" and n.state == "ready"
            and n.availability == "active" and all(meets(n, c) for c in constraints)]


def uneven(units_on: dict[str, int], places: list["NodeInfo"]) -> bool:
    """Given how many of a process type's units run on each node (by hostname), does one of its
    ``places`` (``homes``) hold two more than another? Units elsewhere (a paused node) do not count."""
    if len(places) < 2:
        return False
    counts = [units_on.get(n.hostname, 0) for n in places]
    return max(counts) - min(counts) > 1


def describe(nodes: Iterable["NodeInfo"]) -> str:
    """``n1 (worker, ready, active, zone=a), n2 (...)``: what an operator needs to pick a constraint."""
    parts = []
    for n in sorted(nodes, key=lambda n: (n.role != "worker", n.hostname)):
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "no labels"
        parts.append(f"{n.hostname} ({n.role}, {n.state}, {n.availability}, {labels})")
    return "; ".join(parts) or "(no nodes)"
