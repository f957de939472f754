"""End-user traffic through the real nginx router: hosts, domains, pages, headers,
WebSockets, and zero failed requests through deploys, scaling and unit deaths."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import docker
import pytest
import requests
import websocket

from helpers import APPS, Load, make_repo, wait_for

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 15, "stop_grace": 5}, "router": {"read_timeout": 2.0, "connect_timeout": 1.0}}




@pytest.fixture(scope="module")
def dev(server):
    return server.user("web")


def deploy(server, dev, target: str, tmp: Path, **changes) -> None:
    app, _, dep = target.partition("/")
    if dep:
        dev.ssh("deployments:create", app, dep)
    else:
        dev.ssh("apps:create", app)
    src = tmp / target.replace("/", "-")
    if not src.exists():
        shutil.copytree(APPS / "pyweb", src)
    push = dev.push(make_repo(src, changes, "deploy"), target)
    assert push.returncode == 0, push.stderr


def get(server, host: str, path: str = "/", **kw) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{server.http_port}{path}", headers={"Host": host, **kw.pop("headers", {})},
                        timeout=10, **kw)


def settled(server, host: str, status: int) -> bool:
    """Three requests in a row answer ``status`` (a reload may be under way)."""
    return all(get(server, host).status_code == status for _ in range(3))


@pytest.fixture(scope="module")
def apps(server, dev, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apps")
    deploy(server, dev, "alpha", tmp)
    deploy(server, dev, "beta", tmp)
    deploy(server, dev, "alpha/api", tmp)
    return tmp


def test_host_routing_between_apps_and_deployments(server, dev, apps):
    alpha = get(server, "alpha.bae.localhost").json()
    beta = get(server, "beta.bae.localhost").json()
    api = get(server, "api.alpha.bae.localhost").json()
    assert (alpha["BAE_APP"], alpha["BAE_DEPLOYMENT"]) == ("alpha", "default")
    assert (beta["BAE_APP"], beta["BAE_DEPLOYMENT"]) == ("beta", "default")
    assert (api["BAE_APP"], api["BAE_DEPLOYMENT"]) == ("alpha", "api")
    assert get(server, "ALPHA.bae.localhost:%d" % server.http_port).json()["BAE_APP"] == "alpha"


def test_custom_domains(server, dev, apps):
    assert dev.ssh("domains:add", "beta", "www.beta-shop.example").returncode == 0
    assert dev.ssh("domains:add", "alpha/api", "*.api.example").returncode == 0
    wait_for(lambda: settled(server, "www.beta-shop.example", 200), what="the custom domain")
    assert get(server, "www.beta-shop.example").json()["BAE_APP"] == "beta"
    wait_for(lambda: settled(server, "v2.api.example", 200), what="the wildcard domain")
    assert get(server, "v2.api.example").json()["BAE_DEPLOYMENT"] == "api"
    listed = dev.ssh("domains", "beta").stdout
    assert "beta.bae.localhost" in listed and "www.beta-shop.example" in listed
    taken = dev.ssh("domains:add", "alpha", "www.beta-shop.example")
    assert taken.returncode != 0 and "already routes to another deployment" in taken.stderr
    for bad in ("not a host", "bad-.example", "a..b", "x" * 64 + ".example", "10.0.0.1", "foo.bae.localhost",
                "*.bae.localhost", "under_score.example", "*"):
        result = dev.ssh("domains:add", "alpha", f"'{bad}'")
        assert result.returncode != 0 and ("not a hostname" in result.stderr or "inside the platform" in result.stderr
                                           or "IP address" in result.stderr), (bad, result.stderr)
    other = server.user("stranger")
    assert other.ssh("domains:add", "alpha", "mine.example").returncode != 0
    assert dev.ssh("domains:remove", "beta", "www.beta-shop.example").returncode == 0
    wait_for(lambda: settled(server, "www.beta-shop.example", 404), what="the domain to go")
    gone = dev.ssh("domains:remove", "beta", "www.beta-shop.example")
    assert gone.returncode != 0 and "has no domain" in gone.stderr


def test_names_under_a_wildcard_belong_to_its_owner(server, dev, apps, admin):
    assert dev.ssh("domains:add", "alpha/api", "*.owned.example").returncode == 0
    wait_for(lambda: settled(server, "www.owned.example", 200), what="the wildcard domain")
    thief = server.user("thief")
    assert thief.ssh("apps:create", "thief-app").returncode == 0
    for name in ("www.owned.example", "a.b.owned.example", "*.x.owned.example", "WWW.owned.example."):
        taken = thief.ssh("domains:add", "thief-app", name)
        assert taken.returncode != 0, name
        assert "under *.owned.example" in taken.stderr and "Only the owner" in taken.stderr, taken.stderr
        assert "Traceback" not in taken.stderr
    assert "owned.example" not in thief.ssh("domains", "thief-app").stdout
    assert get(server, "www.owned.example").json()["BAE_DEPLOYMENT"] == "api"
    # the apex is not under the wildcard; the wildcard's owner and admins may add names under it
    assert thief.ssh("domains:add", "thief-app", "owned.example").returncode == 0
    assert dev.ssh("domains:add", "beta", "shop.owned.example").returncode == 0
    assert admin.ssh("domains:add", "thief-app", "ops.owned.example").returncode == 0
    wait_for(lambda: all(get(server, "shop.owned.example").json()["BAE_APP"] == "beta" for _ in range(3)),
             what="the owner's name under the wildcard")
    for host in ("shop.owned.example", "*.owned.example"):
        dev.ssh("domains:remove", "beta" if host.startswith("shop") else "alpha/api", host)
    admin.ssh("apps:destroy", "thief-app", "--confirm", "thief-app")


def test_error_pages_carry_the_request_id(server, dev, apps):
    unknown = get(server, "nobody.bae.localhost")
    assert unknown.status_code == 404 and "No such app" in unknown.text
    rid = unknown.headers["X-Request-Id"]
    assert rid and rid in unknown.text
    timeout = get(server, "alpha.bae.localhost", "/sleep/5")
    assert timeout.status_code == 504 and "Gateway timeout" in timeout.text
    assert timeout.headers["X-Request-Id"] in timeout.text
    assert dev.ssh("ps:scale", "beta", "web=0").returncode == 0
    wait_for(lambda: settled(server, "beta.bae.localhost", 503), what="503 for a scaled-down app")
    down = get(server, "beta.bae.localhost")
    assert "Application unavailable" in down.text and down.headers["X-Request-Id"] in down.text
    assert dev.ssh("ps:scale", "beta", "web=1").returncode == 0
    wait_for(lambda: settled(server, "beta.bae.localhost", 200), what="beta back")


def test_headers_reach_the_app(server, dev, apps):
    before = int(time.time() * 1000)
    seen = get(server, "alpha.bae.localhost", "/headers").json()
    after = int(time.time() * 1000)
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Port"] == str(server.http_port)
    assert re.fullmatch(r"[0-9a-f]{32}", seen["X-Request-Id"])
    assert before - 5 <= int(seen["X-Request-Start"]) <= after + 5
    kept = get(server, "alpha.bae.localhost", "/headers", headers={"X-Request-Id": "client-chosen-id-123"})
    assert kept.json()["X-Request-Id"] == "client-chosen-id-123" == kept.headers["X-Request-Id"]
    insane = get(server, "alpha.bae.localhost", "/headers", headers={"X-Request-Id": "bad id with spaces"}).json()
    assert re.fullmatch(r"[0-9a-f]{32}", insane["X-Request-Id"])
    forwarded = get(server, "alpha.bae.localhost", "/headers", headers={"X-Forwarded-For": "10.1.2.3"}).json()
    assert forwarded["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"


def test_websocket_echo(server, dev, apps):
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.http_port}/ws", host="alpha.bae.localhost",
                                     timeout=10)
    try:
        for text in ("hello", "world" * 50):
            ws.send(text)
            assert ws.recv() == f"echo from web.1: {text}"
    finally:
        ws.close()


def test_access_log_per_app(server, dev, apps):
    get(server, "beta.bae.localhost", "/logged", headers={"X-Request-Id": "find-me-in-the-log"})
    path = server.data / "logs" / "router" / "beta--default.log"
    wait_for(lambda: path.exists() and "find-me-in-the-log" in path.read_text(), timeout=5, what="the access log")
    entry = [json.loads(line) for line in path.read_text().splitlines() if "find-me-in-the-log" in line][0]
    assert entry["status"] == 200 and entry["path"] == "/logged" and entry["unit"] == "web.1"
    assert entry["bytes"] > 0 and float(entry["duration"]) >= 0 and float(entry["upstream_time"]) >= 0


def test_zero_failed_requests_through_deploy_scale_and_kill(server, dev, apps, tmp_path):
    url = f"http://127.0.0.1:{server.http_port}/"
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    unit_2 = {"label": [f"bae.platform={instance}", "bae.app=alpha", "bae.deployment=default", "bae.index=2"]}
    with Load(url, "alpha.bae.localhost", threads=4, rate=300) as load:
        load.wait(300)
        deploy(server, dev, "alpha", apps, **{"app.py": (APPS / "pyweb" / "app.py").read_text().replace(
            'VERSION = "one"', 'VERSION = "two"')})
        load.wait(300)
        for n in (2, 5, 1, 3):
            assert dev.ssh("ps:scale", "alpha", f"web={n}").returncode == 0
            load.wait(300)
        victim = engine.api.containers(filters=unit_2)[0]
        engine.api.kill(victim["Id"])
        wait_for(lambda: load.units.get("web.2") and [c for c in engine.api.containers(filters=unit_2)
                                                       if c["Id"] != victim["Id"]], what="web.2 replaced")
        load.wait(600)
        assert dev.ssh("ps:restart", "alpha").returncode == 0
        load.wait(300)
    print(f"{load.ok} requests succeeded; {load.resent} were resent after a keep-alive connection closed on reload")
    if load.failures:  # say which unit failed and why, from the router's own logs
        access = (server.data / "logs" / "router" / "alpha--default.log").read_text().splitlines()
        errors = [line for line in access if '"status":5' in line]
        nginx = (server.data / "router" / "logs" / "error.log").read_text()[-3000:]
        raise AssertionError(f"{len(load.failures)} of {load.ok + len(load.failures)} failed: {load.failures[:5]}\n"
                             f"router 5xx: {errors[:5]}\nnginx errors: {nginx}\nbae: {server.log()[-3000:]}")
    assert load.ok > 1000
    assert len(load.units) >= 3, load.units  # the load really spread over the units


def test_units_cannot_reach_each_other_directly(server, dev, apps):
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()

    def unit(app):
        row = engine.api.containers(filters={"label": [f"bae.platform={instance}", f"bae.app={app}", "bae.role=unit"]})[0]
        return engine.containers.get(row["Id"])

    alpha, beta = unit("alpha"), unit("beta")
    beta_ip = next(iter(beta.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 5000), timeout=2); print('reached')\n"
             "except OSError as e:\n print('blocked', e)")
    result = alpha.exec_run(["python3", "-c", probe, beta_ip], user="bae")
    assert "blocked" in result.output.decode(), result.output
    assert requests.get(f"http://{beta_ip}:5000/", timeout=5).status_code == 200  # the host (router) still can
