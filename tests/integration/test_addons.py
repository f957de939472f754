"""Add-ons on real services: Redis, PostgreSQL and MariaDB containers from bae's own images,
a real Flask app pushed over ssh using them, backups restored and checked, healing."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from datetime import datetime

import docker
import pytest
import requests

from helpers import APPS, make_repo, ok, until

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 60, "stop_grace": 5}}


@pytest.fixture(scope="session")
def addon_images():
    """Each service image built once per test run (the tag is its recipe's hash)."""
    from addons.images import build_image
    from addons.kinds import KINDS
    from bae.config import Settings
    from buildpacks.stack import ensure_base

    build = Settings().build
    return {k: build_image(build, kind, kind.versions[0], lambda suite, out: ensure_base(build, out, suite),
                          lambda _: None) for k, kind in KINDS.items()}


@pytest.fixture(scope="module")
def dev(server, addon_images):
    return server.user("dev")


class Answer(ValueError):
    pass


def get(server, app, path, method="GET"):
    response = requests.request(method, f"http://127.0.0.1:{server.http_port}{path}",
                                headers={"Host": f"{app}.bae.localhost"}, timeout=30)
    if response.status_code >= 500:
        raise Answer(f"HTTP {response.status_code}: {response.text[:300]}")
    return response


def push_app(dev, tmp, target):
    src = tmp / target.replace("/", "-")
    if not src.exists():
        shutil.copytree(APPS / "addons-flask", src)
    repo = make_repo(src, {"marker.txt": str(time.time())}, "deploy")
    result = dev.push(repo, target)
    assert result.returncode == 0, result.stderr[-3000:]
    return repo


def service_container(server, app, name):
    instance = (server.data / "instance-id").read_text().strip()
    rows = docker.from_env().api.containers(filters={"label": [f"bae.platform={instance}", "bae.role=addon",
                                                                 f"bae.app={app}", f"bae.addon={name}"]})
    return rows[0] if rows else None


def unit_containers(server, app, process="web"):
    instance = (server.data / "instance-id").read_text().strip()
    return docker.from_env().api.containers(filters={"label": [f"bae.platform={instance}", "bae.role=unit",
                                                               f"bae.app={app}", f"bae.process={process}"]})


def test_bad_input(dev):
    ok(dev.ssh("apps:create", "bad"))
    r = dev.ssh("addons:create", "bad", "mongodb")
    assert r.returncode != 0 and "not an add-on kind" in r.stderr and "redis, postgres, mysql" in r.stderr
    r = dev.ssh("addons:create", "bad", "postgres", "--version", "9")
    assert r.returncode != 0 and "not available" in r.stderr and "15" in r.stderr
    r = dev.ssh("addons:create", "bad", "redis", "--plan", "huge")
    assert r.returncode != 0 and "no plan 'huge'" in r.stderr
    r = dev.ssh("addons:create", "bad", "redis", "--as", "Bad_Name")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = dev.ssh("addons:info", "bad", "nothing")
    assert r.returncode != 0 and "no add-on named" in r.stderr


def test_redis_visits_survive_everything(server, dev, tmp_path):
    ok(dev.ssh("apps:create", "counter"))
    out = ok(dev.ssh("addons:create", "counter", "redis"))
    assert "REDIS_URL" in out and "redis-1" in out and "Accepting connections after" in out
    r = dev.ssh("addons:create", "counter", "redis", "--as", "redis-1")
    assert r.returncode != 0 and "already" in r.stderr
    info = ok(dev.ssh("addons:info", "counter", "redis-1"))
    assert "running" in info and "********" in info
    url = ok(dev.ssh("config:get", "counter", "REDIS_URL")).strip()
    assert url.startswith("redis://:") and url.endswith("@redis-1:6379")
    assert service_container(server, "counter", "redis-1")["Ports"] == []  # nothing published on the host

    repo = push_app(dev, tmp_path, "counter")
    assert until(lambda: get(server, "counter", "/visits").json()["visits"]) == 1
    assert get(server, "counter", "/visits").json()["visits"] == 2

    push_app(dev, tmp_path, "counter")  # a redeploy
    assert get(server, "counter", "/visits").json()["visits"] == 3
    ok(dev.ssh("ps:restart", "counter"))
    assert get(server, "counter", "/visits").json()["visits"] == 4

    old = service_container(server, "counter", "redis-1")["Id"]
    docker.from_env().api.remove_container(old, force=True)  # the service's container vanishes
    until(lambda: (c := service_container(server, "counter", "redis-1")) and c["Id"] != old and c["State"] == "running",
          what="redis-1 re-created")
    assert until(lambda: get(server, "counter", "/visits").json()["visits"]) == 5
    logs = ok(dev.ssh("logs", "counter", "-n", "200"))
    # "(no container)", or "(exited 137)" if seen mid-removal
    assert re.search(r"bae\[addons\]: redis-1 was down since \d\d:\d\d:\d\d \(.+\); restarted on its data", logs), logs
    assert "redis-1" in ok(dev.ssh("ps", "counter"))

    server.stop()
    server.start()
    assert until(lambda: get(server, "counter", "/visits").json()["visits"]) == 6
    assert repo


def test_a_unit_started_while_its_addon_has_no_container_reaches_it_once_healed(server, dev, tmp_path):
    # a unit learns its add-ons' names and addresses from their records, not from their containers: one
    # created while the healer re-creates an add-on's container (after a crash, a dockerd restart) must
    # still find it and get through once it is back. The test holds the add-on's lock, as a command
    # does, so the healer leaves it without a container while the unit starts.
    import fcntl

    ok(dev.ssh("apps:create", "gap"))
    ok(dev.ssh("addons:create", "gap", "redis"))
    push_app(dev, tmp_path, "gap")
    assert until(lambda: get(server, "gap", "/visits").json()["visits"]) == 1
    with open(server.data / "addons" / "gap" / ".redis-1.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        docker.from_env().api.remove_container(service_container(server, "gap", "redis-1")["Id"], force=True)
        (before,) = unit_containers(server, "gap")
        ok(dev.ssh("ps:restart", "gap"))
        until(lambda: [u["Id"] for u in unit_containers(server, "gap")] not in ([], [before["Id"]]),
              what="web.1 replaced")
        assert service_container(server, "gap", "redis-1") is None
    assert until(lambda: get(server, "gap", "/visits").json()["visits"], timeout=90, what="visits after healing") == 2


def test_an_addon_whose_container_stopped_is_down_until_healed_and_its_event_says_since_when(server, dev):
    # the test holds the add-on's lock, as a command does, so the healer leaves it down meanwhile
    import fcntl

    ok(dev.ssh("apps:create", "outage"))
    ok(dev.ssh("addons:create", "outage", "redis"))
    assert re.search(r"redis-1\s+up ", ok(dev.ssh("ps", "outage")))
    with open(server.data / "addons" / "outage" / ".redis-1.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cid = service_container(server, "outage", "redis-1")["Id"]
        docker.from_env().api.kill(cid)  # exit 137
        state = docker.from_env().api.inspect_container(cid)["State"]
        stopped = time.strftime("%H:%M:%S", time.localtime(
            datetime.fromisoformat(state["FinishedAt"]).timestamp()))
        time.sleep(3)  # a healer pass sees the exited container (and notes since when it is down)
        ps = ok(dev.ssh("ps", "outage"))
        assert re.search(rf"redis-1\s+down since {stopped} \(exited 137\)", ps), ps
        assert re.search(r"redis-1\s+redis\s+\S+\s+\S+\s+down\s", ok(dev.ssh("addons", "outage")))
        assert f"Status:       down since {stopped} (exited 137)" in ok(dev.ssh("addons:info", "outage", "redis-1"))
        docker.from_env().api.remove_container(cid)
        ps = ok(dev.ssh("ps", "outage"))
        assert re.search(r"redis-1\s+down \(no container\)", ps), ps
    until(lambda: (c := service_container(server, "outage", "redis-1")) and c["State"] == "running",
          what="redis-1 healed")
    logs = ok(dev.ssh("logs", "outage", "-n", "50"))
    assert f"bae[addons]: redis-1 was down since {stopped} (exited 137); restarted on its data" in logs, logs
    assert until(lambda: re.search(r"redis-1\s+up ", ok(dev.ssh("ps", "outage"))), what="redis-1 up in ps")
    assert re.search(r"redis-1\s+redis\s+\S+\s+\S+\s+running\s", ok(dev.ssh("addons", "outage")))


def test_sql_rows_backup_destroy_restore(server, dev, tmp_path):
    ok(dev.ssh("apps:create", "ledger"))
    ok(dev.ssh("addons:create", "ledger", "postgres"))
    ok(dev.ssh("addons:create", "ledger", "mysql"))
    config = ok(dev.ssh("config", "ledger"))
    assert "DATABASE_URL:" in config and "postgresql://app:" in config
    assert "MYSQL_1_URL:" in config and "mysql://app:" in config
    push_app(dev, tmp_path, "ledger")
    for var in ("DATABASE_URL", "MYSQL_1_URL"):
        for name in ("alpha", "beta", "gamma"):
            assert get(server, "ledger", f"/rows/{var}?name={name}", "POST").status_code == 200
        assert get(server, "ledger", f"/rows/{var}").json()["rows"] == ["alpha", "beta", "gamma"]

    for name, var in (("postgres-1", "DATABASE_URL"), ("mysql-1", "MYSQL_1_URL")):
        out = ok(dev.ssh("addons:backups:capture", "ledger", name))
        assert "Verified b1" in out and "1 tables, 3 rows" in out, out
        listing = ok(dev.ssh("addons:backups", "ledger", name))
        assert "b1" in listing and "verified" in listing
        assert "Last backup:  b1" in ok(dev.ssh("addons:info", "ledger", name))

    # survives a redeploy, docker rm -f of the service, and a restart of bae serve
    push_app(dev, tmp_path, "ledger")
    old = service_container(server, "ledger", "postgres-1")["Id"]
    docker.from_env().api.remove_container(old, force=True)
    server.stop()
    server.start()
    for var in ("DATABASE_URL", "MYSQL_1_URL"):
        assert until(lambda: get(server, "ledger", f"/rows/{var}").json()["rows"]) == ["alpha", "beta", "gamma"]

    # backup -> destroy -> create -> restore returns the same rows
    r = dev.ssh("addons:destroy", "ledger", "postgres-1")
    assert r.returncode != 0 and "--confirm postgres-1" in r.stderr
    ok(dev.ssh("addons:destroy", "ledger", "postgres-1", "--confirm", "postgres-1"))
    assert "DATABASE_URL" not in ok(dev.ssh("config", "ledger"))
    out = ok(dev.ssh("addons:create", "ledger", "postgres"))
    assert "DATABASE_URL" in out
    assert until(lambda: get(server, "ledger", "/rows/DATABASE_URL").json()["rows"] == [] or None) is True
    ok(dev.ssh("addons:backups:restore", "ledger", "postgres-1", "b1", "--confirm", "postgres-1"))
    assert get(server, "ledger", "/rows/DATABASE_URL").json()["rows"] == ["alpha", "beta", "gamma"]
    # the restore returned the rows to the same app: mysql too, after a change
    get(server, "ledger", "/rows/MYSQL_1_URL?name=delta", "POST")
    ok(dev.ssh("addons:backups:restore", "ledger", "mysql-1", "--confirm", "mysql-1"))
    assert get(server, "ledger", "/rows/MYSQL_1_URL").json()["rows"] == ["alpha", "beta", "gamma"]

    # apps:destroy refuses while add-ons hold data
    r = dev.ssh("apps:destroy", "ledger", "--confirm", "ledger")
    assert r.returncode != 0 and "--with-addons" in r.stderr


def test_corrupt_and_disk_full_backups(server, dev, tmp_path):
    ok(dev.ssh("apps:create", "fragile"))
    ok(dev.ssh("addons:create", "fragile", "redis"))
    url = ok(dev.ssh("config:get", "fragile", "REDIS_URL")).strip()
    password = url.split(":")[2].split("@")[0]
    container = service_container(server, "fragile", "redis-1")["Id"]
    api = docker.from_env().api

    def redis(*args):
        exec_id = api.exec_create(container, ["redis-cli", "--no-auth-warning", "-a", password, *args])["Id"]
        return api.exec_start(exec_id).decode().strip()

    for i in range(5):
        redis("set", f"k{i}", str(i))
    assert "verified" in ok(dev.ssh("addons:backups:capture", "fragile", "redis-1"))
    backup = server.data / "addons" / "fragile" / "redis-1" / "backups" / "1.rdb"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0xFF
    backup.write_bytes(bytes(data))  # bit rot
    redis("set", "after", "1")
    r = dev.ssh("addons:backups:restore", "fragile", "redis-1", "b1", "--confirm", "redis-1")
    assert r.returncode != 0 and "corrupt" in r.stderr and "Nothing was touched" in r.stderr
    assert redis("dbsize") == "6"  # data untouched

    # a full disk: no partial file, the earlier backup still listed
    backups = backup.parent
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(backups)], check=True)
    try:
        ok(dev.ssh("addons:restart", "fragile", "redis-1"))  # the new container sees the small disk
        container = service_container(server, "fragile", "redis-1")["Id"]
        pairs = [x for i in range(4000) for x in (f"pad{i}", secrets.token_hex(32))]
        assert redis("mset", *pairs) == "OK"  # ~300 KB of RDB that does not compress
        r = dev.ssh("addons:backups:capture", "fragile", "redis-1")
        assert r.returncode != 0 and "full" in r.stderr, r.stderr
        assert [p.name for p in backups.iterdir()] == []
    finally:
        subprocess.run(["umount", str(backups)], check=True)
    listing = ok(dev.ssh("addons:backups", "fragile", "redis-1"))
    assert "b1" in listing and "b2" in listing and "failed" in listing


def test_worker_deployment_consumes_queue_and_other_apps_cannot_connect(server, dev, tmp_path):
    ok(dev.ssh("apps:create", "jobs"))
    ok(dev.ssh("addons:create", "jobs", "redis"))
    ok(dev.ssh("deployments:create", "jobs", "worker"))
    push_app(dev, tmp_path, "jobs")
    push_app(dev, tmp_path, "jobs/worker")
    ok(dev.ssh("ps:scale", "jobs/worker", "worker=1", "web=0"))
    for i in range(3):
        assert get(server, "jobs", f"/enqueue/job{i}", "POST").status_code == 200
    done = until(lambda: len(d := get(server, "jobs", "/done").json()["done"]) == 3 and d, what="jobs done")
    assert sorted(done) == ["job0:worker", "job1:worker", "job2:worker"]

    # a second app's unit cannot reach the first app's add-on, even with its URL (name or address)
    ok(dev.ssh("apps:create", "intruder"))
    url = ok(dev.ssh("config:get", "jobs", "REDIS_URL")).strip()
    ok(dev.ssh("config:set", "intruder", f"REDIS_URL={url}"))
    push_app(dev, tmp_path, "intruder")
    ip = next(iter(service_container(server, "jobs", "redis-1")["NetworkSettings"]["Networks"].values()))["IPAddress"]
    for host in ("redis-1", ip):
        seen = get(server, "intruder", f"/connect?host={host}&port=6379").json()
        assert seen["reachable"] is False, seen
        seen = get(server, "jobs", f"/connect?host={host}&port=6379").json()
        assert seen["reachable"] is True, seen
    with pytest.raises(Answer, match="HTTP 500"):
        get(server, "intruder", "/visits")
    # on an engine started as `make up` starts it, the units stay on Docker's default bridge (no
    # traffic between containers) and each has its own opening to its app's add-ons only
    bridge = docker.from_env().api.inspect_network("bridge")
    if bridge["Options"].get("com.docker.network.bridge.enable_icc") == "false":
        (jobs_web,) = unit_containers(server, "jobs")
        assert set(jobs_web["NetworkSettings"]["Networks"]) == {"bridge"}
    # nor does a unit reach another app's unit (add-on or not)
    (intruder_web,) = unit_containers(server, "intruder")
    other = next(iter(intruder_web["NetworkSettings"]["Networks"].values()))["IPAddress"]
    assert get(server, "jobs", f"/connect?host={other}&port=5000").json()["reachable"] is False
    # one-off units of the app reach it too
    out = ok(dev.ssh("run", "jobs", "python", "-c",
                     "'import os,redis; print(redis.from_url(os.environ[\"REDIS_URL\"]).ping())'"))
    assert "True" in out


def test_rotate_connect_and_restart(server, dev, tmp_path):
    ok(dev.ssh("apps:create", "keys"))
    ok(dev.ssh("addons:create", "keys", "postgres"))
    push_app(dev, tmp_path, "keys")
    assert get(server, "keys", "/rows/DATABASE_URL?name=one", "POST").status_code == 200
    old_url = ok(dev.ssh("config:get", "keys", "DATABASE_URL")).strip()
    out = ok(dev.ssh("addons:connect", "keys", "postgres-1", input="SELECT 'hello-' || count(*) FROM items;\n"))
    assert "hello-1" in out
    ok(dev.ssh("addons:credentials:rotate", "keys", "postgres-1"))
    new_url = ok(dev.ssh("config:get", "keys", "DATABASE_URL")).strip()
    assert new_url != old_url
    assert get(server, "keys", "/rows/DATABASE_URL").json()["rows"] == ["one"]  # units rolled to the new URL
    r = dev.ssh("run", "keys", "python", "-c", f"'import sqlalchemy as s; s.create_engine(\"{old_url}\").connect()'")
    assert r.returncode != 0 and "password authentication failed" in r.stdout + r.stderr
    ok(dev.ssh("addons:restart", "keys", "postgres-1"))
    assert until(lambda: get(server, "keys", "/rows/DATABASE_URL").json()["rows"]) == ["one"]
    listing = ok(dev.ssh("addons", "keys"))
    assert "postgres-1" in listing and "running" in listing
    ok(dev.ssh("apps:destroy", "keys", "--confirm", "keys", "--with-addons"))
    assert service_container(server, "keys", "postgres-1") is None
    assert not (server.data / "addons" / "keys").exists()


def test_major_upgrade_keeps_old_data_until_confirmed(server, dev):
    ok(dev.ssh("apps:create", "upg"))
    ok(dev.ssh("addons:create", "upg", "postgres", "--version", "15"))
    sql = "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 500);\n"
    ok(dev.ssh("addons:connect", "upg", "postgres-1", input=sql))
    r = dev.ssh("addons:upgrade", "upg", "postgres-1", "--version", "16")
    assert r.returncode != 0 and "not available" in r.stderr
    out = ok(dev.ssh("addons:upgrade", "upg", "postgres-1", "--version", "17"))
    assert "verified" in out.lower() and "runs PostgreSQL 17" in out and "--confirm postgres-1" in out
    assert "PostgreSQL 17" in ok(dev.ssh("addons:info", "upg", "postgres-1"))
    version = "SELECT current_setting('server_version_num')::int / 10000, count(*) FROM t;\n"
    assert "17|500" in ok(dev.ssh("addons:connect", "upg", "postgres-1", input=version)).replace(" ", "")
    folder = server.data / "addons" / "upg" / "postgres-1"
    assert (folder / "data-15" / "PG_VERSION").read_text().strip() == "15"  # the old data, untouched
    ok(dev.ssh("addons:upgrade", "upg", "postgres-1", "--revert"))
    assert "15|500" in ok(dev.ssh("addons:connect", "upg", "postgres-1", input=version)).replace(" ", "")
    ok(dev.ssh("addons:upgrade", "upg", "postgres-1", "--version", "17"))
    ok(dev.ssh("addons:upgrade", "upg", "postgres-1", "--confirm", "postgres-1"))
    assert not (folder / "data-15").exists()
    assert "17|500" in ok(dev.ssh("addons:connect", "upg", "postgres-1", input=version)).replace(" ", "")


def client_in(server, app, name, cmd):
    """Run a client command inside add-on ``name``'s container, connecting over its network address."""
    api = docker.from_env().api
    container = service_container(server, app, name)
    exec_id = api.exec_create(container["Id"], cmd)["Id"]
    out = api.exec_start(exec_id).decode("utf-8", "replace")
    return api.exec_inspect(exec_id)["ExitCode"], out


def test_password_required_from_the_first_moment(server, dev):
    """Right after addons:create returns, the network refuses a wrong password and takes the right one;
    two add-ons made from the same template share no password."""
    ok(dev.ssh("apps:create", "guarded"))
    probes = {
        "postgres": lambda ip, pw: ["env", f"PGPASSWORD={pw}", "psql", "-h", ip, "-U", "app", "-d", "app", "-Atc",
                                    "SELECT 'in-' || 1"],
        "mysql": lambda ip, pw: ["mariadb", "-h", ip, "-u", "app", f"-p{pw}", "app", "-Nse", "SELECT CONCAT('in-', 1)"],
        "redis": lambda ip, pw: ["redis-cli", "--no-auth-warning", "-h", ip, "-a", pw, "echo", "in-1"],
    }
    passwords = {}
    for kind, probe in probes.items():
        for name in (f"{kind}-a", f"{kind}-b") if kind == "postgres" else (f"{kind}-a",):
            ok(dev.ssh("addons:create", "guarded", kind, "--as", name))
            ip = service_container(server, "guarded", name)["Labels"]["bae.ip"]
            code, out = client_in(server, "guarded", name, probe(ip, "wrong-password"))
            assert "in-1" not in out and ("authentication failed" in out or "Access denied" in out
                                          or "WRONGPASS" in out), out
            var = {"postgres-a": "DATABASE_URL", "redis-a": "REDIS_URL"}.get(name, name.upper().replace("-", "_") + "_URL")
            url = ok(dev.ssh("config:get", "guarded", var)).strip()
            passwords[name] = url.split("@")[0].rsplit(":", 1)[1]
            code, out = client_in(server, "guarded", name, probe(ip, passwords[name]))
            assert code == 0 and "in-1" in out, out
    assert passwords["postgres-a"] != passwords["postgres-b"]
    ip = service_container(server, "guarded", "postgres-b")["Labels"]["bae.ip"]
    code, out = client_in(server, "guarded", "postgres-b", probes["postgres"](ip, passwords["postgres-a"]))
    assert code != 0 and "authentication failed" in out, out


class Terminal:
    """A command on a real pseudo-terminal (ours, from the pty module), read until an expected answer."""

    def __init__(self, argv: list[str], columns: int = 120, rows: int = 40) -> None:
        import fcntl
        import os
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env={**os.environ, "TERM": "xterm"})
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 60.0, after: int = 0) -> int:
        """Wait until ``text`` shows (at or after offset ``after``); the offset just past it."""
        import os
        import select

        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen[after:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen within {timeout}s; the terminal shows:\n"
                                     + self.seen[-2000:].decode("utf-8", "replace"))
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the other side closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not seen before the terminal closed:\n"
                                         + self.seen[-2000:].decode("utf-8", "replace"))
                if b"\x1b[6n" in chunk:  # "where is the cursor?": answer as a terminal does
                    self.send("\x1b[1;1R" * chunk.count(b"\x1b[6n"))
                self.seen += chunk
        return self.seen.index(text.encode(), after) + len(text)

    def send(self, text: str) -> None:
        import os

        os.write(self.master, text.encode())

    def wait(self, timeout: float = 60.0) -> int:
        import os
        import select

        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:  # drain, so the client never blocks
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        import os

        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_connect_interactive_over_ssh_tty(dev):
    """addons:connect through `ssh -tt` on a real pty: psql, mariadb and redis-cli answer a query, then quit."""
    ok(dev.ssh("apps:create", "console"))
    sessions = (  # (kind, prompt, [(typed, answer)...], how to leave); one line at a time, as a person types
        ("postgres", "app=>", [("SELECT 'x' || 40 + 2 AS answer;\r", "x42")], "\\q\r"),
        ("mysql", "[app]>", [("SELECT CONCAT('x', 40 + 2) AS answer;\r", "x42")], "exit\r"),
        ("redis", "6379>", [("SET answer 41\r", "OK"), ("INCR answer\r", "(integer) 42")], "quit\r"),
    )
    for kind, *_ in sessions:
        ok(dev.ssh("addons:create", "console", kind))
    for kind, prompt, steps, leave in sessions:
        term = Terminal(dev.ssh_cmd + ["-tt", "bae@127.0.0.1", "addons:connect", "console", f"{kind}-1"])
        try:
            seen = term.expect(prompt)
            for typed, answer in steps:
                term.send(typed)
                # the next line only once the prompt is back: line editors flush what was typed ahead
                seen = term.expect(prompt, after=term.expect(answer, after=seen))
            term.send(leave)
            assert term.wait() == 0, term.seen[-1000:]
        finally:
            term.close()


