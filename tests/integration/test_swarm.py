"""The swarm runtime on a real multi-node cluster on this machine (tests/cluster.py).

One cluster per test run (the ``cluster`` session fixture) and one `bae serve` for
this module with ``scheduler.runtime = "swarm"``. The tests build on each other in
order: deploy web=4 over two nodes (one service, four tasks), the registry refusing anyone but the
platform, an add-on reached from units on both nodes (and not from another app's), kill a node under
load, drain and activate, pin with a label, add a third node from `nodes:join-token`, restart `bae serve`
(the registry adopted), kill the registry (started again), a node pulling with the service's login while
`bae serve` is down, scale in under load, prune old release images on the nodes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import requests
import tomli_w

from helpers import APPS, BAE, Load, Server, make_repo, run, wait_for

pytestmark = pytest.mark.integration

REGISTRY_DIR = "/var/tmp/bae-test-registry"  # shared by test runs: the stack's layers are pushed once per machine
REGISTRY_PORT = 45213  # fixed with the cluster's subnet, so the host's engine knows which layers it pushed before


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("bae-swarm"), {
        "scheduler": {"runtime": "swarm", "boot_timeout": 120, "stop_grace": 3, "interval": 1.0, "keep_releases": 1},
        "swarm": {"registry_port": REGISTRY_PORT, "registry_dir": REGISTRY_DIR, "heartbeat": 2.0},
    })
    srv.cluster = cluster
    srv.start(timeout=60)
    try:
        yield srv
    finally:
        srv.stop()
        stopped = srv.bae("registry:stop")  # it outlives bae serve
        srv.cleanup()
        assert stopped.returncode == 0 and not registry_pids(), stopped.stdout + stopped.stderr
        log = srv.log()
        assert "Traceback" not in log, f"the server logged a traceback:\n{log[-5000:]}"


@pytest.fixture(scope="module")
def dev(server):
    return server.user("ops", admin=True)


def trust_registry(server, cluster) -> None:
    """What an operator does once per node: install the registry's CA (nodes:join-token prints how)."""
    out = server.bae("nodes:join-token", check=True).stdout
    registry = re.search(r"certs\.d/(\S+?)\s", out).group(1)
    ca = re.search(r"(-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----)", out, re.S).group(1)
    cluster.trust(registry, ca.encode() + b"\n")


def units(client, target) -> dict[str, dict]:
    """`ps` parsed: unit -> {state, node, line}."""
    out = client.ssh("ps", target).stdout
    result = {}
    for line in out.split("=== failovers")[0].splitlines():
        match = re.match(r"(\S+\.\d+)\s+(\w+)\b.*?\bon (\S+)$", line)
        if match:
            result[match.group(1)] = {"state": match.group(2), "node": match.group(3), "line": line}
    return result


def web_up(client, target) -> dict[str, str]:
    return {u: v["node"] for u, v in units(client, target).items() if u.startswith("web.") and v["state"] == "up"}


@pytest.fixture(scope="module")
def app(server, dev, tmp_path_factory):
    trust_registry(server, server.cluster)
    server.plain_app(dev, "fleet")
    src = tmp_path_factory.mktemp("src") / "pyweb"
    shutil.copytree(APPS / "pyweb", src)
    (src / "requirements.txt").unlink()
    push = dev.push(make_repo(src, {}, "pyweb"), "fleet", timeout=1200)
    assert push.returncode == 0, push.stdout + push.stderr
    return "fleet"


def unit_containers(cluster, app) -> dict[str, list[str]]:
    """node -> ids of the app's unit containers running in that node's engine."""
    found = {}
    for node in cluster.nodes:
        if cluster.node_state(node) != "ready":
            continue  # a killed node
        code, out = cluster.exec(node, "docker", "ps", "-q", "--filter", f"label=bae.app={app}",
                                 "--filter", "label=bae.role=unit", check=False)
        if code == 0 and out.split():
            found[node] = out.split()
    return found


# Run inside a unit (as its user, with its environment): AUTH and INCR on the app's Redis add-on
# by its REDIS_URL, the way an app connects (the add-on's name, from /etc/hosts).
REDIS_INCR = """
import os, socket, urllib.parse
url = urllib.parse.urlparse(os.environ["REDIS_URL"])
conn = socket.create_connection((url.hostname, url.port), 5)
conn.sendall(f"AUTH {url.password}\\r\\nINCR visits\\r\\n".encode())
data = b""
while data.count(b"\\r\\n") < 2:
    data += conn.recv(100)
print(" ".join(data.decode().split()))
"""


