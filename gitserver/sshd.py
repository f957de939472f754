"""The SSH server: policy (who gets in, which requests are allowed) and the
accept loop. Each connection gets a thread; each session channel gets a
thread, so one slow client never blocks another.

paramiko calls the ``check_*`` methods on its transport thread: they only
decide and record, the work happens in ``gitserver.session``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import paramiko

from bae.model import User
from gitserver.hostkey import host_fingerprint, load_host_key
from gitserver.keys import fingerprint
from gitserver.session import Request, Session, SessionContext

__all__ = ["SSHServer"]

log = logging.getLogger("bae.ssh")


class _Policy(paramiko.ServerInterface):
    """Public-key auth against the registered keys; session channels only."""

    def __init__(self, lookup, peer: str) -> None:
        self.lookup = lookup
        self.peer = peer
        self.user: User | None = None
        self.key_fp = ""
        self.requests: dict[int, Request] = {}
        self.ready: dict[int, threading.Event] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        fp = fingerprint(key.asbytes())
        user = self.lookup(fp)
        if user is None:
            log.info("ssh %s: key %s is not registered", self.peer, fp)
            return paramiko.AUTH_FAILED
        self.user, self.key_fp = user, fp
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            log.info("ssh %s: refused %s channel", self.peer, kind)
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.requests[chanid] = Request()
        self.ready[chanid] = threading.Event()
        return paramiko.OPEN_SUCCEEDED

    def _start(self, channel, kind: str, data: str | None) -> bool:
        req = self.requests.get(channel.get_id())
        if req is None or req.kind:
            return False
        req.kind, req.data = kind, data
        self.ready[channel.get_id()].set()
        return True

    def check_channel_exec_request(self, channel, command: bytes) -> bool:
        return self._start(channel, "exec", command.decode("utf-8", "replace"))

    def check_channel_shell_request(self, channel) -> bool:
        return self._start(channel, "shell", None)

    def check_channel_subsystem_request(self, channel, name: str) -> bool:
        return self._start(channel, "subsystem", name)

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes) -> bool:
        req = self.requests.get(channel.get_id())
        if req is None:
            return False
        req.pty = (term, width, height)
        return True

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight) -> bool:
        req = self.requests.get(channel.get_id())
        if req is not None and req.pty:
            req.pty = (req.pty[0], width, height)
            if req.on_resize:
                req.on_resize(width, height)
        return True

    def check_channel_env_request(self, channel, name, value) -> bool:
        return False  # also keeps git on protocol v0, which dulwich serves fully

    def check_port_forward_request(self, address, port) -> bool:
        log.info("ssh %s: refused port forwarding to %s:%s", self.peer, address, port)
        return False

    def check_global_request(self, kind, msg) -> bool:
        return False

    def check_channel_direct_tcpip_request(self, chanid, origin, destination) -> int:
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_x11_request(self, *args) -> bool:
        return False

    def check_channel_forward_agent_request(self, channel) -> bool:
        return False


class SSHServer:
    """Listens on (host, port) and serves git and commands over SSH."""

    def __init__(self, host: str, port: int, host_key_path: Path, context: SessionContext,
                 max_connections: int = 200, idle_timeout: float = 60.0) -> None:
        self.host_key = load_host_key(host_key_path)
        self.fingerprint = host_fingerprint(self.host_key)
        self.context = context
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.address = self._sock.getsockname()[:2]
        self._stopping = threading.Event()
        self._transports: set[paramiko.Transport] = set()
        self._sessions: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = self._sock.accept()
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                log.warning("ssh %s:%s: refused, %d connections already open", addr[0], addr[1], self.max_connections)
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock, f"{addr[0]}:{addr[1]}"),
                             name=f"ssh-{addr[0]}:{addr[1]}", daemon=True).start()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        transport = None
        policy = None
        started = time.monotonic()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            transport.set_keepalive(30)
            policy = _Policy(self.context.store.user_for_key, peer)
            with self._lock:
                self._transports.add(transport)
            try:
                transport.start_server(server=policy)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                log.info("ssh %s: handshake failed: %s", peer, exc or type(exc).__name__)
                return
            mine: list[threading.Thread] = []
            idle_since = time.monotonic()
            while transport.is_active():
                chan = transport.accept(timeout=min(1.0, self.idle_timeout))
                if chan is None:
                    # A connection that runs nothing holds a slot of max_connections:
                    # after idle_timeout without a channel at work it is closed.
                    mine = [t for t in mine if t.is_alive()]
                    if mine:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > self.idle_timeout:
                        log.info("ssh %s: closed after %.0f s without a command or git request", peer, self.idle_timeout)
                        break
                    continue
                if self._stopping.is_set():
                    chan.close()
                    continue
                thread = threading.Thread(target=self._session, args=(chan, policy, peer),
                                          name=f"session-{peer}", daemon=True)
                with self._lock:
                    self._sessions.add(thread)
                mine.append(thread)
                thread.start()
        except Exception:
            log.exception("ssh %s: connection failed", peer)
        finally:
            if policy is not None:
                who = f"{policy.user.name} (key {policy.key_fp})" if policy.user else "an unauthenticated client"
                log.info("ssh %s: connection of %s closed after %.1f s", peer, who, time.monotonic() - started)
            if transport is not None:
                transport.close()
                with self._lock:
                    self._transports.discard(transport)
            sock.close()
            self._slots.release()

    def _session(self, chan: paramiko.Channel, policy: _Policy, peer: str) -> None:
        try:
            event = policy.ready.get(chan.get_id())
            deadline = time.monotonic() + 30
            while event is not None and not event.wait(0.2):
                if chan.closed or not chan.get_transport().is_active() or time.monotonic() > deadline:
                    event = None
            if event is None:
                chan.close()
                return
            request = policy.requests[chan.get_id()]
            Session(self.context, chan, policy.user, request, peer).run()
        except Exception:
            log.exception("ssh %s: session failed", peer)
            try:
                chan.close()
            except Exception:
                pass
        finally:
            with self._lock:
                self._sessions.discard(threading.current_thread())

    def stop(self, grace: float = 60.0) -> None:
        """Stop accepting; let running sessions finish for up to ``grace`` seconds."""
        self._stopping.set()
        try:
            self._sock.close()
        except OSError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                busy = [t for t in self._sessions if t.is_alive()]
            if not busy:
                break
            time.sleep(0.1)
        with self._lock:
            transports = list(self._transports)
        for t in transports:
            t.close()
