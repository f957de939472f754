"""One-off units: `run APP CMD` and the release phase.

A one-off unit is a container of a release's image, config and plan, outside
the formation (label ``bae.role=oneoff``, so the reconcile loop leaves it
alone). It runs the command through bae-launch (profile.d, bash -c), streams
its output — interactively with a TTY when asked — and is removed when done;
its exit code is the caller's.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

import docker.errors
from docker.utils.socket import frames_iter

from bae.errors import BaeError
from scheduler.runtime_docker import DockerRuntime

__all__ = ["OneOff", "run_oneoff"]


@dataclass
class OneOff:
    app: str
    deployment: str
    release: int
    image: str
    command: str
    env: dict
    memory: str
    cpu: float
    pids: int
    name: str = "run"  # run.1234 / release
    ca_bundle: str = ""
    tty: bool = False
    size: tuple[int, int] | None = None  # columns, rows

    @classmethod
    def for_release(cls, settings, dep, release, command: str, **options) -> OneOff:
        """A one-off unit of ``release``: its image and config, the default plan's limits."""
        plan = settings.plans[settings.scheduler.default_plan]
        return cls(dep.app, dep.name, release.version, release.image, command, dict(release.config),
                   plan.memory, plan.cpu, plan.pids, ca_bundle=settings.build.ca_bundle, **options)


def _create(runtime: DockerRuntime, job: OneOff, stdin: bool) -> str:
    unit = f"{job.name}.{secrets.randbelow(9000) + 1000}"
    return runtime.create(
        app=job.app, deployment=job.deployment, unit=unit, release=job.release, image=job.image, command=job.command,
        env={"TERM": "xterm", **job.env} if job.tty else job.env, memory=job.memory, cpu=job.cpu, pids=job.pids,
        ca_bundle=job.ca_bundle, tty=job.tty, stdin_open=stdin,
        labels={"bae.role": "oneoff", "bae.app": job.app, "bae.deployment": job.deployment,
                "bae.release": str(job.release)},
    )


def run_oneoff(runtime: DockerRuntime, job: OneOff, *, stdin: Callable[[int], bytes] | None,
               stdout: Callable[[bytes], None],
               stderr: Callable[[bytes], None], timeout: float | None = None,
               resize: Callable[[Callable[[int, int], None]], None] | None = None,
               alive: Callable[[], bool] = lambda: True) -> int:
    """Run ``job`` to completion; returns its exit code (the container is removed in every case)."""
    cid = _create(runtime, job, stdin is not None)
    try:
        return _run(runtime, cid, job, stdin, stdout, stderr, timeout, resize, alive)
    except docker.errors.APIError as exc:
        raise BaeError(f"the one-off unit failed: {exc.explanation or exc}") from None
    finally:
        try:
            runtime.api.remove_container(cid, force=True)
        except docker.errors.APIError:
            pass


def _run(runtime: DockerRuntime, cid: str, job: OneOff, stdin, stdout, stderr, timeout, resize, alive) -> int:
    sock = runtime.api.attach_socket(cid, params={"stdin": 1 if stdin is not None else 0, "stdout": 1,
                                                  "stderr": 1, "stream": 1})
    raw = getattr(sock, "_sock", sock)
    runtime.api.start(cid)
    if job.tty and job.size:
        try:
            runtime.api.resize(cid, height=job.size[1], width=job.size[0])
        except docker.errors.APIError:
            pass
    if resize is not None:
        resize(lambda w, h: _safe_resize(runtime, cid, w, h))
    if stdin is not None:
        threading.Thread(target=_pump_stdin, args=(stdin, raw, not job.tty), daemon=True).start()
    reader = threading.Thread(target=_pump_output, args=(raw, job.tty, stdout, stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout if timeout else None
    while reader.is_alive():
        reader.join(0.2)
        if (deadline and time.monotonic() > deadline) or not alive():
            try:
                runtime.api.kill(cid)
            except docker.errors.APIError:
                pass  # it ended by itself meanwhile
            reader.join(5)
            if deadline and time.monotonic() > deadline:
                stderr(f"the command ran longer than {timeout:.0f} s and was stopped\n".encode())
            return 124 if deadline and time.monotonic() > deadline else 130
    result = runtime.api.wait(cid, timeout=30)
    return int(result.get("StatusCode", 1))


def _safe_resize(runtime: DockerRuntime, cid: str, width: int, height: int) -> None:
    try:
        runtime.api.resize(cid, height=height, width=width)
    except docker.errors.APIError:
        pass


def _pump_stdin(read: Callable[[int], bytes], sock: socket.socket, close_on_eof: bool) -> None:
    """Copy what the user types (or pipes) to the unit. Without a TTY, EOF closes the unit's
    stdin (so `cat` ends); with one, EOF is the terminal's business (^D), and closing would hang it up."""
    try:
        while True:
            data = read(65536)
            if not data:
                break
            sock.sendall(data)
    except OSError:
        return
    if close_on_eof:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _pump_output(sock: socket.socket, tty: bool, stdout, stderr) -> None:
    try:
        if tty:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                stdout(data)
        for stream, data in frames_iter(sock, tty=False):
            (stderr if stream == 2 else stdout)(data)
    except OSError:
        return
