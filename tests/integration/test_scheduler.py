"""Units on a real Docker Engine: deploy, scale, resize, heal, back off, adopt."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest
import requests

from helpers import APPS, Server, make_repo, wait_for

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 8, "stop_grace": 5, "backoff_reset": 60.0}}


def units(client, target) -> dict[str, dict]:
    """`ps` parsed: unit -> {state, release, plan, address, line}."""
    out = client.ssh("ps", target).stdout
    result = {}
    for line in out.splitlines():
        match = re.match(r"(\S+\.\d+)\s+(\w+) (\S+)(?: \((.*?)\))?\s+v(\d+)\s+(\S+)\s*(\S*)$", line)
        if match:
            result[match.group(1)] = {"state": match.group(2), "detail": match.group(4) or "",
                                      "release": int(match.group(5)), "plan": match.group(6),
                                      "address": match.group(7), "line": line}
    return result


def up(client, target, process="web"):
    return {k: v for k, v in units(client, target).items() if k.startswith(process + ".") and v["state"] == "up"}


def containers(server, **labels):
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    filters = [f"bae.platform={instance}", "bae.role=unit"] + [f"bae.{k}={v}" for k, v in labels.items()]
    found = []
    for row in engine.api.containers(all=True, filters={"label": filters}):
        try:
            found.append(engine.containers.get(row["Id"]))
        except docker.errors.NotFound:  # removed while we looked
            pass
    return found


def get(address, path="/"):
    return requests.get(f"http://{address}{path}", timeout=5)


def routed(server, host: str) -> bool:
    """Does the router send ``host`` to a unit (the scheduler handed it the app's endpoints)?"""
    try:
        return requests.get(f"http://127.0.0.1:{server.http_port}/", headers={"Host": host}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def answers(container) -> bool:
    """Does a unit's container accept connections on $PORT (as the scheduler probes it)?"""
    ip = next(iter(container.attrs["NetworkSettings"]["Networks"].values()), {}).get("IPAddress")
    try:
        with socket.create_connection((ip, 5000), timeout=1):
            return True
    except (OSError, TypeError):
        return False


def backoff(server, process: str) -> dict:
    """The stored crash backoff of a process type (what `ps` shows as "restarting in Ns")."""
    with sqlite3.connect(f"file:{server.data / 'bae.db'}?mode=ro", uri=True) as db:
        row = db.execute("select failures, not_before from backoff where process = ?", [process]).fetchone()
    return {"failures": row[0], "not_before": datetime.fromisoformat(row[1]).timestamp()} if row else {"failures": 0}


def pyweb(tmp_path: Path, name="pyweb", **changes) -> Path:
    src = tmp_path / name
    shutil.copytree(APPS / "pyweb", src)
    return make_repo(src, changes, "pyweb")




@pytest.fixture(scope="module")
def dev(server):
    return server.user("ops")


@pytest.fixture(scope="module")
def deployed(server, dev, tmp_path_factory):
    dev.ssh("apps:create", "sched")
    push = dev.push(pyweb(tmp_path_factory.mktemp("src")), "sched")
    assert push.returncode == 0, push.stderr
    return push


def test_deploy_runs_web_1_with_the_unit_contract(server, dev, deployed):
    log = deployed.stderr
    assert "Launching v1: web=1" in log and "web.1 up after" in log and "v1 is live" in log
    assert f"Launched v1: http://sched.bae.localhost:{server.http_port}/" in log
    web = up(dev, "sched")
    assert list(web) == ["web.1"] and web["web.1"]["release"] == 1 and web["web.1"]["plan"] == "s1"
    assert web["web.1"]["address"].startswith("127.0.0.1:")
    seen = get(web["web.1"]["address"]).json()
    assert seen["PORT"] == "5000" and seen["BAE_UNIT"] == "web.1" and seen["DYNO"] == "web.1"
    assert seen["BAE_APP"] == "sched" and seen["BAE_DEPLOYMENT"] == "default" and seen["uid"] == 1100
    assert seen["HOME"] == "/home/bae"
    assert "v1  deploy" in dev.ssh("releases", "sched").stdout and "current" in dev.ssh("releases", "sched").stdout
    # isolation: limits, no privileges, no Docker socket, port on loopback only
    (c,) = containers(server, app="sched", process="web")
    host = c.attrs["HostConfig"]
    assert host["Memory"] == 256 * 1024**2 and host["MemorySwap"] == 256 * 1024**2
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 256
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])
    assert all(b["HostIp"] == "127.0.0.1" for b in host["PortBindings"]["5000/tcp"])
    assert c.attrs["Config"]["Labels"]["bae.index"] == "1"
    check = c.exec_run(["bash", "-c", "touch /usr/x 2>&1; touch /etc/x 2>&1; touch /home/bae/ok /tmp/ok && echo writable;"
                        " ls /var/run/docker.sock 2>&1; cat /proc/1/cmdline | tr '\\0' ' '"], user="bae")
    out = check.output.decode()
    assert "'/usr/x': Permission denied" in out and "'/etc/x': Permission denied" in out and "writable" in out
    assert "No such file" in out and out.strip().endswith("/usr/bin/tini -g -- /usr/local/bin/bae-launch python3 app.py")
    # every place a unit can write is the one the README lists
    found = c.exec_run(["sh", "-c", "find / \\( -path /proc -o -path /sys \\) -prune -o -writable \\( -type d -o -type f \\)"
                        " -print 2>/dev/null; readlink /var/tmp"], user="bae").output.decode().split()
    roots = {p for p in found[:-1] if not any(p.startswith(q + "/") for q in found[:-1])}
    assert roots == {"/home/bae", "/tmp", "/dev/shm", "/dev/mqueue"} and found[-1] == "/tmp", roots
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    writable = readme[readme.index("only these places are writable"):][:400]
    assert all(f"`{place}`" in writable for place in roots | {"/var/tmp"}), writable


