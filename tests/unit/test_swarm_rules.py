"""The swarm runtime's pure rules: which task stands for a unit (a slot of its process type's service),
crash, scale-in or lost with its node."""

from __future__ import annotations

import ipaddress
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from bae.config import load
from bae.errors import ConfigError, Invalid, NotFound
from scheduler.placement import describe, homes, meets, pick_node, uneven
from scheduler.registry import _ca_and_cert
from scheduler.runtime_swarm import (NodeInfo, SwarmRuntime, _answers, _ended_before, _exited, _name, _not_started,
                                     _published, _slots, _task, oneoff_name)


def node(state="ready", availability="active") -> NodeInfo:
    return NodeInfo("N", "n1", "worker", state, availability, "10.0.0.2", {}, 1 << 30, 1.0)


def task(tid, state, created, stamp=None, node_id="N", desired="running", slot=1):
    return {"ID": tid, "NodeID": node_id, "CreatedAt": created, "DesiredState": desired, "Slot": slot,
            "Status": {"State": state, "Timestamp": stamp or created}}


def current(tasks, nodes):
    return SwarmRuntime._current(SwarmRuntime.__new__(SwarmRuntime), tasks, nodes)


def test_a_running_task_stands_for_the_unit():
    t = task("a", "running", "2026-01-01T00:00:00Z")
    assert current([t], {"N": node()}) == (t, False)


def test_a_task_that_exited_by_itself_is_a_crash_even_once_swarm_restarted_it():
    old = task("a", "failed", "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", desired="shutdown")
    new = task("b", "starting", "2026-01-01T00:00:05.1Z")
    assert current([old, new], {"N": node()}) == (old, True)
    assert current([new := task("c", "complete", "2026-01-01T00:00:00Z")], {"N": node()}) == (new, True)


