"""scheduler.firewall's rules and its sweep, with iptables replaced by a list (no host firewall touched)."""

import re
import shlex
import subprocess

import pytest

from scheduler import firewall
from scheduler.firewall import Firewall, new_mac


class FakeTables:
    """The DOCKER-USER chain as `iptables -S` prints it."""

    def __init__(self):
        self.rules = ["-A DOCKER-USER -j RETURN"]
        self.calls = []

    def __call__(self, *args, stdin=None, restore=False):
        self.calls.append(("restore", stdin) if restore else args)
        ok = subprocess.CompletedProcess(args, 0, "", "")
        if restore:
            for line in stdin.splitlines():
                if line.startswith("-I "):
                    self.rules.insert(0, "-A " + line[3:])
                elif line.startswith("-D "):
                    self.rules.remove("-A " + " ".join(shlex.split(line[3:])))
            return ok
        if args[0] == "-S":  # as iptables prints them: comments quoted
            shown = [re.sub(r"--comment (\S+)", r'--comment "\1"', r) for r in self.rules]
            return subprocess.CompletedProcess(args, 0, "".join(r + "\n" for r in shown), "")
        rule = "-A " + " ".join(args[1:])
        if args[0] == "-C":
            return ok if rule in self.rules else subprocess.CompletedProcess(args, 1, "", "no such rule")
        if args[0] == "-I":
            self.rules.insert(0, rule)
        if args[0] == "-D":
            self.rules.remove(rule)
        return ok


class FakeNeighbours:
    """The host's neighbour table of the unit bridge, as `ip -4 neigh` shows and changes it."""

    def __init__(self):
        self.entries = {"172.17.0.2": "02:42:ac:11:00:02", "172.17.0.3": "02:ba:00:00:00:09",
                        "172.17.0.4": "02:ba:00:00:00:01"}

    def __call__(self, cmd, **kw):
        assert cmd[:3] == ["ip", "-4", "neigh"]
        if cmd[3] == "show":
            out = "".join(f"{ip} lladdr {mac} STALE\n" for ip, mac in self.entries.items())
            return subprocess.CompletedProcess(cmd, 0, out, "")
        if cmd[3] == "replace":
            self.entries[cmd[4]] = cmd[6]
        if cmd[3] == "del":
            del self.entries[cmd[4]]
        return subprocess.CompletedProcess(cmd, 0, "", "")


@pytest.fixture
def tables(monkeypatch):
    fake = FakeTables()
    monkeypatch.setattr(firewall, "_iptables", fake)
    return fake


@pytest.fixture
def neighbours(monkeypatch):
    fake = FakeNeighbours()
    monkeypatch.setattr(firewall.subprocess, "run", fake)
    return fake


def test_macs_are_local_unicast_and_outside_dockers_range():
    macs = {new_mac() for _ in range(200)}
    assert len(macs) == 200
    for mac in macs:
        assert re.fullmatch(r"02:ba(:[0-9a-f]{2}){4}", mac)


def test_open_inserts_one_rule_per_addon_and_the_replies_rule_once(tables):
    fw = Firewall("inst", "docker0")
    fw.open("bae-inst-shop-default-web.1-v3-abc123", "02:ba:00:00:00:01",
            [("172.20.255.254", "br-aaaa"), ("172.20.255.253", "br-aaaa")])
    fw.open("bae-inst-shop-default-web.2-v3-def456", "02:ba:00:00:00:02", [("172.20.255.254", "br-aaaa")])
    rules = tables.rules
    assert sum("bae:replies" in r for r in rules) == 1
    assert ("-A DOCKER-USER -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment bae:replies"
            " -j ACCEPT") in rules
    assert ("-A DOCKER-USER -o br-aaaa -d 172.20.255.254/32 -m mac --mac-source 02:ba:00:00:00:01 -m comment "
            "--comment bae:inst:bae-inst-shop-default-web.1-v3-abc123 -j ACCEPT") in rules
    assert len(rules) == 5 and rules[-1] == "-A DOCKER-USER -j RETURN"  # inserted before Docker's RETURN
    # nothing to open for an app without add-ons: no iptables call at all
    calls = len(tables.calls)
    fw.open("bae-inst-other-default-web.1-v1-000000", "02:ba:00:00:00:03", [])
    assert len(tables.calls) == calls