def test_scale_1_5_0_2_and_worker_without_port(server, dev, deployed):
    assert dev.ssh("ps:scale", "sched", "web=5").returncode == 0
    assert len(up(dev, "sched")) == 5
    addresses = {u["address"] for u in up(dev, "sched").values()}
    assert len(addresses) == 5 and all(get(a).json()["BAE_UNIT"].startswith("web.") for a in addresses)
    assert dev.ssh("ps:scale", "sched", "web=0").returncode == 0
    assert not units(dev, "sched")
    assert not containers(server, app="sched")
    result = dev.ssh("ps:scale", "sched", "web=2", "worker=1")
    assert result.returncode == 0, result.stderr
    assert sorted(up(dev, "sched")) == ["web.1", "web.2"]
    worker = up(dev, "sched", "worker")
    assert list(worker) == ["worker.1"] and worker["worker.1"]["address"] == ""
    (c,) = containers(server, app="sched", process="worker")
    assert not c.attrs["HostConfig"]["PortBindings"] and "PORT" not in str(c.attrs["Config"]["Env"])
    assert "worker.1 working" in c.logs().decode()


def test_scale_and_resize_refuse_bad_input(server, dev, deployed):
    cases = [
        (["ps:scale", "sched", "web=-1"], "is not a number of units"),
        (["ps:scale", "sched", "web=two"], "is not a number of units"),
        (["ps:scale", "sched", "web=21"], "more than the limit of 20 units"),
        (["ps:scale", "sched", "nope=1"], "has no process type 'nope'"),
        (["ps:scale", "sched", "web"], "is not TYPE=VALUE"),
        (["ps:scale", "sched"], "say what to change"),
        (["ps:scale", "sched", "web=1:xl9"], "no plan named 'xl9'"),
        (["ps:resize", "sched", "web=huge"], "no plan named 'huge'"),
        (["ps:restart", "sched", "nope"], "has no process type 'nope'"),
        (["ps", "nope"], "no app named 'nope'"),
    ]
    for args, message in cases:
        result = dev.ssh(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    plans = dev.ssh("plans").stdout
    assert "s1" in plans and "256 MB" in plans and "(default)" in plans and "m1" in plans and "1 GB" in plans


def test_resize_changes_the_memory_limit(server, dev, deployed):
    before = {c.id for c in containers(server, app="sched", process="web")}
    result = dev.ssh("ps:resize", "sched", "web=m1")
    assert result.returncode == 0, result.stderr
    after = containers(server, app="sched", process="web")
    assert len(after) == 2 and not before & {c.id for c in after}
    assert all(c.attrs["HostConfig"]["Memory"] == 1024**3 for c in after)
    assert all(u["plan"] == "m1" for u in up(dev, "sched").values())
    assert dev.ssh("ps:resize", "sched", "web=s1").returncode == 0


def test_kill_9_and_docker_rm_f_are_healed(server, dev, deployed):
    dev.ssh("ps:scale", "sched", "web=2")
    (victim,) = containers(server, app="sched", process="web", index="1")
    pid = victim.attrs["State"]["Pid"]
    app_pid = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
    Path(f"/proc/{app_pid}").exists()
    os.kill(int(app_pid), signal.SIGKILL)
    wait_for(lambda: [c for c in containers(server, app="sched", process="web", index="1")
                      if c.id != victim.id and c.status == "running"], what="a replacement for web.1")
    wait_for(lambda: len(up(dev, "sched")) == 2, what="two web units up")
    (other,) = containers(server, app="sched", process="web", index="2")
    other.remove(force=True)
    wait_for(lambda: [c for c in containers(server, app="sched", process="web", index="2") if c.id != other.id],
             what="a replacement for web.2")
    wait_for(lambda: len(up(dev, "sched")) == 2, what="two web units up again")
    assert "web.1 crashed (exit 137), restarting now" in server.log()


def test_crash_loop_backs_off_without_touching_other_deployments(server, dev, deployed):
    web_before = {c.id for c in containers(server, app="sched", process="web")}
    assert dev.ssh("ps:scale", "sched", "crasher=1", "--no-wait").returncode == 0
    line = wait_for(lambda: [u for u in units(dev, "sched").values()
                             if u["line"].startswith("crasher.1") and "restarting in" in u["detail"]],
                    timeout=30, what="backoff shown in ps")
    assert "exit 3" in line[0]["detail"]
    log = server.log()
    assert "crasher.1 crashed (exit 3), restarting now" in log
    assert re.search(r"crasher\.1 crashed \(exit 3\), restarting in [1-9]\d*s", log)
    assert {c.id for c in containers(server, app="sched", process="web")} == web_before
    assert all(get(u["address"]).status_code == 200 for u in up(dev, "sched").values())
    assert dev.ssh("ps:scale", "sched", "crasher=0").returncode == 0
    wait_for(lambda: not containers(server, app="sched", process="crasher"), what="crasher gone")


def test_memory_hog_is_reported_as_oom(server, dev, deployed):
    assert dev.ssh("ps:scale", "sched", "hog=1", "--no-wait").returncode == 0
    wait_for(lambda: "hog.1 exceeded its 256 MB memory limit" in server.log(), timeout=40, what="an OOM report")
    shown = wait_for(lambda: [u for u in units(dev, "sched").values()
                              if u["line"].startswith("hog.") and "exceeded its 256 MB memory limit" in u["detail"]],
                     timeout=20, what="OOM in ps")
    assert shown
    assert dev.ssh("ps:scale", "sched", "hog=0").returncode == 0


def test_never_binding_port_refuses_the_deploy_and_keeps_the_old_release(server, dev, deployed, tmp_path):
    old = {c.id for c in containers(server, app="sched", process="web")}
    addresses = [u["address"] for u in up(dev, "sched").values()]
    clone = tmp_path / "clone"
    dev.git("clone", "-q", dev.url("sched"), str(clone))
    procfile = (clone / "Procfile").read_text().replace("web: python3 app.py", "web: sleep 600")
    push = dev.push(make_repo(clone, {"Procfile": procfile}, "forgets to bind"), "sched")
    assert push.returncode != 0
    assert re.search(r"web\.\d never accepted connections on \$PORT", push.stderr)
    assert "A web process must listen on 0.0.0.0:$PORT within 8 s" in push.stderr
    assert re.search(r"\[remote rejected\] master -> master \(web\.\d never accepted connections on \$PORT\)", push.stderr)
    assert old <= {c.id for c in containers(server, app="sched", process="web")}
    wait_for(lambda: {c.id for c in containers(server, app="sched", process="web")} == old,
             what="the failed release's units to go, and only them")
    assert all(get(a).json()["version"] == "one" for a in addresses)
    releases = dev.ssh("releases", "sched").stdout
    assert re.search(r"failed: web\.\d never accepted connections on \$PORT", releases)
    assert re.search(r"v1\s+deploy \w+\s+ops.*current", releases)


def test_a_good_deploy_replaces_units_and_restart_works(server, dev, deployed, tmp_path):
    clone = tmp_path / "clone"
    dev.git("clone", "-q", dev.url("sched"), str(clone))
    code = (clone / "app.py").read_text().replace('VERSION = "one"', 'VERSION = "two"')
    push = dev.push(make_repo(clone, {"app.py": code}, "v two"), "sched")
    assert push.returncode == 0, push.stderr
    new = up(dev, "sched")
    assert len(new) == 2 and {u["release"] for u in new.values()} == {3}
    assert {get(u["address"]).json()["version"] for u in new.values()} == {"two"}
    wait_for(lambda: "worker.1" in up(dev, "sched", "worker"), what="worker.1 (the formation survives deploys)")
    ids = {c.id for c in containers(server, app="sched", process="web")}
    assert dev.ssh("ps:restart", "sched", "web").returncode == 0
    assert not ids & {c.id for c in containers(server, app="sched", process="web")}
    assert len(up(dev, "sched")) == 2


def test_restarting_bae_serve_adopts_units_and_heals_what_died_meanwhile(tmp_path):
    srv = Server(tmp_path, SETTINGS).start()
    try:
        dev = srv.user("adopt")
        dev.ssh("apps:create", "adopted")
        assert dev.push(pyweb(tmp_path), "adopted").returncode == 0
        assert dev.ssh("ps:scale", "adopted", "web=2").returncode == 0
        before = {c.id: c.attrs["State"]["StartedAt"] for c in containers(srv, app="adopted")}
        assert srv.stop() == 0
        assert {c.id for c in containers(srv, app="adopted") if c.status == "running"} == set(before)
        srv.start()
        wait_for(lambda: routed(srv, "adopted.bae.localhost"), what="a reconcile pass after the restart")
        after = {c.id: c.attrs["State"]["StartedAt"] for c in containers(srv, app="adopted")}
        assert after == before, "units were restarted or duplicated"
        assert len(up(dev, "adopted")) == 2
        assert srv.stop() == 0
        victim = containers(srv, app="adopted")[0]
        victim.kill()
        srv.start()
        wait_for(lambda: len(up(dev, "adopted")) == 2 and victim.id not in {c.id for c in containers(srv, app="adopted")},
                 what="the unit that died while bae was down to be replaced")
    finally:
        srv.stop()
        srv.cleanup()


def test_crash_backoff_and_rollout_progress_survive_a_restart(tmp_path):
    srv = Server(tmp_path, {"scheduler": {**SETTINGS["scheduler"], "rollout_batch": 1}}).start()
    try:
        dev = srv.user("keeper")
        dev.ssh("apps:create", "keep")
        assert dev.push(pyweb(tmp_path), "keep").returncode == 0
        # a crash loop: each crash doubles the wait; the sixth waits 16 s
        assert dev.ssh("ps:scale", "keep", "crasher=1", "--no-wait").returncode == 0
        counted = wait_for(lambda: backoff(srv, "crasher")["failures"] >= 6 and backoff(srv, "crasher"), timeout=90,
                           what="six crashes in a row")
        assert srv.stop() == 0
        srv.start()
        wait_for(lambda: routed(srv, "keep.bae.localhost"), what="a reconcile pass after the restart")
        assert backoff(srv, "crasher") == counted, "the restart forgot the backoff or counted a crash again"
        again = wait_for(lambda: backoff(srv, "crasher")["failures"] > counted["failures"] and time.time(),
                         timeout=60, what="the next crash")
        assert again >= counted["not_before"] - 0.5, "the crasher was restarted before its backoff ran out"
        assert dev.ssh("ps:scale", "keep", "crasher=0").returncode == 0

        # a rolling restart, one web unit at a time, interrupted by a restart of bae serve
        assert dev.ssh("ps:scale", "keep", "web=3").returncode == 0
        old = {c.id for c in containers(srv, app="keep", process="web")}
        assert dev.ssh("ps:restart", "keep", "web", "--no-wait").returncode == 0

        def new_up():  # the new units that answer on $PORT
            return {c.id for c in containers(srv, app="keep", process="web")
                    if c.labels["bae.generation"] == "1" and answers(c)}

        first = wait_for(new_up, what="the first new unit up")
        assert srv.stop() == 0
        srv.start()
        wait_for(lambda: len([c for c in containers(srv, app="keep", process="web")
                              if c.labels["bae.generation"] == "1"]) == 3 and len(up(dev, "keep")) == 3
                 and not old & {c.id for c in containers(srv, app="keep", process="web")},
                 timeout=90, what="the rollout to finish after the restart")
        assert first <= {c.id for c in containers(srv, app="keep", process="web")}, "a new unit was replaced again"
    finally:
        srv.stop()
        srv.cleanup()


def test_a_config_change_lands_on_every_deployment_or_on_none(server, dev, tmp_path):
    dev.ssh("apps:create", "pair")
    dev.ssh("deployments:create", "pair", "second")
    src = pyweb(tmp_path)
    assert dev.push(src, "pair").returncode == 0
    assert dev.push(src, "pair/second").returncode == 0
    result = dev.ssh("config:set", "pair", "FAIL_ON=second")  # the second deployment's units refuse to start
    assert result.returncode != 0
    assert "pair/second:" in result.stderr and "The config change was undone" in result.stderr, result.stderr
    assert dev.ssh("config:get", "pair", "FAIL_ON").returncode != 0
    releases = dev.ssh("releases", "pair").stdout.splitlines()
    assert "undo set FAIL_ON" in releases[0] and "current" in releases[0], releases
    assert "set FAIL_ON" in releases[1], releases
    assert all(get(u["address"], "/env/FAIL_ON").json()["value"] is None for u in up(dev, "pair").values())
    assert up(dev, "pair") and up(dev, "pair/second")
    assert "failed" in dev.ssh("releases", "pair/second").stdout.splitlines()[0]
