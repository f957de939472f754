"""Restarts under load: `kill -9` of `bae serve`, a new router, `docker restart` of a unit.

End users must not notice any of them: the router outlives the control plane and
is adopted, a new router starts with every up unit, and a unit that comes back by
itself is the same unit (nothing healthy is stopped)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import docker
import pytest
import requests

from helpers import APPS, Load, Server, listening, make_repo, routed_units, wait_for

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 15, "stop_grace": 5}}


def deploy(srv: Server, tmp: Path, app: str, web: int):
    dev = srv.user("ops")
    srv.plain_app(dev, app)  # no build: the stack's python runs the app as it is
    src = tmp / app
    shutil.copytree(APPS / "pyweb", src)
    push = dev.push(make_repo(src, {}, "pyweb"), app)
    assert push.returncode == 0, push.stderr
    scale = dev.ssh("ps:scale", app, f"web={web}")
    assert scale.returncode == 0, scale.stderr
    host = f"{app}.bae.localhost"
    wait_for(lambda: routed(srv, host) == web, what=f"{web} units in the route table")
    return dev, host


def routed(srv: Server, host: str) -> int:
    return routed_units(srv.http_port, host)


def served_more(load: Load, count: int = 60) -> None:
    """Wait until the load loop got ``count`` more answers (proves traffic flowed meanwhile)."""
    target = load.ok + len(load.failures) + count
    wait_for(lambda: load.ok + len(load.failures) >= target, timeout=60, what=f"{count} more requests")


def report(load: Load, killed_in_flight: bool = False) -> None:
    """No request may fail. With ``killed_in_flight``, a unit was killed from outside (`docker restart`):
    a response it had begun when it died breaks off (nginx cannot send it elsewhere once it has passed
    the headers on); those are the operator's doing, reported but not counted."""
    broken = [f for f in load.failures if killed_in_flight and f.startswith("IncompleteRead while reading")]
    failed = [f for f in load.failures if f not in broken]
    print(f"{load.ok} requests succeeded, {load.resent} resent after a keep-alive close, "
          f"{len(broken)} broke off as their unit was killed, {len(failed)} failed")
    assert not failed, f"{len(failed)} requests failed: {failed[:5]}"


def unit_containers(srv: Server, app: str) -> dict[str, dict]:
    """unit name -> {id, started, status} of the app's web unit containers."""
    engine = docker.from_env(version="auto")
    instance = (srv.data / "instance-id").read_text().strip()
    found = {}
    for row in engine.api.containers(all=True, filters={"label": [f"bae.platform={instance}", f"bae.app={app}",
                                                                  "bae.process=web"]}):
        try:
            state = engine.api.inspect_container(row["Id"])["State"]
        except docker.errors.NotFound:  # removed while we looked
            continue
        name = f"web.{row['Labels']['bae.index']}"
        found.setdefault(name, []).append({"id": row["Id"], "started": state["StartedAt"], "status": row["State"]})
    return found


def test_kill_9_of_bae_serve_and_restart_cost_no_request(tmp_path):
    srv = Server(tmp_path, SETTINGS).start()
    try:
        dev, host = deploy(srv, tmp_path, "steady", web=2)
        (nginx,) = srv.router_pids()
        with Load(f"http://127.0.0.1:{srv.http_port}/", host, threads=4, rate=200) as load:
            served_more(load)
            os.kill(srv.proc.pid, signal.SIGKILL)  # the control plane only; nginx is not its to lose
            srv.proc.wait()
            served_more(load)  # the router goes on serving without bae serve
            srv.start()
            wait_for(lambda: f"adopted the running nginx (pid {nginx})" in srv.log(), what="the adoption")
            served_more(load)
            assert dev.ssh("ps:scale", "steady", "web=3").returncode == 0  # the adopted router follows changes
            wait_for(lambda: routed(srv, host) == 3, what="web.3 in the route table")
            served_more(load)
        report(load)
        assert srv.router_pids() == [nginx], "there must be exactly one nginx, the adopted one"
        after = srv.log().split("adopted the running nginx")[1]  # the second run's log
        adopted = after.split("web=3")[0]  # adopted units were up all along: never "up after 499.3 s"
        assert not re.search(r"steady: web\.[12] up after", adopted), adopted
        assert "Address already in use" not in srv.log()
        # a graceful stop leaves the router serving too; router:stop stops it
        assert srv.stop() == 0
        assert srv.router_pids() == [nginx] and routed(srv, host) == 3
        stopped = srv.bae("router:stop")
        assert stopped.returncode == 0 and "The router stopped" in stopped.stdout, stopped.stderr
        assert srv.router_pids() == []
        srv.start()  # and the next bae serve starts a new one
        assert len(srv.router_pids()) == 1 and routed(srv, host) == 3
        refused = srv.bae("router:stop")
        assert refused.returncode != 0 and "bae serve is running" in refused.stderr
    finally:
        srv.stop()
        srv.cleanup()
    assert "Traceback" not in srv.log()