def test_a_task_lost_with_its_node_is_no_crash_the_replacement_stands_for_the_unit():
    old = task("a", "running", "2026-01-01T00:00:00Z", node_id="DEAD", desired="shutdown")
    new = task("b", "pending", "2026-01-01T00:00:20Z")
    nodes = {"N": node(), "DEAD": node(state="down")}
    assert current([old, new], nodes) == (new, False)
    # the dead node came back and reported its task's end after the replacement was made
    back = task("a", "failed", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", node_id="DEAD", desired="shutdown")
    assert current([back, new], {"N": node(), "DEAD": node()}) == (new, False)
    assert not _exited(old, nodes)


def info(t, nodes, crashed=False):
    identity = {"app": "a", "deployment": "default", "process": "web", "index": 1, "release": 1, "plan": "s1",
                "generation": 0, "web": True}
    service = {"ID": "S", "Spec": {"Name": "bae-x-a-default-web-1-v1"}}
    return SwarmRuntime._info(SwarmRuntime.__new__(SwarmRuntime), service, identity, t, crashed, nodes)


def test_a_unit_whose_node_is_down_is_in_transit_not_crashed_and_not_routed():
    """Swarm re-places it; the loop must neither count a crash nor start a second replacement, and the
    router must drop it: it is running to the loop, but a new unit (no task) that is not up."""
    t = task("a", "running", "2026-01-01T00:00:00Z")
    up = info(t, {"N": node()})
    assert (up.id, up.running, up.status, up.node) == ("S/a", True, "running", "n1")
    moving = info(t, {"N": node(state="down")})
    assert (moving.id, moving.running, moving.status, moving.node, moving.address) == ("S/@1", True, "moving", "", None)
    assert not SwarmRuntime.is_up(moving, age=60.0)
    crashed = info(task("a", "failed", "2026-01-01T00:00:00Z"), {"N": node()}, crashed=True)
    assert not crashed.running


def test_units_are_the_slots_a_service_still_wants():
    """Scale-in: Swarm no longer wants the slot it picked (desired remove or shutdown): not listed, so
    out of the router at once. A crash the loop is done with (acked) gives way to Swarm's restart."""
    t1 = task("a", "running", "2026-01-01T00:00:00Z", slot=1)
    t2 = task("b", "running", "2026-01-01T00:00:00Z", slot=2, desired="remove")
    t3 = task("c", "running", "2026-01-01T00:00:00Z", slot=3, desired="shutdown")
    assert _slots([t1, t2, t3], set()) == {1: [t1]}
    crashed = task("d", "failed", "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", slot=4, desired="shutdown")
    restart = task("e", "starting", "2026-01-01T00:00:05.1Z", slot=4, desired="ready")
    assert _slots([crashed, restart], set()) == {4: [crashed, restart]}
    assert current(_slots([crashed, restart], set())[4], {"N": node()}) == (crashed, True)
    assert _slots([crashed, restart], {"d"}) == {4: [restart]}
    assert current([restart], {"N": node()}) == (restart, False)
    assert _task("S/T") == "T" and _task("S/@3") == "" and _task("S") == ""


def test_a_slot_refilled_after_a_scale_in_is_no_failover_but_a_task_lost_with_its_node_is():
    scaled = task("a", "shutdown", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", desired="remove")
    refill = task("b", "running", "2026-01-01T00:05:00Z")
    assert _ended_before(scaled, refill)
    lost = task("c", "running", "2026-01-01T00:00:00Z", node_id="DEAD", desired="shutdown")
    assert not _ended_before(lost, refill)
    back = task("c", "shutdown", "2026-01-01T00:00:00Z", "2026-01-01T00:09:00Z", node_id="DEAD", desired="shutdown")
    assert not _ended_before(back, refill)


def test_service_names_fit_swarm():
    long = "bae-0123456789ab-" + "a" * 30 + "-" + "b" * 30 + "-web-v12-abcdef"
    assert len(_name(long)) == 63 and _name(long) != _name(long.replace("web", "wrk"))
    assert _name("bae-x-a-default-web-v1-abcdef") == "bae-x-a-default-web-v1-abcdef"


def test_runtime_setting_is_checked(tmp_path):
    path = tmp_path / "bae.toml"
    path.write_text('[scheduler]\nruntime = "k8s"\n')
    with pytest.raises(ConfigError, match="scheduler.runtime"):
        load(path)
    path.write_text('[scheduler]\nruntime = "swarm"\n[swarm]\nheartbeat = 2\n')
    assert load(path).swarm.heartbeat == 2.0


def test_registry_certificate_names_its_address_and_is_signed_by_the_kept_ca(tmp_path):
    from cryptography import x509

    _ca_and_cert(tmp_path, "10.213.7.1")
    ca = (tmp_path / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((tmp_path / "registry.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.213.7.1") in names.get_values_for_type(x509.IPAddress)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    _ca_and_cert(tmp_path, "10.0.0.9")  # a new address: a new certificate, the same CA
    assert (tmp_path / "ca.crt").read_bytes() == ca
    cert = x509.load_pem_x509_certificate((tmp_path / "registry.crt").read_bytes())
    assert "10.0.0.9" in cert.subject.rfc4514_string()


def n(nid, hostname, state="ready", availability="active", role="worker", labels=None) -> NodeInfo:
    return NodeInfo(nid, hostname, role, state, availability, "10.0.0.2", labels or {}, 1 << 30, 1.0,
                    os="linux", arch="x86_64")


CLUSTER = [n("abc123", "n1"), n("abd456", "n2", labels={"zone": "a"}), n("xyz789", "n3", state="down"),
           n("mgr000", "host", role="manager")]


def test_a_node_is_named_by_hostname_id_or_unique_id_prefix():
    assert pick_node(CLUSTER, "n2").id == "abd456"
    assert pick_node(CLUSTER, "abc123").hostname == "n1"
    assert pick_node(CLUSTER, "abc").hostname == "n1"
    assert pick_node(CLUSTER, "xy").hostname == "n3"
    # a machine that left (down) and joined again under its name: the live one
    assert pick_node([*CLUSTER, n("qqq111", "n3")], "n3").id == "qqq111"


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_node_name_is_refused_listing_the_nodes(name):
    with pytest.raises(Invalid) as err:
        pick_node(CLUSTER, name)
    assert "host, n1, n2, n3" in err.value.hint


def test_an_id_prefix_several_nodes_share_is_refused_naming_them():
    with pytest.raises(Invalid) as err:
        pick_node(CLUSTER, "ab")
    assert "names 2 nodes" in err.value.message and "n1 (id abc123" in err.value.message \
        and "n2 (id abd456" in err.value.message
    with pytest.raises(Invalid):  # two live nodes with one hostname: the id tells them apart
        pick_node([*CLUSTER, n("qqq111", "n1")], "n1")
    assert pick_node([*CLUSTER, n("qqq111", "n1")], "qqq").id == "qqq111"


def test_an_unknown_node_is_refused_listing_the_known_ones():
    with pytest.raises(NotFound) as err:
        pick_node(CLUSTER, "n9")
    assert "no node 'n9'" in err.value.message and "host, n1, n2, n3" in err.value.hint


def test_constraints_match_as_swarm_matches_them():
    n1, n2 = CLUSTER[0], CLUSTER[1]
    assert meets(n2, "node.labels.zone==a") and meets(n2, "node.labels.zone==A") and not meets(n1, "node.labels.zone==a")
    assert meets(n1, "node.labels.zone!=a") and not meets(n2, "node.labels.zone != a")  # no label: != holds
    assert meets(n1, "node.hostname==n1") and meets(n1, "node.role==worker") and not meets(n1, "node.role==manager")
    assert meets(n1, "node.id==abc123") and meets(n1, "node.platform.os==linux") and meets(n1, "node.platform.arch==x86_64")
    assert not meets(n1, "node.bogus==x") and not meets(n1, "zone=a")


def test_units_find_homes_on_ready_active_workers_only():
    assert [x.hostname for x in homes(CLUSTER, [])] == ["n1", "n2"]
    assert [x.hostname for x in homes(CLUSTER, ["node.labels.zone==a"])] == ["n2"]
    assert homes(CLUSTER, ["node.labels.zone==a"], besides="abd456") == []  # draining n2: nowhere else
    assert homes(CLUSTER, ["node.role==manager"]) == []  # units run on workers only
    assert homes(CLUSTER, ["node.hostname==n3"]) == []  # down
    paused = [n("abc123", "n1", availability="pause"), CLUSTER[1]]
    assert [x.hostname for x in homes(paused, [])] == ["n2"]
    assert describe(CLUSTER).startswith("n1 (worker, ready, active, no labels); n2 (worker, ready, active, zone=a)")


def test_one_off_service_names_fit_swarm():
    name = oneoff_name("0123456789abcdef", "a" * 30, "b" * 30, "release.1234")
    assert len(name) <= 63 and name.startswith("bae-0123456789abcdef-aaaa")
    assert oneoff_name("0123456789abcdef", "a" * 30, "b" * 30, "release.1234") != name  # unique per run
    assert len(oneoff_name("x", "a", "default", "run.1234")) < 63


def test_a_one_off_no_node_takes_says_what_swarm_says():
    pending = {"Status": {"State": "pending", "Message": "pending task scheduling",
                          "Err": "no suitable node (insufficient resources on 3 nodes)"}}
    err = _not_started(pending, 20)
    assert "did not start within 20 s" in err.message and "pending" in err.message
    assert "insufficient resources on 3 nodes" in err.message and "pending task scheduling" in err.message
    assert "`nodes`" in err.hint
    assert "not made (no task yet)" in _not_started(None, 20).message


def test_the_reachability_probe_connects_to_a_running_tasks_published_web_port():
    running = task("T", "running", "2026-01-01T00:00:00Z")
    running["Status"]["PortStatus"] = {"Ports": [{"TargetPort": 5000, "PublishedPort": 30001}]}
    assert _published(running, {"N": node()}) == ("10.0.0.2", 30001)
    assert _published(running, {}) is None  # a node the swarm no longer lists
    starting = task("T", "starting", "2026-01-01T00:00:00Z")
    assert _published(starting, {"N": node()}) is None


def test_a_host_that_refuses_answers_and_so_does_one_that_accepts():
    """A refusal comes from the node's kernel: the node is alive (only a crashed unit is behind it)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = listener.getsockname()
        assert _answers(address)
    assert _answers(address)  # closed now: refused


def test_a_node_is_unreachable_after_two_silent_rounds_and_reachable_once_it_answers():
    """Silence: a listener whose accept queue is full (the kernel drops new SYNs, as for a dead host)."""
    runtime = SwarmRuntime.__new__(SwarmRuntime)
    runtime._lock = threading.Lock()
    runtime._nodes = (0.0, {"N": NodeInfo("N", "n1", "worker", "ready", "active", "127.0.0.1", {}, 1 << 30, 1.0)})
    runtime._unreachable = set()
    misses: dict[str, int] = {}
    with ThreadPoolExecutor(2) as pool:
        with socket.socket() as listener, socket.socket() as queued:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            queued.connect(listener.getsockname())  # fills the queue: it is never accepted
            runtime._targets = {"N": {listener.getsockname()}}
            assert runtime._reach_round(pool, misses) == [] and misses == {"N": 1}
            changed = runtime._reach_round(pool, misses)
            assert [node for node, _ in changed] == ["N"] and "does not answer" in changed[0][1]
            assert runtime._unreachable == {"N"}
            assert runtime._reach_round(pool, misses) == []  # still silent: told once
        assert runtime._reach_round(pool, misses) == [("N", "answers again")]  # closed: refused by the host
    assert runtime._unreachable == set() and misses == {"N": 0}


def test_a_type_is_uneven_when_one_of_its_nodes_holds_two_more_units_than_another():
    places = [n("a1", "n1"), n("a2", "n2")]
    assert uneven({"n1": 4}, places)  # n2 just activated
    assert not uneven({"n1": 2, "n2": 1}, places)
    assert not uneven({"n1": 1}, places)  # web=1
    assert not uneven({"n1": 4}, places[:1])  # one node it may use
    assert not uneven({"n1": 2, "n2": 2, "n3": 5}, places)  # n3 is not a place (paused, or not meeting a constraint)
