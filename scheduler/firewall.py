"""Openings from a unit to its app's add-ons in the host's firewall (docker runtime, local engine).

Units start on the installation's unit network (Docker's default bridge when dockerd runs with
``--icc=false``): a user-defined network of the app's own costs every container start Docker's
embedded DNS (10 concurrent starts took 1.33x as long as on the default bridge; README, Benchmarks). An app's add-ons keep a network of their own at a
fixed address (addons.service); Docker drops all traffic between networks (its
DOCKER-ISOLATION chains). Before a unit starts, ``open`` inserts into the DOCKER-USER chain,
which Docker evaluates before those, one ACCEPT rule per add-on: from the unit's MAC address
(chosen by bae at create, so the rule exists before the unit's first instruction; a unit has no
capabilities, so it cannot change it) to the add-on's address on its app's bridge. Another
app's unit matches no rule and stays dropped, as does any unit of an app without add-ons.
Replies go back through one rule for established connections towards the unit network.

Rules carry the comment ``bae:INSTANCE:CONTAINER``; ``sweep`` deletes those whose container is
gone (any installation's: container names are unique on an engine). A stale rule opens
nothing: its MAC left with its container. The replies rule (``bae:replies``) stays: it only
lets through packets of connections whose first packet was accepted. A MAC of bae's also means
the host's neighbour entry of a reused IP is wrong (Docker's MACs follow the IP): ``announce``
and ``forget`` keep it right. Used by runtime_docker only.
"""

from __future__ import annotations

import logging
import secrets
import shlex
import subprocess
import threading
import time
from typing import Callable, Iterable

from bae.errors import BaeError

__all__ = ["Firewall", "new_mac", "MAC_PREFIX"]

log = logging.getLogger("bae.firewall")

CHAIN = "DOCKER-USER"
REPLIES = "bae:replies"
MAC_PREFIX = "02:ba:"


def new_mac() -> str:
    """A locally administered unicast MAC outside Docker's own 02:42 range."""
    return MAC_PREFIX + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


def _iptables(*args: str, stdin: str | None = None, restore: bool = False) -> subprocess.CompletedProcess:
    cmd = ["iptables-restore", "-w", "--noflush"] if restore else ["iptables", "-w", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)