REDIS_PING = """
import socket
try:
    conn = socket.create_connection(("ADDRESS", 6379), 3)
    conn.settimeout(3)
    conn.sendall(b"PING\\r\\n")
    print(conn.recv(100))
except OSError as exc:
    print("no answer:", exc)
"""


def incr_from_every_unit(cluster, app) -> dict[str, list[int]]:
    """node -> the counter each of the app's units there got back from its add-on."""
    counts = {}
    for node, cids in unit_containers(cluster, app).items():
        for cid in cids:
            code, out = cluster.exec(node, "docker", "exec", cid, "python3", "-c", REDIS_INCR, check=False)
            assert code == 0 and out.startswith("+OK :"), f"unit {cid} on {node}: {out}"
            counts.setdefault(node, []).append(int(out.split(":")[1]))
    return counts


def load(server, app):
    return Load(f"http://127.0.0.1:{server.router_port}/", f"{app}.bae.localhost", threads=2, rate=40)


def test_web_4_spreads_over_the_nodes(server, dev, app):
    server.router_port = server.http_port
    assert dev.ssh("ps:scale", app, "web=4").returncode == 0
    placed = wait_for(lambda: (lambda u: u if len(u) == 4 else None)(web_up(dev, app)), 300, what="web=4 up")
    assert set(placed.values()) == {"n1", "n2"}, placed
    nodes = dev.ssh("nodes").stdout
    assert re.search(r"n1\s+ready\s+active", nodes) and re.search(r"n2\s+ready\s+active", nodes), nodes


def test_node_commands_refuse_bad_input_and_change_nothing(server, dev, app):
    """An empty name, an unknown node, an id prefix several nodes share, a constraint no worker meets:
    refused with what was wrong and how to fix it, before anything changes."""
    before = [s["ID"] for s in web_services(server.cluster, app)]
    empty = dev.ssh("nodes:drain", "''")  # quoted for the remote command line (ssh joins its words)
    assert empty.returncode != 0 and "give a node" in empty.stderr and "n1, n2" in empty.stderr, empty.stderr
    unknown = dev.ssh("nodes:drain", "nosuch")
    assert unknown.returncode != 0 and "no node 'nosuch'" in unknown.stderr and "n1, n2" in unknown.stderr, unknown.stderr
    assert "give a node" in dev.ssh("nodes:label", "''", "zone=b").stderr
    ids = [n["ID"] for n in server.cluster.engine.api.nodes()]
    shared = max((os.path.commonprefix([a, b]) for a in ids for b in ids if a != b), key=len, default="")
    if shared:  # node ids are random: two may share a first character or more
        ambiguous = dev.ssh("nodes:drain", shared)
        assert ambiguous.returncode != 0 and re.search(r"names \d nodes: ", ambiguous.stderr), ambiguous.stderr
    else:
        print("no two node ids share a prefix here: the ambiguous-prefix case is left to the unit tests")
    nowhere = dev.ssh("ps:place", app, "web", "node.labels.nosuch==x")
    assert nowhere.returncode != 0 and "no ready, active worker node meets node.labels.nosuch==x" in nowhere.stderr \
        and "n1 (worker, ready, active, no labels)" in nowhere.stderr, nowhere.stderr
    manager = dev.ssh("ps:place", app, "web", "node.role==manager")
    assert manager.returncode != 0 and "units run on worker nodes only" in manager.stderr, manager.stderr
    for result in (empty, unknown, nowhere, manager):
        assert "Traceback" not in result.stderr + result.stdout
    nodes = dev.ssh("nodes").stdout
    assert re.search(r"n1\s+ready\s+active", nodes) and re.search(r"n2\s+ready\s+active", nodes), nodes
    assert [s["ID"] for s in web_services(server.cluster, app)] == before  # no new generation


def registry_pid() -> int:
    return int((Path(REGISTRY_DIR) / "registry.pid").read_text())


def registry_pids() -> list[int]:
    """Running docker-registry processes serving the test registry's configuration."""
    config = f"{REGISTRY_DIR}/config.yml".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 3 and argv[1:3] == [b"serve", config]:
            found.append(int(entry.name))
    return found