def test_sweep_removes_rules_of_gone_containers_of_any_installation_only(tables, neighbours):
    mine, theirs = Firewall("inst", "docker0"), Firewall("other", "docker0")
    mine.open("keep-me", "02:ba:00:00:00:01", [("10.1.0.9", "br-a")])
    mine.open("gone-1", "02:ba:00:00:00:02", [("10.1.0.9", "br-a")])
    theirs.open("gone-2", "02:ba:00:00:00:03", [("10.2.0.9", "br-b")])
    tables.rules.insert(0, "-A DOCKER-USER -s 10.9.9.9/32 -j DROP")  # someone else's rule
    listed_before_names = []

    def names():
        listed_before_names.append(sum(1 for c in tables.calls if c == ("-S", "DOCKER-USER")))
        return {"keep-me", "unrelated"}, {"02:ba:00:00:00:01", "02:42:ac:11:00:05"}
    assert mine.sweep(names) == 2
    assert listed_before_names == [1]  # the rules are listed before the containers (a new unit keeps its rule)
    left = "\n".join(tables.rules)
    assert "keep-me" in left and "gone-" not in left and "10.9.9.9" in left and "bae:replies" in left
    # the host forgets where a gone unit's MAC was (the next container at that IP has another MAC)
    assert neighbours.entries == {"172.17.0.2": "02:42:ac:11:00:02", "172.17.0.4": "02:ba:00:00:00:01"}
    assert mine.sweep(names, every=60) == 0  # throttled: no listing at all
    assert sum(1 for c in tables.calls if c == ("-S", "DOCKER-USER")) == 1


def test_announce_replaces_the_hosts_neighbour_entry(neighbours):
    Firewall("inst", "docker0").announce("172.17.0.2", "02:ba:00:00:00:07")
    assert neighbours.entries["172.17.0.2"] == "02:ba:00:00:00:07"


def test_forget_drops_the_entry_of_a_stopped_units_ip(neighbours):
    Firewall("inst", "docker0").forget("172.17.0.3")
    assert "172.17.0.3" not in neighbours.entries


def test_repair_puts_back_missing_openings_and_the_replies_rule_and_leaves_neighbours_alone(tables, neighbours):
    fw = Firewall("inst", "docker0")
    fw.open("web-1", "02:ba:00:00:00:01", [("10.1.0.9", "br-a"), ("10.1.0.8", "br-a")])
    # something (a flush, an operator) removed one of web-1's rules and the replies rule
    tables.rules = [r for r in tables.rules if "10.1.0.8" not in r and "bae:replies" not in r]
    calls, entries = len(tables.calls), dict(neighbours.entries)
    added = fw.repair([("web-1", "02:ba:00:00:00:01", [("10.1.0.9", "br-a"), ("10.1.0.8", "br-a")]),
                       ("web-2", "02:ba:00:00:00:02", [("10.1.0.9", "br-a")]),
                       ("run-1", "02:ba:00:00:00:05", [("10.1.0.9", "br-a")])])
    assert added == 3  # web-1's second, web-2's and the one-off's; web-1's first was there
    left = "\n".join(tables.rules)
    assert left.count("bae:inst:web-1") == 2 and left.count("bae:inst:web-2") == 1 and "bae:replies" in left
    assert "bae:inst:run-1" in left
    assert sum(1 for c in tables.calls[calls:] if c[0] == "restore") == 1  # one batch
    # a listing may be stale when acted on: an entry written for a unit that just stopped would
    # make its IP's next container unreachable from the host, so repair writes none
    assert neighbours.entries == entries
    # nothing missing: nothing inserted
    calls = len(tables.calls)
    assert fw.repair([("web-2", "02:ba:00:00:00:02", [("10.1.0.9", "br-a")])]) == 0
    assert not any(c[0] == "restore" for c in tables.calls[calls:])