def test_scheduled_backup_fires_at_its_minute_and_keeps_retention(server, dev):
    """A schedule for the coming minute captures a verified backup then (not before), retention drops the
    oldest, and addons:info warns while no verified backup is younger than the schedule."""
    from datetime import datetime, timedelta, timezone

    ok(dev.ssh("apps:create", "nightly"))
    ok(dev.ssh("addons:create", "nightly", "redis"))
    ok(dev.ssh("addons:create", "nightly", "redis", "--as", "spare"))
    ok(dev.ssh("addons:connect", "nightly", "redis-1", input="SET a 1\nSET b 2\n"))
    for _ in range(2):
        assert "Verified" in ok(dev.ssh("addons:backups:capture", "nightly", "redis-1"))

    # a schedule and no verified backup at all: a warning
    ok(dev.ssh("addons:backups:schedule", "nightly", "spare", f"{datetime.now(timezone.utc) + timedelta(hours=12):%H:%M}"))
    info = dev.ssh("addons:info", "nightly", "spare")
    assert info.returncode == 0 and "no verified backup is younger than its daily schedule" in info.stderr, info.stderr

    now = datetime.now(timezone.utc)
    at = (now + timedelta(minutes=1 if now.second < 45 else 2)).replace(second=0, microsecond=0)
    out = ok(dev.ssh("addons:backups:schedule", "nightly", "redis-1", at.strftime("%H:%M"), "--retention", "2"))
    assert f"daily at {at:%H:%M} UTC" in out and "newest 2 verified" in out
    assert "Schedule:     daily at" in ok(dev.ssh("addons:info", "nightly", "redis-1"))

    def listing():
        return ok(dev.ssh("addons:backups", "nightly", "redis-1"))

    # nothing before its minute (a schedule for a time that has passed today does not fire at once either)
    while datetime.now(timezone.utc) < at - timedelta(seconds=3):
        assert "scheduled" not in listing()
        time.sleep(min(5.0, max(0.0, (at - datetime.now(timezone.utc)).total_seconds() - 3)))
    def pruned():
        lines = {line.split()[0]: line for line in listing().splitlines() if line.startswith("b")}
        b3 = lines.get("b3", "")
        return "scheduled" in b3 and "verified" in b3 and "b1" not in lines and lines

    lines = until(pruned, timeout=(at - datetime.now(timezone.utc)).total_seconds() + 120,
                  what="the scheduled backup, verified, and b1 pruned")
    assert datetime.now(timezone.utc) >= at
    assert sorted(lines) == ["b2", "b3"], lines  # retention 2: b1, the oldest, is gone
    assert "manual" in lines["b2"]
    assert not (server.data / "addons" / "nightly" / "redis-1" / "backups" / "1.rdb").exists()
    info = dev.ssh("addons:info", "nightly", "redis-1")
    assert "Last backup:  b3" in info.stdout and "Warning" not in info.stderr, info.stdout + info.stderr
    assert "redis-1: scheduled backup b3 verified" in ok(dev.ssh("logs", "nightly", "-n", "100"))
    assert "No backups" in ok(dev.ssh("addons:backups", "nightly", "spare"))  # its time (in 12 h) has not come
