"""Test helpers: run a real `bae serve`, drive it with real git and OpenSSH.

Everything a test creates lives under its temporary directory; containers and
images it causes carry the server's instance label and are removed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import docker
import requests
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
BAE = [sys.executable, "-m", "bae"]
APPS = ROOT / "tests" / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Does something accept connections on ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(interval)


def ok(result) -> str:
    """The stdout of a command that must have succeeded; its exit code and both outputs otherwise."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result.stdout


def until(check, timeout: float = 90.0, what: str = "condition", interval: float = 0.2):
    """Like wait_for, for checks that may raise while the thing they watch is coming up (a
    request refused, a container not there yet): the last value or error is in the failure."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, KeyError, ValueError, docker.errors.DockerException) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def routed_units(http_port: int, host: str, requests_: int = 12) -> int:
    """How many units the router sends ``host``'s traffic to, seen from a burst of requests
    (the pyweb sample answers with its BAE_UNIT); 0 when any request fails."""
    seen = set()
    for _ in range(requests_):
        try:
            r = requests.get(f"http://127.0.0.1:{http_port}/", headers={"Host": host}, timeout=5)
        except requests.RequestException:
            return 0
        if r.status_code != 200:
            return 0
        seen.add(r.json()["BAE_UNIT"])
    return len(seen)


def run(cmd, *, cwd=None, env=None, input=None, timeout=600, check=False) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True, timeout=timeout,
                            text=not isinstance(input, bytes))
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def drop_firewall_rules(instance: str) -> None:
    """Remove the DOCKER-USER rules bae made for this installation's units (scheduler.firewall)."""
    listed = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        words = shlex.split(line)  # iptables -S quotes comments
        if "--comment" in words and words[words.index("--comment") + 1].startswith(f"bae:{instance}:"):
            subprocess.run(["iptables", "-w", "-D", *words[1:]], capture_output=True)