class Firewall:
    """The DOCKER-USER rules of one installation (``instance``), units on ``unit_bridge``."""

    def __init__(self, instance: str, unit_bridge: str) -> None:
        self.instance = instance
        self.unit_bridge = unit_bridge
        self._replies = 0.0  # when the replies rule was last seen in place
        self._swept = 0.0
        self._lock = threading.Lock()

    @classmethod
    def detect(cls, instance: str, api, unit_bridge: str) -> "Firewall | None":
        """A Firewall when this process can edit the host's iptables and the engine is local with a
        DOCKER-USER chain (dockerd made it); None otherwise (units then join their app's network)."""
        if not str(getattr(api, "base_url", "")).startswith("http+docker://"):
            return None  # a remote engine: this host's firewall is not its firewall
        try:
            listed = _iptables("-S", CHAIN)
        except (OSError, subprocess.SubprocessError):
            return None
        if listed.returncode != 0:
            log.info("no iptables chain %s here (%s): units join their app's network",
                     CHAIN, listed.stderr.strip()[:200])
            return None
        return cls(instance, unit_bridge)

    def _rule(self, container: str, mac: str, ip: str, bridge: str) -> str:
        return (f"{CHAIN} -o {bridge} -d {ip}/32 -m mac --mac-source {mac} "
                f"-m comment --comment bae:{self.instance}:{container} -j ACCEPT")

    def _ensure_replies(self) -> None:
        if time.monotonic() - self._replies < 30:
            return
        spec = ["-o", self.unit_bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                "-m", "comment", "--comment", REPLIES, "-j", "ACCEPT"]
        if _iptables("-C", CHAIN, *spec).returncode != 0:
            made = _iptables("-I", CHAIN, *spec)
            if made.returncode != 0:
                raise BaeError(f"opening the way back from add-ons failed: {made.stderr.strip()[:300]}",
                               "bae edits the host's iptables as root; see README, Add-ons.")
        self._replies = time.monotonic()

    def open(self, container: str, mac: str, targets: Iterable[tuple[str, str]]) -> None:
        """Let the unit ``container`` (MAC ``mac``) reach each (add-on address, its bridge)."""
        targets = list(targets)
        if not targets:
            return
        self._ensure_replies()
        lines = "".join(f"-I {self._rule(container, mac, ip, bridge)}\n" for ip, bridge in targets)
        done = _iptables(stdin=f"*filter\n{lines}COMMIT\n", restore=True)
        if done.returncode != 0:
            raise BaeError(f"opening {container}'s way to its add-ons failed: {done.stderr.strip()[:300]}",
                           "bae edits the host's iptables as root; see README, Add-ons.")

    def announce(self, ip: str, mac: str) -> None:
        """Tell the host's neighbour table that ``ip`` is now at ``mac`` (right after the unit starts).

        Docker derives a container's MAC from its IP, so an IP that goes to a new container keeps its
        MAC; a unit's own MAC breaks that, and the host would go on sending to the MAC of the IP's
        previous container until its neighbour entry times out (connections to the unit then hung
        for ~25 s here). ``sweep`` also drops entries of units that are gone."""
        done = subprocess.run(["ip", "-4", "neigh", "replace", ip, "lladdr", mac, "dev", self.unit_bridge,
                               "nud", "reachable"], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            log.warning("setting the neighbour entry of %s failed: %s", ip, done.stderr.strip()[:200])

    def forget(self, ip: str) -> None:
        """Drop the host's neighbour entry of ``ip`` (its unit stopped: the IP's next container has
        another MAC)."""
        subprocess.run(["ip", "-4", "neigh", "del", ip, "dev", self.unit_bridge], capture_output=True, timeout=30)

    def _forget_neighbours(self, live_macs: set[str]) -> None:
        shown = subprocess.run(["ip", "-4", "neigh", "show", "dev", self.unit_bridge], capture_output=True,
                               text=True, timeout=30)
        for line in shown.stdout.splitlines():
            words = line.split()
            if "lladdr" in words:
                mac = words[words.index("lladdr") + 1].lower()
                if mac.startswith(MAC_PREFIX) and mac not in live_macs:
                    subprocess.run(["ip", "-4", "neigh", "del", words[0], "dev", self.unit_bridge],
                                   capture_output=True, timeout=30)

    def repair(self, units: Iterable[tuple[str, str, list[tuple[str, str]]]]) -> int:
        """Give each running unit (container name, its MAC, [(add-on address, bridge)]) the openings
        it should have and lacks; the replies rule is checked too. Level-based: whatever removed a
        rule (a firewall reload, an operator's flush), the next pass puts it back; a rule added for a
        unit that stopped meanwhile opens nothing (its MAC left with it) and the next sweep removes
        it. Neighbour entries are not repaired here: this listing may be stale by the time it is
        acted on, and an entry written for a unit that just stopped would make its IP's next
        container unreachable from the host for ~25 s (measured: 30 s scale-ups); a missing entry
        is resolved by ARP, and a unit's entry is written when it starts (``announce``).
        Returns how many rules were added."""
        units = list(units)
        if not units:
            return 0
        self._replies = 0.0
        self._ensure_replies()
        listed = _iptables("-S", CHAIN)
        if listed.returncode != 0:
            return 0
        have = set()  # (comment, destination) of the rules there (-S reorders options, prints MACs in capitals)
        for line in listed.stdout.splitlines():
            words = shlex.split(line)
            if "--comment" in words and "-d" in words:
                have.add((words[words.index("--comment") + 1], words[words.index("-d") + 1].removesuffix("/32")))
        missing = []
        for container, mac, targets in units:
            for ip, bridge in targets:
                if (f"bae:{self.instance}:{container}", ip) not in have:
                    missing.append((container, self._rule(container, mac, ip, bridge)))
        if missing:
            lines = "".join(f"-I {rule}\n" for _c, rule in missing)
            done = _iptables(stdin=f"*filter\n{lines}COMMIT\n", restore=True)
            if done.returncode != 0:
                log.warning("putting back %d opening(s) failed: %s", len(missing), done.stderr.strip()[:300])
            else:
                log.warning("put back %d missing opening(s) to add-ons: %s", len(missing),
                            ", ".join(sorted({c for c, _r in missing}))[:500])
        return len(missing)

    def sweep(self, names: Callable[[], tuple[set[str], set[str]]], every: float = 0.0) -> int:
        """Delete the rules (of any installation) whose container is not among the names ``names()``
        returns (with the MACs of live containers), called after the rules are listed, so a unit
        created meanwhile keeps its rule; and the host's neighbour entries of bae MACs no container
        has. At most once per ``every`` seconds. The replies rule stays (another process may be
        about to rely on it)."""
        with self._lock:
            now = time.monotonic()
            if every and now - self._swept < every:
                return 0
            self._swept = now
        listed = _iptables("-S", CHAIN)
        if listed.returncode != 0:
            return 0
        ours = []
        for line in listed.stdout.splitlines():
            words = shlex.split(line)  # iptables -S quotes comments
            if "--comment" in words and words[words.index("--comment") + 1].startswith("bae:"):
                ours.append((line, words[words.index("--comment") + 1]))
        live, macs = names()
        self._forget_neighbours(macs)
        stale = [line for line, comment in ours if comment != REPLIES and comment.split(":", 2)[-1] not in live]
        if not stale:
            return 0
        deletes = "".join("-D" + line[2:] + "\n" for line in stale)
        if _iptables(stdin=f"*filter\n{deletes}COMMIT\n", restore=True).returncode != 0:
            for line in stale:  # another process deleted some meanwhile: one by one
                _iptables(*shlex.split("-D" + line[2:]))
        log.info("removed %d firewall rule(s) of units that are gone", len(stale))
        return len(stale)
