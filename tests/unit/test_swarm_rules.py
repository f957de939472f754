"""The swarm runtime's pure rules: which task stands for a unit (a slot of its process type's service),
crash, scale-in or lost with its node."""

from __future__ import annotations

import ipaddress

import pytest

from bae.config import load
from bae.errors import ConfigError
from scheduler.registry import _ca_and_cert
from scheduler.runtime_swarm import NodeInfo, SwarmRuntime, _ended_before, _exited, _name, _slots, _task


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