class Server:
    """A `bae serve` process with its own data directory, ports and config."""

    def __init__(self, tmp: Path, settings: dict | None = None) -> None:
        self.tmp = Path(tmp)
        self.data = self.tmp / "data"
        self.ssh_port = free_port()
        self.http_port = free_port()
        self.https_port = free_port()
        self.config = self.tmp / "bae.toml"
        config = {
            "data_dir": str(self.data),
            "ssh": {"host": "127.0.0.1", "port": self.ssh_port, "public_host": "127.0.0.1"},
            "router": {"host": "127.0.0.1", "http_port": self.http_port, "https_port": self.https_port},
        }
        for section, values in (settings or {}).items():
            if isinstance(values, dict):
                config.setdefault(section, {}).update(values)
            else:
                config[section] = values
        self.config.write_text(tomli_w.dumps(config))
        self.log_path = self.tmp / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.known_hosts = self.tmp / "known_hosts"
        self._keys = 0

    @property
    def env(self) -> dict:
        env = dict(os.environ)
        env["BAE_CONFIG"] = str(self.config)
        env["PYTHONPATH"] = str(ROOT)
        return env

    def start(self, timeout: float = 30.0) -> "Server":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(BAE + ["serve"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.tmp, start_new_session=True)
        wait_port(self.ssh_port, timeout, self.proc)
        return self

    def stop(self, timeout: float = 90.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def router_pids(self) -> list[int]:
        """The running nginx masters of this server's router (nginx outlives `bae serve`)."""
        prefix = f" -p {self.data / 'router'} ".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if title.startswith(b"nginx: master process ") and prefix in title:
                    found.append(int(entry.name))
        return found

    def stop_router(self, timeout: float = 20.0) -> None:
        for pid in self.router_pids():
            os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + timeout
        while self.router_pids():
            if time.monotonic() > deadline:
                for pid in self.router_pids():
                    os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Remove every container and image this server's platform created, and stop its
        router (after stop(): nginx outlives `bae serve`)."""
        self.stop_router()
        path = self.data / "instance-id"
        if not path.exists():
            return
        instance = path.read_text().strip()
        engine = docker.from_env(version="auto")
        if engine.info()["Swarm"].get("ControlAvailable"):  # the swarm runtime's units and CA configs
            for service in engine.api.services(filters={"label": f"bae.platform={instance}"}):
                try:
                    engine.api.remove_service(service["ID"])
                except docker.errors.NotFound:
                    pass
            for config in engine.api.configs(filters={"label": f"bae.platform={instance}"}):
                try:  # in use until the services' tasks are gone
                    engine.api.remove_config(config["ID"])
                except docker.errors.APIError:
                    pass
        for row in engine.api.containers(all=True, filters={"label": f"bae.platform={instance}"}):
            try:
                engine.api.remove_container(row["Id"], force=True)
            except docker.errors.APIError:  # gone, or its removal (by bae, when it stopped) is under way
                pass
        for net in engine.api.networks(filters={"label": f"bae.platform={instance}"}):
            try:
                engine.api.remove_network(net["Id"])
            except docker.errors.APIError:
                pass
        drop_firewall_rules(instance)
        images = engine.images.list(name=f"bae/{instance}/*/*")
        for image in sorted(images, key=lambda i: i.attrs.get("Created", ""), reverse=True):
            for tag in image.tags:
                try:
                    engine.images.remove(tag, force=True)
                except docker.errors.APIError:
                    pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def bae(self, *args: str, input=None, check=False, timeout=600) -> subprocess.CompletedProcess:
        """Run `bae ARGS` locally on the host (as the operator)."""
        return run(BAE + list(args), env=self.env, input=input, check=check, timeout=timeout)

    def user(self, name: str, admin: bool = False) -> "Client":
        self.bae("users:add", name, *(["--admin"] if admin else []), check=True)
        client = self.client(name)
        self.bae("keys:add", name, str(client.key) + ".pub", check=True)
        return client

    def plain_app(self, client: "Client", target: str) -> None:
        """Create an app (or deployment) that builds with the no-op test buildpack: fast pushes."""
        app, _, dep = target.partition("/")
        if dep:
            result = client.ssh("deployments:create", app, dep)
        else:
            result = client.ssh("apps:create", app)
        assert result.returncode == 0 or "already" in result.stderr, result.stderr
        self.bae("buildpacks:set", target, str(APPS / "null-buildpack"), check=True)

    def client(self, name: str, key_type: str = "ed25519") -> "Client":
        self._keys += 1
        key = self.tmp / "keys" / f"{name}-{self._keys}"
        key.parent.mkdir(exist_ok=True)
        run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", f"{name}@test", "-f", str(key)], check=True)
        return Client(self, name, key)


class Client:
    """A developer's machine: an SSH key, and git/ssh commands that use it."""

    def __init__(self, server: Server, name: str, key: Path) -> None:
        self.server = server
        self.name = name
        self.key = key
        self.ssh_cmd = [
            "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-p", str(server.ssh_port),
        ]

    @property
    def public_key(self) -> str:
        return Path(str(self.key) + ".pub").read_text()

    def ssh(self, *args: str, input=None, timeout=600, extra=()) -> subprocess.CompletedProcess:
        return run(self.ssh_cmd + list(extra) + ["bae@127.0.0.1"] + list(args), input=input, timeout=timeout)

    @property
    def git_env(self) -> dict:
        env = dict(os.environ)
        env["GIT_SSH_COMMAND"] = " ".join(self.ssh_cmd)
        env.update(GIT_AUTHOR_NAME=self.name, GIT_AUTHOR_EMAIL=f"{self.name}@test",
                   GIT_COMMITTER_NAME=self.name, GIT_COMMITTER_EMAIL=f"{self.name}@test")
        return env

    def url(self, target: str) -> str:
        return f"ssh://bae@127.0.0.1:{self.server.ssh_port}/{target}.git"

    def git(self, *args: str, cwd=None, timeout=600) -> subprocess.CompletedProcess:
        return run(["git"] + list(args), cwd=cwd, env=self.git_env, timeout=timeout)

    def push(self, repo: Path, target: str, refspec: str = "master", *flags: str, timeout=900) -> subprocess.CompletedProcess:
        return self.git("push", *flags, self.url(target), refspec, cwd=repo, timeout=timeout)


@contextlib.contextmanager
def serving(tmp: Path, settings: dict | None = None):
    """A started Server; on exit it is stopped (must exit 0, no traceback logged) and cleaned up."""
    srv = Server(tmp, settings).start()
    try:
        yield srv
    finally:
        code = srv.stop()
        srv.cleanup()
    log = srv.log()
    assert "Traceback" not in log, f"the server logged a traceback:\n{log[-5000:]}"
    assert code == 0, f"bae serve exited {code}:\n{log[-3000:]}"


def push_sample(client: "Client", src: Path, app: str, sample: str = "pyweb", domains: tuple[str, ...] = ()) -> str:
    """Create ``app``, push the ``sample`` app from tests/apps (copied to ``src``) and add ``domains``."""
    created = client.ssh("apps:create", app)
    assert created.returncode == 0, created.stderr
    shutil.copytree(APPS / sample, src)
    push = client.push(make_repo(src, {}, "deploy"), app)
    assert push.returncode == 0, push.stderr
    for domain in domains:
        added = client.ssh("domains:add", app, domain)
        assert added.returncode == 0, added.stderr
    return app


def make_repo(path: Path, files: dict[str, str | bytes], message: str = "initial", branch: str = "master") -> Path:
    """A git repository at ``path`` holding ``files`` in one commit (or a new commit if it exists)."""
    path = Path(path)
    fresh = not (path / ".git").exists()
    path.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    if fresh:
        run(["git", "init", "-q", "-b", branch], cwd=path, check=True)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        if name.startswith("bin/") or name.endswith(".sh"):
            target.chmod(0o755)
    run(["git", "add", "-A"], cwd=path, check=True)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=path, env=env, check=True)
    return path


def head(repo: Path) -> str:
    return run(["git", "rev-parse", "HEAD"], cwd=repo, check=True).stdout.strip()


def tmpdir(prefix: str = "bae-test-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


class Load:
    """Continuous HTTP load from a few threads with keep-alive connections; counts every outcome.

    A request fails when it raises or answers anything but 200. The one retry is the
    one every standard client makes (RFC 9112 section 9.3.1; browsers, curl, Go): a GET
    sent on a *reused* keep-alive connection that the server closed before any byte
    of a response came back is sent again on a new connection. nginx closes idle
    keep-alive connections when it reloads, so these happen; they are counted in
    ``resent`` and reported, and anything else is a failure.
    """

    def __init__(self, url: str, host: str, threads: int = 4, rate: float = 300.0, context=None) -> None:
        """``context``: an ssl.SSLContext for HTTPS (the connection presents ``host`` as SNI)."""
        parts = urlsplit(url)
        self.address = (parts.hostname, parts.port or 80)
        self.path = parts.path or "/"
        self.host, self.threads, self.interval = host, threads, threads / rate
        self.context = context
        self.ok = 0
        self.resent = 0
        self.failures: list[str] = []
        self.units: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn, reused = None, False
        while not self._stop.is_set():
            started = time.monotonic()
            if conn is None:
                if self.context is not None:
                    from tlsutil import SNIConnection

                    conn = SNIConnection(self.address[1], self.host, self.context, timeout=15)
                else:
                    conn = http.client.HTTPConnection(*self.address, timeout=15)
                reused = False
            try:
                conn.request("GET", self.path, headers={"Host": self.host})
                response = conn.getresponse()
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                    ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:  # closed idle connection (TLS: close_notify)
                conn.close()
                conn = None
                with self._lock:
                    if reused:
                        self.resent += 1  # resent at once on a new connection, like any client
                        continue
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            except Exception as exc:
                conn.close()
                conn = None
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            try:
                body = response.read()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        unit = json.loads(body).get("BAE_UNIT", "?")
                        self.units[unit] = self.units.get(unit, 0) + 1
                    else:
                        self.failures.append(f"HTTP {response.status}: {body[:100]!r}")
                if response.will_close:
                    conn.close()
                    conn = None
                else:
                    reused = True
            except Exception as exc:  # the response broke off: a failure
                conn.close()
                conn = None
                with self._lock:
                    self.failures.append(f"{type(exc).__name__} while reading: {exc}"[:200])
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def wait(self, requests: int, timeout: float = 30.0) -> None:
        """Until ``requests`` more requests have succeeded (the load runs meanwhile)."""
        target = self.ok + requests
        wait_for(lambda: self.ok >= target or len(self.failures) > 50, timeout, 0.05, f"{requests} requests")

    def __enter__(self) -> "Load":
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(20)