def registry_name(server) -> str:
    """ADDRESS:PORT of the platform's registry, as the services name their image."""
    return web_services(server.cluster, "fleet")[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("/")[0]


def registry_get(server, path: str, auth=None) -> requests.Response:
    """GET on the platform's registry from the host, trusting its CA."""
    return requests.get(f"https://{registry_name(server)}{path}", auth=auth, verify=f"{REGISTRY_DIR}/ca.crt",
                        timeout=10)


def platform_login() -> tuple[str, str]:
    return "bae", (Path(REGISTRY_DIR) / "password").read_text().strip()


def web_services(cluster, app) -> list[dict]:
    return cluster.engine.api.services(filters={"label": ["bae.app=" + app, "bae.role=unit", "bae.process=web"]})


def test_a_process_type_is_one_service_whose_tasks_are_the_units(server, dev, app):
    """web=4 is one replicated service with 4 tasks; the task slot is the unit's index (BAE_UNIT, DYNO)."""
    cluster = server.cluster
    services = web_services(cluster, app)
    assert len(services) == 1, [s["Spec"]["Name"] for s in services]
    assert services[0]["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
    tasks = cluster.engine.api.tasks(filters={"service": services[0]["ID"], "desired-state": "running"})
    assert sorted(t["Slot"] for t in tasks) == [1, 2, 3, 4], tasks
    seen = set()
    for node, cids in unit_containers(cluster, app).items():
        for cid in cids:
            code, out = cluster.exec(node, "docker", "exec", cid, "sh", "-c", "echo $BAE_UNIT $DYNO $(hostname)")
            assert code == 0, out
            unit, dyno, hostname = out.split()
            assert unit == dyno and hostname == unit.replace(".", "-"), out
            seen.add(unit)
    assert seen == {"web.1", "web.2", "web.3", "web.4"}, seen


def test_a_node_the_router_cannot_reach_leaves_the_router_before_swarm_declares_it_down(server, dev, app):
    """The host's new connections to n1 are dropped (a partition between the router and a node that
    Swarm, whose heartbeats the node sends, still sees ready): the runtime's probe of n1's units marks
    it unreachable, its units leave the router, requests keep being answered by n2's; once n1 answers
    again its units come back."""
    cluster = server.cluster
    before = web_up(dev, app)
    assert set(before.values()) == {"n1", "n2"}, before
    address = cluster._node("n1")["Status"]["Addr"]
    rule = ["OUTPUT", "-d", address, "-p", "tcp", "--syn", "-j", "DROP"]
    on_n2 = {u for u, n in before.items() if n == "n2"}
    with load(server, app) as traffic:
        wait_for(lambda: traffic.ok > 20, 30, what="traffic")
        subprocess.run(["iptables", "-I", *rule], check=True)
        try:
            wait_for(lambda: re.search(r"n1\s+unreachable", dev.ssh("nodes").stdout), 60, what="n1 unreachable")
            wait_for(lambda: set(web_up(dev, app)) == on_n2, 30, what="only n2's units up")
            assert f"{address}:" not in (server.data / "router" / "nginx.conf").read_text(), "n1's units still routed"
            assert cluster.node_state("n1") == "ready"  # Swarm still sees it: nothing was re-placed
            served = traffic.ok
            wait_for(lambda: traffic.ok > served + 20, 30, what="traffic while n1 is out")
        finally:
            subprocess.run(["iptables", "-D", *rule], check=True)
        wait_for(lambda: web_up(dev, app) == before, 60, what="n1's units back")
    print(f"router-to-node partition: {traffic.ok} ok, {traffic.resent} resent, {len(traffic.failures)} failed:",
          traffic.failures[:5])
    assert traffic.failures == [], traffic.failures[:10]
    assert re.search(r"n1\s+ready", dev.ssh("nodes").stdout)


def test_the_registry_answers_the_platform_only(server, dev, app):
    """Anyone on the nodes' network reaching the registry: no login, a wrong one, a node's engine of its
    own (its units pull with the login Swarm hands over with each task) are refused."""
    assert registry_get(server, "/v2/_catalog").status_code == 401
    assert registry_get(server, "/v2/_catalog", auth=("bae", "guess")).status_code == 401
    assert registry_get(server, "/v2/_catalog", auth=("admin", platform_login()[1])).status_code == 401
    listed = registry_get(server, "/v2/_catalog", auth=platform_login())
    assert listed.status_code == 200, listed.text
    repository = next(r for r in listed.json()["repositories"] if r.endswith(f"/{app}/default"))
    tags = registry_get(server, f"/v2/{repository}/tags/list", auth=platform_login()).json()["tags"]
    code, out = server.cluster.exec("n1", "docker", "pull", f"{registry_name(server)}/{repository}:{tags[0]}",
                                    check=False)
    assert code != 0 and "no basic auth credentials" in out, out
    password = platform_login()[1]
    assert password not in server.log() and password not in dev.ssh("nodes:join-token").stdout
    assert oct(os.stat(f"{REGISTRY_DIR}/password").st_mode & 0o777) == "0o600"


def test_an_addon_on_the_manager_is_reached_from_units_on_every_node_and_not_by_other_apps(server, dev, app):
    """The add-on stays a container on the manager (its data is there); the app's overlay network
    brings it to the app's units on every node; another app's units are not on that network."""
    cluster = server.cluster
    server.plain_app(dev, "cache")
    created = dev.ssh("addons:create", "cache", "redis")
    assert created.returncode == 0, created.stdout + created.stderr
    src = server.tmp / "cache-src"
    shutil.copytree(APPS / "pyweb", src)
    (src / "requirements.txt").unlink()
    push = dev.push(make_repo(src, {}, "pyweb"), "cache", timeout=1200)
    assert push.returncode == 0, push.stdout + push.stderr
    for quantity in (2, 3, 4):  # Swarm spreads new units over the nodes, but may put two on one
        assert dev.ssh("ps:scale", "cache", f"web={quantity}").returncode == 0
        placed = wait_for(lambda: (lambda u: u if len(u) == quantity else None)(web_up(dev, "cache")), 300,
                          what=f"cache web={quantity}")
        if set(placed.values()) == {"n1", "n2"}:
            break
    assert set(placed.values()) == {"n1", "n2"}, placed
    counts = incr_from_every_unit(cluster, "cache")
    assert set(counts) == {"n1", "n2"} and sorted(sum(counts.values(), [])) == list(range(1, quantity + 1)), counts
    server.cache_units = quantity

    addon = [c for c in cluster.engine.api.containers(filters={"label": ["bae.role=addon", "bae.app=cache"]})]
    assert len(addon) == 1, addon  # on the manager's engine
    address = addon[0]["Labels"]["bae.ip"]
    # a Redis answer, not only a TCP connection: outbound connections may be accepted by whatever
    # routes the machine's traffic (a proxy here accepts any)
    ping = REDIS_PING.replace("ADDRESS", address)
    for node, cids in unit_containers(cluster, "cache").items():
        code, out = cluster.exec(node, "docker", "exec", cids[0], "python3", "-c", ping, check=False)
        assert "NOAUTH" in out, (node, out)  # the add-on itself, asking for its password
    others = unit_containers(cluster, app)
    assert set(others) == {"n1", "n2"}, others
    for node, cids in others.items():  # the other app's units, on both nodes
        code, out = cluster.exec(node, "docker", "exec", cids[0], "python3", "-c", ping, check=False)
        assert code == 0 and "NOAUTH" not in out and "PONG" not in out, (node, out)
        code, out = cluster.exec(node, "docker", "exec", cids[0], "getent", "hosts", "redis-1", check=False)
        assert code != 0, (node, out)


def test_a_one_off_unit_runs_on_a_node_and_returns_its_exit_code(server, dev, app):
    result = dev.ssh("run", app, "echo ran as $BAE_UNIT on $(hostname); exit 3")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "ran as run." in result.stdout, result.stdout
    services = server.cluster.engine.api.services(filters={"label": ["bae.app=" + app, "bae.role=oneoff"]})
    assert services == []  # removed once it ended


def huge_plan_env(server) -> dict:
    """The environment of a local `bae` whose settings (over the server's data) make one-off units ask for
    more memory than any node has (the default plan) and give them a boot timeout of 15 s."""
    config = tomllib.loads(server.config.read_text())
    config["scheduler"].update(boot_timeout=15, default_plan="huge")
    config["plans"] = {"s1": {"memory": "256m", "cpu": 0.5, "pids": 256},
                       "huge": {"memory": "4096g", "cpu": 0.5, "pids": 256}}
    other = server.tmp / "huge.toml"
    other.write_text(tomli_w.dumps(config))
    return {**server.env, "BAE_CONFIG": str(other)}


def test_a_one_off_unit_no_node_can_take_fails_within_the_boot_timeout(server, dev, app):
    """A plan larger than any node (here the default plan, which one-off units use, of a second settings
    file over the same data, with a short boot timeout) leaves the task pending: `run` gives up after
    scheduler.boot_timeout with Swarm's reason, and its service is removed."""
    started = time.monotonic()
    result = run(BAE + ["run", app, "--", "echo", "never"], env=huge_plan_env(server), input="", timeout=120)
    took = time.monotonic() - started
    assert result.returncode != 0 and "never" not in result.stdout, result.stdout + result.stderr
    assert "did not start within 15 s" in result.stderr and "insufficient resources" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and took < 60, (took, result.stderr)
    services = server.cluster.engine.api.services(filters={"label": ["bae.app=" + app, "bae.role=oneoff"]})
    assert services == []


def test_a_node_dies_under_load_and_its_units_run_elsewhere(server, dev, app):
    before = web_up(dev, app)
    lost = sorted(u for u, n in before.items() if n == "n1")
    assert lost, before
    with load(server, app) as traffic:
        wait_for(lambda: traffic.ok > 20, 30, what="traffic")
        server.cluster.kill("n1")
        after = wait_for(lambda: (lambda u: u if len(u) == 4 and set(u.values()) == {"n2"} else None)(
            web_up(dev, app)), 120, what="all web units on n2")
        served = traffic.ok
        wait_for(lambda: traffic.ok > served + 20, 30, what="traffic after the failover")
    print(f"failover under load: {traffic.ok} ok, {traffic.resent} resent, {len(traffic.failures)} failed:",
          traffic.failures[:5])
    assert after.keys() == before.keys()
    assert traffic.failures == [], traffic.failures[:10]
    ps = dev.ssh("ps", app).stdout
    # a replacement task that fails to start on n2 (seen once: exit 128 from the nested engine) is a crash
    # the scheduler restarts as a new unit, whose service has no history: not every unit need be listed
    moved = [u for u in lost if re.search(rf"{re.escape(u)} lost with node n1 at \S+, running on n2 at \S+", ps)]
    assert moved, ps
    logs = dev.ssh("logs", app, "-n", "200").stdout
    for unit in lost:
        assert f"{unit} lost with node n1" in logs, logs[-2000:]


def test_units_moved_off_the_dead_node_reach_their_addon_and_its_data(server, dev, app):
    n = server.cache_units
    wait_for(lambda: (lambda u: u if len(u) == n and set(u.values()) == {"n2"} else None)(
        web_up(dev, "cache")), 120, what="every cache unit on n2")
    counts = incr_from_every_unit(server.cluster, "cache")
    assert set(counts) == {"n2"} and sorted(sum(counts.values(), [])) == list(range(n + 1, 2 * n + 1)), counts
    # n2 is the only worker left: draining it would stop its units for good
    last = dev.ssh("nodes:drain", "n2")
    assert last.returncode != 0 and "no other ready, active worker node can take them" in last.stderr, last.stderr
    assert re.search(r"n2\s+ready\s+active", dev.ssh("nodes").stdout)


def test_units_run_without_new_privileges(server, dev, app):
    """Set by the platform (setpriv in the unit's entrypoint): the manager's Engine stores no such field."""
    result = dev.ssh("run", app, "grep NoNewPrivs /proc/self/status; id -un")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"NoNewPrivs:\s+1", result.stdout) and "bae" in result.stdout, result.stdout


def test_drain_and_activate_move_units_without_failed_requests(server, dev, app):
    server.cluster.revive("n1")
    wait_for(lambda: re.search(r"n1\s+ready", dev.ssh("nodes").stdout), 120, what="n1 back")
    with load(server, app) as traffic:
        assert dev.ssh("nodes:drain", "n2").returncode == 0
        wait_for(lambda: (lambda u: u if len(u) == 4 and set(u.values()) == {"n1"} else None)(
            web_up(dev, app)), 180, what="all web units on n1")
        drained = wait_for(lambda: (lambda s: s if len(s) == 1 else None)(web_services(server.cluster, app)), 60,
                           what="one web service")[0]["ID"]
        activated = dev.ssh("nodes:activate", "n2")
        assert activated.returncode == 0, activated.stdout + activated.stderr
        assert f"{app} web" in activated.stdout, activated.stdout  # 4 on n1, 0 on n2: moved back
        assert re.search(r"n2\s+ready\s+active", dev.ssh("nodes").stdout)
        services = wait_for(lambda: (lambda s: s if len(s) == 1 and s[0]["ID"] != drained else None)(
            web_services(server.cluster, app)), 180, what="the new web service alone")
        wait_for(lambda: (lambda u: u if len(u) == 4 and set(u.values()) == {"n1", "n2"} else None)(
            web_up(dev, app)), 60, what="web units on both nodes again")
        served = traffic.ok
        wait_for(lambda: traffic.ok > served + 20, 30, what="traffic after moving back")
    print(f"drain and activate: {traffic.ok} ok, {traffic.resent} resent, {len(traffic.failures)} failed:",
          traffic.failures[:5])
    assert services[0]["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
    again = dev.ssh("nodes:activate", "n2")  # already spread: nothing moves
    assert again.returncode == 0 and "spread evenly" in again.stdout + again.stderr, again.stdout + again.stderr
    assert traffic.failures == [], traffic.failures[:10]


def test_label_and_placement_constraint(server, dev, app):
    assert dev.ssh("nodes:label", "n2", "zone=a").returncode == 0
    assert "zone=a" in dev.ssh("nodes").stdout
    bad = dev.ssh("ps:place", app, "web", "zone=a")
    assert bad.returncode != 0 and "node.labels.zone==a" in bad.stderr, bad.stderr
    assert dev.ssh("ps:place", app, "web", "node.labels.zone==a").returncode == 0
    wait_for(lambda: (lambda u: u if len(u) == 4 and set(u.values()) == {"n2"} else None)(web_up(dev, app)),
             180, what="web units pinned on n2")
    pinned = dev.ssh("nodes:drain", "n2")
    assert pinned.returncode != 0 and f"web units of {app} run on n2" in pinned.stderr \
        and "meets node.labels.zone==a" in pinned.stderr, pinned.stderr
    assert re.search(r"n2\s+ready\s+active", dev.ssh("nodes").stdout)
    assert dev.ssh("ps:place", app, "web", "--clear").returncode == 0


def test_a_third_node_joins_with_the_printed_command_and_takes_units(server, dev, app):
    cluster = server.cluster
    out = server.bae("nodes:join-token", check=True).stdout
    assert "SWMTKN-" not in server.log()  # never logged
    cluster.start_node("n3")
    code, text = cluster.exec("n3", "sh", "-c", out)
    assert code == 0, text
    wait_for(lambda: cluster.node_state("n3") == "ready", 60, what="n3 ready")
    assert dev.ssh("ps:scale", app, "web=6").returncode == 0
    placed = wait_for(lambda: (lambda u: u if len(u) == 6 else None)(web_up(dev, app)), 300, what="web=6 up")
    assert "n3" in placed.values(), placed


def test_restarting_bae_serve_adopts_every_unit_without_duplicates(server, dev, app):
    before = web_up(dev, app)
    registry = registry_pid()
    assert server.stop() == 0
    # nothing would start the units elsewhere before Swarm stops them: refused, the node stays active
    down = server.bae("nodes:drain", "n3")
    assert down.returncode != 0 and "bae serve is not running" in down.stderr, down.stderr
    assert server.cluster.engine.api.inspect_node(server.cluster._node("n3")["ID"])["Spec"]["Availability"] == "active"
    assert registry_pids() == [registry]  # the registry outlives bae serve, as the units do
    server.start(timeout=60)
    assert registry_pids() == [registry] and registry_pid() == registry  # adopted, not a second one
    assert f"adopted the running registry (pid {registry})" in server.log()
    wait_for(lambda: web_up(dev, app) == before, 60, what="the same units after the restart")
    assert dev.ssh("ps:scale", app, "web=6").returncode == 0  # a no-op that wakes the loop for another pass
    assert web_up(dev, app) == before
    services = web_services(server.cluster, app)
    assert len(services) == 1 and services[0]["Spec"]["Mode"]["Replicated"]["Replicas"] == len(before), services


def test_a_registry_that_died_is_started_again_within_seconds(server, dev, app):
    killed = registry_pid()
    os.kill(killed, signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: (lambda p: p and p != [killed])(registry_pids()), 15, interval=0.2, what="a new registry")

    def answers() -> bool:
        try:
            return registry_get(server, "/v2/", auth=platform_login()).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(answers, 15, interval=0.2, what="the new registry answering")
    print(f"registry back {time.monotonic() - started:.1f} s after it was killed")
    assert time.monotonic() - started < 15
    wait_for(lambda: f"image registry (pid {killed}) had died; started it again" in server.log(), 10,
             what="the restart logged")
    assert registry_pid() == registry_pids()[0]


def test_a_node_pulls_with_the_services_login_while_bae_serve_is_down(server, dev, app):
    """Units whose node lost the image while the platform is down come back: Swarm hands the login kept in
    the service to the node, and the registry runs without bae serve."""
    cluster = server.cluster
    node = sorted(unit_containers(cluster, app))[0]
    image = web_services(cluster, app)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    code, image_id = cluster.exec(node, "docker", "image", "inspect", "-f", "{{.Id}}", image)
    assert code == 0, image_id
    image_id = image_id.strip()
    assert server.stop() == 0
    try:
        # the unit containers go (Swarm restarts their tasks, on this node: it has the fewest of the service)
        # and so does the image, before a restarted task would use it again
        for _ in range(20):
            cluster.exec(node, "sh", "-c", f"docker rm -f $(docker ps -aq --filter ancestor={image_id}) 2>&1",
                         check=False)
            code, out = cluster.exec(node, "docker", "rmi", image_id, check=False)
            if code == 0:
                break
        assert code == 0, out
        wait_for(lambda: unit_containers(cluster, app).get(node), 120, what=f"units on {node} again")
        code, out = cluster.exec(node, "docker", "image", "inspect", "-f", "{{.Id}}", image, check=False)
        assert code == 0 and out.strip() == image_id, out  # pulled again, bae serve down
    finally:
        server.start(timeout=60)
    wait_for(lambda: (lambda u: u if len(u) == 6 else None)(web_up(dev, app)), 120, what="web=6 up again")


def test_scale_in_under_load_drops_the_tasks_swarm_stops_from_the_router(server, dev, app):
    """web=6 → 2: Swarm picks the tasks that stop; their slots leave the unit list (and the router) at
    once, and nginx retries the idempotent requests a stopping task refused. The app's log names the
    units that really stopped (Swarm may stop others than those the scheduler asked for)."""
    before = web_up(dev, app)
    earlier = set(dev.ssh("logs", app, "-n", "1000").stdout.splitlines())
    with load(server, app) as traffic:
        wait_for(lambda: traffic.ok > 20, 30, what="traffic")
        assert dev.ssh("ps:scale", app, "web=2").returncode == 0
        left = wait_for(lambda: (lambda u: u if len(u) == 2 else None)(web_up(dev, app)), 120, what="web=2")
        services = wait_for(lambda: (lambda s: s if len(s) == 1 and len(server.cluster.engine.api.tasks(
            filters={"service": s[0]["ID"], "desired-state": "running"})) == 2 else None)(web_services(server.cluster, app)),
            60, what="2 tasks wanted")
        served = traffic.ok
        wait_for(lambda: traffic.ok > served + 20, 30, what="traffic after the scale-in")
    print(f"scale-in 6→2 under load: {traffic.ok} ok, {traffic.resent} resent, {len(traffic.failures)} failed:",
          traffic.failures[:5], "left:", sorted(left))
    assert services[0]["Spec"]["Mode"]["Replicated"]["Replicas"] == 2
    assert traffic.failures == [], traffic.failures[:10]

    def named() -> set[str]:  # "web.5 (v2) stopping: ...", and "web.2 (v2) stops in place of web.5 (...)"
        lines = [line for line in dev.ssh("logs", app, "-n", "1000").stdout.splitlines() if line not in earlier]
        stops = (re.search(r"(web\.\d+) \(v\d+\) stop(?:ping:|s in place of)", line) for line in lines)
        return {m.group(1) for m in stops if m}

    gone = set(before) - set(left)  # each of them named as stopping (others asked for may be named too)
    try:
        wait_for(lambda: gone <= named(), 30, what="the log naming the units that stopped")
    except AssertionError:
        raise AssertionError(f"{sorted(gone)} stopped, the log names {sorted(named())}") from None


def test_old_release_images_are_pruned_on_the_nodes(server, dev, app):
    """A deploy removes release images beyond scheduler.keep_releases (1 here) from the nodes too."""
    cluster = server.cluster
    instance = (server.data / "instance-id").read_text().strip()
    repository = f"bae/{instance}/{app}/default"

    def images() -> dict[str, set[str]]:
        found = {}
        for node in cluster.nodes:
            code, out = cluster.exec(node, "docker", "images", "--digests", "--format",
                                     "{{.Repository}} {{.ID}}", check=False)
            found[node] = {line.split()[1] for line in out.splitlines() if line.split()[0].endswith(repository)}
        return found

    before = images()
    assert all(len(ids) == 1 for ids in before.values() if ids) and any(before.values()), before
    old_manifest = web_services(cluster, app)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[1]
    old_blobs = registry_blobs(old_manifest)
    src = server.tmp / "fleet-v2"
    shutil.copytree(APPS / "pyweb", src)
    (src / "requirements.txt").unlink()
    push = dev.push(make_repo(src, {"marker.txt": "v2"}, "pyweb"), app, "master", "--force", timeout=1200)
    assert push.returncode == 0, push.stdout + push.stderr
    old = set().union(*before.values())
    after = wait_for(lambda: (lambda i: i if not old & set().union(*i.values()) else None)(images()), 180,
                     interval=2, what="the old release's image gone from every node")
    assert any(after.values()), after  # the new one stays

    # and from the platform's registry: the old manifest is deleted, garbage collection removes its blobs
    new_manifest = web_services(cluster, app)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[1]
    new_blobs = registry_blobs(new_manifest)
    only_old = old_blobs - new_blobs
    assert only_old and old_manifest in only_old, (old_blobs, new_blobs)
    wait_for(lambda: not any(blob_path(b).exists() for b in only_old), 120, interval=1,
             what="the old release's blobs gone from the registry's storage")
    assert all(blob_path(b).exists() for b in new_blobs), new_blobs
    # (logged once the collection has returned: the blobs are gone a moment before)
    wait_for(lambda: "garbage collection:" in server.log(), 30, what="the garbage collection logged")


def test_a_release_phase_no_node_can_take_fails_the_deploy_and_the_previous_release_keeps_serving(server, dev, app):
    """A config change rolls a release whose `release:` command runs first: when no node can take its
    one-off unit, the deploy fails after the boot timeout, the change is undone and v1 keeps serving."""
    server.plain_app(dev, "migrator")
    src = server.tmp / "migrator-src"
    shutil.copytree(APPS / "pyweb", src)
    (src / "requirements.txt").unlink()
    procfile = "release: echo migrating\nweb: python3 app.py\n"
    push = dev.push(make_repo(src, {"Procfile": procfile}, "pyweb"), "migrator", timeout=1200)
    assert push.returncode == 0 and "migrating" in push.stdout + push.stderr, push.stdout + push.stderr
    before = wait_for(lambda: web_up(dev, "migrator") or None, 300, what="migrator web.1 up")
    started = time.monotonic()
    result = run(BAE + ["config:set", "migrator", "MARK=1"], env=huge_plan_env(server), input="", timeout=180)
    took = time.monotonic() - started
    assert result.returncode != 0, result.stdout + result.stderr
    assert "the release command did not run" in result.stderr and "insufficient resources" in result.stderr \
        and "previous release keeps serving" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and took < 90, (took, result.stderr)
    assert dev.ssh("config:get", "migrator", "MARK").stdout.strip() == ""  # undone
    assert web_up(dev, "migrator") == before and re.search(r"web\.1\s+up .*\bv1\b", dev.ssh("ps", "migrator").stdout)
    assert server.cluster.engine.api.services(filters={"label": ["bae.app=migrator", "bae.role=oneoff"]}) == []


def blob_path(digest: str):
    hexa = digest.split(":")[1]
    return Path(REGISTRY_DIR) / "storage/docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"


def registry_blobs(manifest: str) -> set[str]:
    """A manifest's digest and those of its config and layers, read from the registry's storage."""
    import json

    data = json.loads(blob_path(manifest).read_bytes())
    return {manifest, data["config"]["digest"], *(layer["digest"] for layer in data["layers"])}
