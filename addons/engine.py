"""The Docker Engine as add-ons use it: the only module of this package that imports docker.

Service images are built, service containers and each app's network are created,
listed (by label, never by ids kept elsewhere), stopped and removed, commands are
run inside service containers and throw-away containers here; docker's errors
become BaeError at this boundary. Called by images.py, service.py, backups.py
and heal.py.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount

from bae.errors import BaeError, Unavailable

__all__ = ["Engine", "ServiceInfo", "engine"]

log = logging.getLogger("bae.addons.engine")

ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


@functools.lru_cache(maxsize=1)
def engine() -> "Engine":
    return Engine()


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Docker errors inside the block become a BaeError saying ``what`` failed."""
    try:
        yield
    except BaeError:
        raise
    except docker.errors.APIError as exc:
        raise BaeError(f"{what} failed: {exc.explanation or exc}") from None
    except ENGINE_ERRORS as exc:
        raise Unavailable(f"{what} failed: the Docker Engine did not answer ({exc.__class__.__name__})",
                          "Start it (make up starts dockerd).") from None


def _epoch(stamp: str | None) -> float | None:
    if not stamp or stamp.startswith("0001-"):
        return None
    return datetime.fromisoformat(stamp).timestamp()


@dataclass
class ServiceInfo:
    """One add-on container as its labels and state say."""
    id: str
    name: str
    labels: dict
    state: str  # running, exited, created, restarting, dead
    ip: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting")