def test_a_router_started_afresh_routes_every_up_unit_from_its_first_request(tmp_path):
    srv = Server(tmp_path, SETTINGS).start()
    try:
        _, host = deploy(srv, tmp_path, "fresh", web=2)
        os.killpg(srv.proc.pid, signal.SIGKILL)  # the machine lost both: bae serve and its nginx
        srv.proc.wait()
        for pid in srv.router_pids():
            workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for victim in [pid, *map(int, workers)]:
                os.kill(victim, signal.SIGKILL)
        # kill() returns before a process is gone: a worker that still holds the listening
        # socket would take the prober's first connection, then drop it as it exits
        wait_for(lambda: not srv.router_pids() and not listening(srv.http_port), what="nginx gone")
        statuses: list[int] = []
        done = threading.Event()

        def first_answers() -> None:  # from the moment the port accepts, the first answers must be 200
            while not done.is_set() and len(statuses) < 20:
                if not listening(srv.http_port, timeout=1):
                    time.sleep(0.01)
                    continue
                statuses.append(requests.get(f"http://127.0.0.1:{srv.http_port}/", headers={"Host": host},
                                             timeout=5).status_code)

        prober = threading.Thread(target=first_answers, daemon=True)
        prober.start()
        srv.start()
        prober.join(30)
        done.set()
        assert statuses and set(statuses) == {200}, f"the first answers of the new router: {statuses}"
        assert len(srv.router_pids()) == 1
    finally:
        srv.stop()
        srv.cleanup()
    assert "Traceback" not in srv.log()


def test_docker_restart_of_a_unit_stops_nothing_healthy(tmp_path):
    srv = Server(tmp_path, SETTINGS).start()
    try:
        dev, host = deploy(srv, tmp_path, "bounce", web=2)
        before = unit_containers(srv, "bounce")
        (web2,) = before["web.2"]
        engine = docker.from_env(version="auto")
        with Load(f"http://127.0.0.1:{srv.http_port}/", host, threads=4, rate=200) as load:
            served_more(load)
            for _ in range(2):
                (web1,) = [c for c in unit_containers(srv, "bounce")["web.1"] if c["status"] == "running"]
                try:
                    engine.api.restart(web1["id"], timeout=5)
                except docker.errors.NotFound:  # the scheduler replaced it before docker started it again
                    pass
                wait_for(lambda: routed(srv, host) == 2, what="both units routed again")
                wait_for(lambda: all(len(v) == 1 for v in unit_containers(srv, "bounce").values()),
                         what="one container per unit")
                served_more(load)
        report(load, killed_in_flight=True)
        after = unit_containers(srv, "bounce")
        assert sorted(after) == ["web.1", "web.2"]
        assert after["web.2"] == [web2], "web.2 was healthy and must not have been stopped or replaced"
        assert "web.2 (v1) stopping" not in srv.log()
    finally:
        srv.stop()
        srv.cleanup()
    assert "Traceback" not in srv.log()
