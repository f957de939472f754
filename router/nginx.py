"""The router's data plane: an nginx it owns, configured from the route table.

``render`` turns routes into a complete nginx.conf (pure). ``Nginx`` runs nginx
(in the foreground, in a session of its own) with its own prefix and pid file
under the data directory, and applies a new configuration only after
``nginx -t`` accepted it, by a graceful reload (SIGHUP: old workers finish
their requests). A bad render never replaces a good configuration.

nginx outlives `bae serve` on purpose, as units do: a crash, an upgrade or a
restart of the control plane must not cost end users a request. So ``start``
first looks for this installation's nginx (its pid file, checked against the
process's title, which names this prefix) and adopts it; only when none runs
does it start one. There is never a second one.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from bae import config
from bae.pids import find_running
from bae.errors import Unavailable
from bae.logstore import router_log_name
from bae.model import Route
from router import tls as tls_conf
from router.pages import page

__all__ = ["render", "Nginx"]

log = logging.getLogger("bae.router")

_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")  # nginx temp dirs under the prefix

# One JSON object per request: what `logs --router` shows. Kept lean: every
# variable costs the router CPU on every request.
_LOG_FORMAT = (
    '{"msec":$msec,"request_id":"$bae_request_id","method":"$request_method","path":"$request_uri",'
    '"status":$status,"bytes":$body_bytes_sent,"duration":$request_time,"unit":"$bae_unit",'
    '"upstream_time":"$upstream_response_time","client":"$remote_addr"}'
)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_pages() -> list[str]:
    lines = []
    for status in (502, 503, 504):
        lines.append(f"    error_page {status} @bae{status};")
        lines.append(f"    location @bae{status} {{ default_type text/html; add_header X-Request-Id $bae_request_id always; "
                     f"return {status} {_quote(page(status))}; }}")
    return lines


def render(routes: list[Route], *, prefix: Path, logs: Path, listen: str, settings: config.Router,
           user: str | None, tls: tls_conf.TlsView | None = None) -> str:
    """A complete nginx.conf for ``routes``; HTTPS too when ``tls`` is given."""
    workers = settings.worker_processes or "auto"
    units = sorted({(e.address, e.unit) for r in routes for e in r.endpoints})
    out = [
        "# Rendered by bae (router/nginx.py) from the route table; do not edit: it is replaced on every change.",
        *( [f"user {user};"] if user else [] ),
        f"worker_processes {workers};",
        f"pid {prefix}/nginx.pid;",
        f"error_log {prefix}/logs/error.log warn;",
        "events { worker_connections 8192; multi_accept on; }",
        "http {",
        "  default_type application/octet-stream;",
        "  server_tokens off; sendfile on; tcp_nodelay on;",
        "  keepalive_timeout 65s; keepalive_requests 100000;",
        "  server_names_hash_bucket_size 128; server_names_hash_max_size 8192;",
        f"  client_max_body_size {settings.client_max_body_size};",
        *[f"  {kind}_temp_path {prefix}/tmp/{kind};" for kind in _TEMP_KINDS],
        '  map $http_x_request_id $bae_request_id { default $request_id; "~^[A-Za-z0-9._:+=/-]{8,200}$" $http_x_request_id; }',
        '  map $msec $bae_request_start { "~^(?<s>[0-9]+)[.](?<ms>[0-9]+)$" $s$ms; default $msec; }',
        '  map $http_upgrade $bae_connection { default upgrade; "" ""; }',
        "  map $upstream_addr $bae_unit {",
        '    default "-";',
        *[f"    {address} {unit};" for address, unit in units],
        "  }",
        f"  log_format bae escape=json '{_LOG_FORMAT}';",
        "  access_log off;",
        "  proxy_http_version 1.1;",
        "  proxy_set_header Host $host;",
        "  proxy_set_header Connection $bae_connection;",
        "  proxy_set_header Upgrade $http_upgrade;",
        "  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "  proxy_set_header X-Forwarded-Proto $scheme;",
        "  proxy_set_header X-Forwarded-Port $server_port;",
        "  proxy_set_header X-Request-Id $bae_request_id;",
        "  proxy_set_header X-Request-Start $bae_request_start;",
        f"  proxy_connect_timeout {int(settings.connect_timeout * 1000)}ms;",
        f"  proxy_read_timeout {int(settings.read_timeout * 1000)}ms;",
        f"  proxy_send_timeout {int(settings.send_timeout * 1000)}ms;",
        "  proxy_next_upstream error timeout; proxy_next_upstream_tries 3;",
        "  add_header X-Request-Id $bae_request_id always;",
        *(tls_conf.http_lines(tls) if tls else []),
    ]
    challenge = tls_conf.challenge_location(tls) if tls else []
    for r in routes:
        if r.endpoints:
            out.append(f"  upstream u-{r.key} {{")
            out += [f"    server {e.address} max_fails=1 fail_timeout=5s;" for e in r.endpoints]
            out.append(f"    keepalive {settings.keepalive}; keepalive_timeout {int(settings.keepalive_timeout * 1000)}ms;")
            out.append("  }")
    out += [
        "  server {",
        f"    listen {listen} default_server backlog=4096;",
        "    server_name _;",
        f"    access_log {logs}/_unknown.log bae buffer=32k flush=1s;",
        *challenge,
        f"    location / {{ default_type text/html; return 404 {_quote(page(404))}; }}",
        "  }",
    ]
    for r in routes:
        log_path = f"{logs}/{router_log_name(r.app, r.deployment)}"
        redirected = tls.redirected(r.key) if tls else ()
        if redirected:
            out += tls_conf.redirect_server(tls, listen, redirected, log_path)
        hostnames = [h for h in r.hostnames if h not in redirected]
        if not hostnames:
            continue
        out += [
            "  server {",
            f"    listen {listen};",
            f"    server_name {' '.join(hostnames)};",
            f"    access_log {log_path} bae buffer=64k flush=1s;",
            *_error_pages(),
            *challenge,
        ]
        if r.endpoints:
            out.append(f"    location / {{ proxy_pass http://u-{r.key}; }}")
        else:
            out.append("    location / { return 503; }")
        out.append("  }")
    if tls:
        out += tls_conf.https_servers(tls, routes, logs, _error_pages())
    out.append("}")
    return "\n".join(out) + "\n"


def _worker_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        try:
            pwd.getpwnam(name)
            return f"{name} {group}"
        except KeyError:
            continue
    return None


class Nginx:
    """This installation's nginx: adopt or start, apply a checked configuration, signal, stop."""

    def __init__(self, prefix: Path, logs: Path, settings: config.Router) -> None:
        """``settings``: the [router] section (nginx binary, host, http_port, limits)."""
        self.binary = settings.nginx
        self.prefix = Path(prefix)
        self.logs = Path(logs)
        self.host, self.port = settings.host, settings.http_port
        self.listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.https_port = settings.https_port
        self.https_listen = (f"[{self.host}]:{self.https_port}" if ":" in self.host
                             else f"{self.host}:{self.https_port}") if self.https_port else ""
        self.settings = settings
        self.user = _worker_user()
        self.conf = self.prefix / "nginx.conf"
        self.pid_file = self.prefix / "nginx.pid"
        self.pid: int | None = None  # the master process, started or adopted
        self._child: subprocess.Popen | None = None  # when this process started it (to reap it)
        self.current = ""
        self._lock = threading.Lock()
        for sub in ("logs", *(f"tmp/{kind}" for kind in _TEMP_KINDS)):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.user:
            uid = pwd.getpwnam(self.user.split()[0]).pw_uid
            for kind in _TEMP_KINDS:
                os.chown(self.prefix / "tmp" / kind, uid, -1)

    def render(self, routes: list[Route], tls: tls_conf.TlsView | None = None) -> str:
        return render(routes, prefix=self.prefix, logs=self.logs, listen=self.listen, settings=self.settings,
                      user=self.user, tls=tls)

    def _check(self, path: Path) -> str | None:
        """nginx -t on ``path``: None if fine, else nginx's complaint."""
        proc = subprocess.run([self.binary, "-t", "-q", "-p", str(self.prefix), "-c", str(path)],
                              capture_output=True, text=True)
        return None if proc.returncode == 0 else (proc.stderr.strip() or f"nginx -t exited {proc.returncode}")

    def _write_checked(self, text: str) -> str | None:
        candidate = self.prefix / "nginx.conf.new"
        candidate.write_text(text)
        problem = self._check(candidate)
        if problem is None:
            os.replace(candidate, self.conf)
        return problem

    # -- which nginx is ours ------------------------------------------------------

    def _ours(self, pid: int) -> bool:
        """Is ``pid`` the master of an nginx run with this prefix? (A pid file may outlive its
        process and the pid be reused; nginx's title names the prefix it was started with.)"""
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return title.startswith(b"nginx: master process ") and f" -p {self.prefix} ".encode() in title

    def masters(self) -> list[int]:
        """Every running nginx master of this installation (see bae.pids.find_running)."""
        return find_running(self.pid_file, self._ours)

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._child is not None:
            return self._child.poll() is None
        return self._ours(self.pid)

    def signal(self, signum: int) -> bool:
        """Send the master a signal (reload, reopen logs, stop). False if it is gone."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
            return True
        except ProcessLookupError:
            return False

    # -- life cycle ----------------------------------------------------------------

    def adopt(self) -> bool:
        """Take over this installation's running nginx, if there is one; it keeps serving its
        configuration until ``apply`` replaces it. Extra masters (never made by bae itself, but
        possible by hand) are stopped gracefully: never two."""
        pids = self.masters()
        if not pids:
            return False
        self.pid, self._child = pids[0], None
        for extra in pids[1:]:
            log.warning("router: a second nginx (pid %d) of this installation runs; stopping it", extra)
            _quit(extra)
        problem = self._check(self.conf) if self.conf.exists() else "its configuration file is missing"
        if problem:  # it still serves what it loaded; the next apply writes a checked configuration
            log.warning("router: the running nginx's configuration does not pass nginx -t: %s", problem)
            self.current = ""
        else:
            self.current = self.conf.read_text()
        log.info("router: adopted the running nginx (pid %d) on %s", self.pid, self.listen)
        return True

    def check_port(self) -> None:
        """Refuse to start when something else holds a port (before anything else starts)."""
        for port, listen, key in ((self.port, self.listen, "http_port"), (self.https_port, self.https_listen, "https_port")):
            if not port:
                continue
            try:
                probe = socket.socket()
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((self.host if self.host != "0.0.0.0" else "", port))
                probe.close()
            except OSError as exc:
                raise Unavailable(f"the router cannot listen on {listen}: {exc.strerror}",
                                  f"Stop what uses that port, or set router.{key}.") from None

    def start(self, routes: list[Route], tls: tls_conf.TlsView | None = None) -> None:
        """Start nginx with ``routes`` (after ``adopt`` found none running)."""
        self.check_port()
        text = self.render(routes, tls)
        # No `nginx -t` here: it binds and listens on the router's port for a moment, so a
        # client arriving then is accepted and reset. nginx checks the file itself as it starts.
        candidate = self.prefix / "nginx.conf.new"
        candidate.write_text(text)
        os.replace(candidate, self.conf)
        self.current = text
        errors = self.prefix / "logs" / "stderr.log"
        with open(errors, "wb") as stderr:  # not a pipe: nginx outlives this process
            self._child = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True)  # signals to `bae serve`'s group (^C) do not reach it
        self.pid = self._child.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._child.poll() is not None:
                raise Unavailable(f"nginx refused to start: {errors.read_text(errors='replace').strip()}",
                                  "Fix what nginx names above (the router settings are in the TOML config file).")
            try:
                with socket.create_connection(("127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host, self.port), 0.2):
                    break
            except OSError:
                time.sleep(0.05)
        log.info("router: nginx (pid %d) listening on %s", self.pid, self.listen)

    def _workers(self) -> set[int]:
        try:
            return {int(p) for p in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()}
        except (OSError, ValueError):
            return set()

    @staticmethod
    def _shutting_down(pid: int) -> bool:
        """An old worker after a reload: it takes no new connections but finishes the ones it has."""
        try:
            return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False  # gone

    @staticmethod
    def _retired(pid: int) -> bool:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True  # gone
        return b"shutting down" in title or not title  # empty: exited, not yet reaped

    def apply(self, routes: list[Route], tls: tls_conf.TlsView | None = None) -> bool:
        """Make nginx route ``routes``: check, swap, reload gracefully. False if nginx refused it."""
        with self._lock:
            text = self.render(routes, tls)
            if text == self.current:
                return True
            problem = self._write_checked(text)
            if problem:
                log.error("router: nginx refused the new configuration, keeping the old one: %s", problem)
                return False
            before = self._workers()
            if not self.signal(signal.SIGHUP):
                return False
            # The new configuration serves every new connection once new workers run and every
            # old worker has stopped accepting (it is "shutting down", finishing in-flight requests).
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if (self._workers() - before) and all(self._retired(pid) for pid in before):
                    break
                time.sleep(0.005)
            self.current = text
            return True

    def wait_drained(self, timeout: float = 10.0) -> bool:
        """Wait until the workers of older configurations have finished their requests and exited.

        A request an old worker took just before a reload still goes to the units of the old
        configuration; those units must not stop before it is answered."""
        deadline = time.monotonic() + timeout
        while any(self._shutting_down(pid) for pid in self._workers()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def reopen_logs(self) -> bool:
        """Have nginx reopen its access logs (after they were moved aside); False if it is not running."""
        return self.signal(signal.SIGUSR1)

    def stop(self) -> bool:
        """Stop this installation's nginx gracefully (in-flight requests finish), whether this
        process started it or adopted it. False if none was running."""
        pids = [self.pid] if self.alive() else self.masters()
        for pid in pids:
            if self._child is not None and pid == self._child.pid:
                self._child.send_signal(signal.SIGQUIT)
                try:
                    self._child.wait(15)
                except subprocess.TimeoutExpired:
                    self._child.kill()
                    self._child.wait()
            else:
                _quit(pid)
        self.pid, self._child = None, None
        return bool(pids)


def _quit(pid: int, timeout: float = 15.0) -> None:
    """Graceful stop of an nginx master that is not our child: SIGQUIT, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if not title:  # exited; a zombie until its parent reaps it
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
