"""``bae serve``: the SSH server, scheduler and router in one foreground process.

It logs one line per connection, push and command to stderr, and on SIGTERM or
SIGINT stops accepting, lets in-flight pushes finish (or refuses them), and exits.
Units, the router's nginx and (swarm runtime) the image registry keep running (a crash
leaves them running too): the next `bae serve` adopts them, so restarting the control plane
costs end users nothing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Callable

from bae.console import Console
from bae.errors import BaeError
from buildpacks.runner import remove_stale_build_containers, remove_stale_workdirs
from control.pipeline import Pipeline
from control.platform import Platform
from gitserver.session import SessionContext
from gitserver.sshd import SSHServer
from router import Router
from router.https import Https
from scheduler.loop import Scheduler

__all__ = ["serve", "configure_logging", "ssh_prog", "make_router"]

log = logging.getLogger("bae")

ROUTES_TIMEOUT = 15.0  # seconds the router waits for the scheduler's first look at the units


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("dulwich", "urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # paramiko logs every client that hangs up as an ERROR; our own line says it.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def ssh_prog(platform: Platform) -> str:
    """How users reach the command table: ``ssh -p PORT bae@HOST``."""
    port = platform.settings.ssh.port
    return f"ssh {'' if port == 22 else f'-p {port} '}bae@{platform.public_host}"


def _clean_after_crash(platform: Platform, pipeline: Pipeline) -> None:
    """What a killed ``bae serve`` left mid-push: builds, quarantines, temp dirs."""
    builds = pipeline.recover()
    debris = platform.repos.sweep() + remove_stale_workdirs(platform.instance)
    if builds or debris:
        log.info("cleaned up after an earlier run: %d interrupted build(s) kept with their output, "
                 "%d quarantine or temporary director(ies) removed", builds, debris)


def make_router(platform: Platform) -> Router:
    """The installation's router (its nginx may be running already: it outlives `bae serve`)."""
    settings = platform.settings
    https = None
    if settings.router.https_port:
        https = Https(platform.store, settings.router, settings.tls, base_domain=settings.base_domain,
                      tls_dir=platform.data / "tls")
    return Router(platform.store, settings.router, base_domain=settings.base_domain, prefix=platform.data / "router",
                  access_logs=platform.logs.router_root, max_log_mb=settings.logs.router_max_mb, https=https)


def serve(platform: Platform, console: Console, run_command: Callable[..., int]) -> int:
    """Run until SIGTERM/SIGINT. ``run_command(caller, argv, stdin, stdout, stderr, request)`` runs one
    command line of an SSH client (the command table's dispatch)."""
    configure_logging()
    settings = platform.settings
    stop = threading.Event()
    prog = ssh_prog(platform)
    pipeline = Pipeline(platform)
    _clean_after_crash(platform, pipeline)  # before the scheduler fails what was left running
    platform.runtime.serve(settings)  # the swarm runtime's registry (and its watch), heartbeat; nothing for docker
    platform.runtime.report = lambda app, dep, text: (log.info("%s/%s: %s", app, dep, text),
                                                      platform.logs.event(app, dep, "scheduler", text))
    router = make_router(platform)
    router.start()
    scheduler = Scheduler(platform.store, settings, platform.runtime, platform.logs, platform.wake_socket,
                          on_routes=router.sync, before_stop=router.drain)
    scheduler.start()
    router.wait_synced(ROUTES_TIMEOUT)  # a new nginx starts with every up unit in its table
    from addons.healer import Healer

    healer = Healer(platform, platform.addons)
    platform.addons_healer = healer
    healer.start()
    context = SessionContext(platform.store, platform.repos, pipeline, run_command, prog,
                             max_push_size=settings.git.max_push_bytes)
    ssh = SSHServer(settings.ssh.host, settings.ssh.port, platform.data / "ssh_host_ed25519_key",
                    context, settings.ssh.max_connections, settings.ssh.idle_timeout)

    def on_signal(signum, frame) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    try:
        stale = remove_stale_build_containers(platform.instance)
        stale += platform.runtime.remove_all_oneoffs()
        if stale:
            log.info("removed %d build and one-off container(s) left by an earlier run", stale)
    except BaeError as exc:  # Docker down: builds will say so when they run
        log.warning("could not look for stale build containers: %s", exc.message)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ssh.start()
    console.step(f"bae is serving (data in {settings.data_dir}, settings from {settings.source})")
    console.detail(f"SSH:  {ssh.address[0]}:{ssh.address[1]}  host key {ssh.fingerprint}")
    console.detail(f"HTTP: {settings.router.host}:{settings.router.http_port}  (apps at APP.{settings.base_domain})")
    if settings.router.https_port:
        console.detail(f"HTTPS: {settings.router.host}:{settings.router.https_port}  (certificates: certs APP)")
    for dep in platform.store.deployments():
        if dep.release_version:
            console.detail(f"      {dep.slug}: {platform.web_url(dep.app, dep.name)}")
    console.detail(f"Try:  {prog} help")
    log.info("ssh listening on %s:%s, host key %s", ssh.address[0], ssh.address[1], ssh.fingerprint)
    while not stop.wait(1):
        pass
    ssh.stop(grace=60)
    healer.stop()
    scheduler.stop()
    router.close()
    platform.runtime.shutdown()
    log.info("stopped (units, the router and any image registry keep running; the next bae serve adopts them)")
    return 0