class Engine:
    def __init__(self) -> None:
        with translated("connecting to the Docker Engine"):
            self.client = docker.from_env(version="auto", timeout=600)
            self.api = self.client.api

    # -- images ----------------------------------------------------------------------------

    def image_exists(self, tag: str) -> bool:
        with translated("looking up an image"):
            try:
                self.api.inspect_image(tag)
                return True
            except docker.errors.ImageNotFound:
                return False

    def build(self, path: str, tag: str, buildargs: dict, out: Callable[[str], None]) -> None:
        last: list[str] = []
        with translated(f"building {tag}"):
            for chunk in self.api.build(path=path, tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                                        decode=True, pull=False):
                if "error" in chunk:
                    raise BaeError(f"building {tag} failed: " + chunk["error"].strip() +
                                   ("\n" + "\n".join(last[-10:]) if last else ""))
                text = chunk.get("stream", "").rstrip()
                if text:
                    last.append(text)
                    if text.startswith("Step "):
                        out(text)

    # -- networks --------------------------------------------------------------------------

    def ensure_network(self, name: str, labels: dict, overlay: bool = False) -> str:
        """A network (traffic between its members allowed), created if missing, with a subnet of its
        own configured explicitly (so members may get fixed addresses); its subnet (CIDR).

        ``overlay``: an attachable Swarm overlay network (the swarm runtime): its add-on containers
        on the manager and the app's Swarm services on every node join it; otherwise a bridge."""
        driver = "overlay" if overlay else "bridge"
        extra = {"attachable": True, "scope": "swarm"} if overlay else {}
        with translated(f"creating network {name}"):
            for net in self.api.networks(names=[name]):
                if net.get("Name") == name:
                    return self._subnet(net["Id"])
            # let Docker (the swarm's allocator for an overlay) pick a free subnet, then make it the
            # network's configured one
            probe = self.api.create_network(name, driver=driver, labels=labels, check_duplicate=True, **extra)["Id"]
            subnet = self._subnet(probe)
            deadline = time.monotonic() + 10
            while not subnet and time.monotonic() < deadline:  # the swarm allocates it a moment later
                time.sleep(0.1)
                subnet = self._subnet(probe)
            gateway = ((self.api.inspect_network(probe).get("IPAM") or {}).get("Config") or [{}])[0].get("Gateway")
            self.api.remove_network(probe)
            pool = docker.types.IPAMPool(subnet=subnet, gateway=gateway)
            try:
                self.api.create_network(name, driver=driver, labels=labels, check_duplicate=True,
                                        ipam=docker.types.IPAMConfig(pool_configs=[pool]), **extra)
            except docker.errors.APIError as exc:
                if "already exists" not in str(exc):
                    raise
            return subnet

    def _subnet(self, network_id: str) -> str:
        config = (self.api.inspect_network(network_id).get("IPAM") or {}).get("Config") or [{}]
        return config[0].get("Subnet", "")

    def remove_network(self, name: str) -> None:
        try:
            self.api.remove_network(name)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("removing network %s failed: %s", name, exc)

    # -- service containers ----------------------------------------------------------------

    def create_service(self, *, name: str, image: str, env: dict, labels: dict, data: str, memory: str, cpu: float,
                       pids: int, network: str, alias: str, hostname: str, ip: str | None = None) -> str:
        """Create and start a service container: ``data`` (a host directory) at /bae, the plan's
        limits without swap, on ``network`` only, reachable there as ``alias`` at ``ip`` (fixed, so
        units can name it in /etc/hosts and need no DNS); no published port."""
        with translated(f"starting add-on {alias}"):
            host = self.api.create_host_config(
                mounts=[Mount("/bae", data, type="bind")], mem_limit=memory, memswap_limit=memory,
                nano_cpus=int(cpu * 1e9), pids_limit=pids, security_opt=["no-new-privileges"],
                cap_drop=["ALL"], cap_add=["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"],
                network_mode=network, restart_policy={"Name": "no"}, shm_size="128m",
                log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}))
            endpoint = self.api.create_endpoint_config(aliases=[alias], ipv4_address=ip)
            networking = self.api.create_networking_config({network: endpoint})
            cid = self.api.create_container(image, environment=env, labels=labels, name=name, host_config=host,
                                            networking_config=networking, hostname=hostname, stop_timeout=30)["Id"]
            try:
                self.api.start(cid)
            except Exception:
                self.remove(cid)
                raise
            return cid

    def list_services(self, filters: list[str]) -> list[ServiceInfo]:
        """Every container (running or not) whose labels match ``filters`` (``key=value``)."""
        with translated("listing add-on containers"):
            rows = self.api.containers(all=True, filters={"label": filters})
        found = []
        for row in rows:
            info = ServiceInfo(id=row["Id"], name=(row.get("Names") or ["?"])[0].lstrip("/"),
                               labels=row.get("Labels") or {}, state=row.get("State", "?"))
            for net in ((row.get("NetworkSettings") or {}).get("Networks") or {}).values():
                if net.get("IPAddress"):
                    info.ip = net["IPAddress"]
                    break
            try:
                state = self.api.inspect_container(info.id)["State"]
            except ENGINE_ERRORS:
                continue  # removed meanwhile
            info.started_at, info.finished_at = _epoch(state.get("StartedAt")), _epoch(state.get("FinishedAt"))
            info.oom = bool(state.get("OOMKilled"))
            if not info.running:
                info.exit_code = state.get("ExitCode")
            found.append(info)
        return found

    def start(self, cid: str) -> None:
        with translated("starting an add-on container"):
            self.api.start(cid)

    def stop(self, cid: str, timeout: int = 30) -> None:
        try:
            self.api.stop(cid, timeout=timeout)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("stopping %s failed: %s", cid[:12], exc)

    def remove(self, cid: str) -> None:
        try:
            self.api.remove_container(cid, force=True)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("removing %s failed: %s", cid[:12], exc)

    def logs(self, cid: str, tail: int = 20) -> str:
        try:
            return self.api.logs(cid, tail=tail).decode("utf-8", "replace")
        except ENGINE_ERRORS:
            return ""

    def exec(self, cid: str, cmd: list[str], *, user: str = "root", env: dict | None = None,
             timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``cmd`` inside a running container; (exit code, stdout, stderr)."""
        with translated("running a command in an add-on container"):
            exec_id = self.api.exec_create(cid, cmd, user=user, environment=env or {}, stdout=True, stderr=True)["Id"]
            out, err = self.api.exec_start(exec_id, demux=True)
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        return (code if code is not None else -1, (out or b"").decode("utf-8", "replace"),
                (err or b"").decode("utf-8", "replace"))

    def port_open(self, ip: str | None, port: int, timeout: float = 0.25, greeting: bool = False) -> bool:
        """Whether ``ip:port`` accepts a connection (and, with ``greeting``, sends its first bytes)."""
        if not ip:
            return False
        try:
            with socket.create_connection((ip, port), timeout=timeout) as conn:
                if greeting:
                    conn.settimeout(max(timeout, 1.0))
                    return bool(conn.recv(1))
                return True
        except OSError:
            return False

    def run_throwaway(self, *, image: str, cmd: list[str], mounts: list[tuple[str, str, bool]], labels: dict,
                      memory: str, cpu: float, timeout: float, env: dict | None = None) -> tuple[int, str, str]:
        """Run ``cmd`` in a new container without a network and remove it; (exit code, stdout, stderr)."""
        with translated("running a throw-away container"):
            host = self.api.create_host_config(
                mounts=[Mount(target, source, type="bind", read_only=ro) for source, target, ro in mounts],
                mem_limit=memory, memswap_limit=memory, nano_cpus=int(cpu * 1e9), network_mode="none",
                security_opt=["no-new-privileges"], cap_drop=["ALL"],
                cap_add=["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"], shm_size="128m")
            cid = self.api.create_container(image, command=cmd, labels=labels, host_config=host,
                                            environment=env or {})["Id"]
            try:
                self.api.start(cid)
                try:
                    code = self.api.wait(cid, timeout=timeout)["StatusCode"]
                except requests.exceptions.ReadTimeout:
                    raise BaeError(f"the throw-away container did not finish within {timeout:.0f} s") from None
                out = self.api.logs(cid, stdout=True, stderr=False).decode("utf-8", "replace")
                err = self.api.logs(cid, stdout=False, stderr=True).decode("utf-8", "replace")
                return code, out, err
            finally:
                self.remove(cid)

    def remove_labelled(self, filters: list[str]) -> int:
        with translated("removing containers"):
            rows = self.api.containers(all=True, filters={"label": filters})
        for row in rows:
            self.remove(row["Id"])
        return len(rows)

    # -- interactive -----------------------------------------------------------------------

    def exec_interactive(self, cid: str, cmd: list[str], *, env: dict, user: str, tty: bool,
                         size: tuple[int, int] | None, stdin: Callable[[int], bytes] | None,
                         stdout: Callable[[bytes], None], resize=None, alive=lambda: True) -> int:
        """Run ``cmd`` in the container attached to the caller (with a TTY when asked); its exit code."""
        from docker.utils.socket import frames_iter

        with translated("starting an interactive client"):
            exec_id = self.api.exec_create(cid, cmd, user=user, environment=env, stdin=True, tty=tty,
                                           stdout=True, stderr=True)["Id"]
            sock = self.api.exec_start(exec_id, tty=tty, socket=True)
        raw = getattr(sock, "_sock", sock)
        if tty and size:
            with contextlib.suppress(*ENGINE_ERRORS):
                self.api.exec_resize(exec_id, height=size[1], width=size[0])
        if resize is not None:
            resize(lambda w, h: self._safe_resize(exec_id, w, h))

        def pump_in() -> None:
            try:
                while True:
                    data = stdin(4096) if stdin else b""
                    if not data:
                        break
                    raw.sendall(data)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)

        if stdin is not None:
            threading.Thread(target=pump_in, daemon=True).start()
        try:
            if tty:
                while alive():
                    data = raw.recv(65536)
                    if not data:
                        break
                    stdout(data)
            else:
                for _stream, data in frames_iter(raw, tty=False):
                    stdout(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                raw.close()
        for _ in range(50):
            with translated("reading the client's exit code"):
                info = self.api.exec_inspect(exec_id)
            if not info.get("Running"):
                return info.get("ExitCode") or 0
            time.sleep(0.1)
        return 1

    def _safe_resize(self, exec_id: str, width: int, height: int) -> None:
        with contextlib.suppress(*ENGINE_ERRORS):
            self.api.exec_resize(exec_id, height=height, width=width)

    # -- events ----------------------------------------------------------------------------

    def watch(self, filters: list[str], on_event: Callable[[str, dict], None], stop: threading.Event) -> None:
        """Call ``on_event(action, labels)`` for container events matching ``filters`` until ``stop``."""
        while not stop.is_set():
            try:
                stream = self.api.events(decode=True, filters={"type": "container", "label": filters})
                for event in stream:
                    if stop.is_set():
                        stream.close()
                        return
                    on_event(event.get("Action", ""), (event.get("Actor") or {}).get("Attributes") or {})
            except Exception as exc:  # dockerd restarted: reconnect
                log.info("docker events stream for add-ons ended (%s); reconnecting", exc.__class__.__name__)
                stop.wait(1)
