"""Releasing: record release vN, run its release phase, roll it out with zero downtime.

Every new release goes through ``roll_out``: a push (from the pipeline), a
config change, a rollback. The rollout itself is the scheduler's; in `bae serve`
it is called directly, from a `bae` command in another process it is asked for
through the store and the wake socket.
"""

from __future__ import annotations

import logging
import time

from bae.errors import BaeError, DeployFailed, Unavailable
from bae.model import Deployment, Release
from control.platform import Platform
from scheduler.oneoff import run_oneoff
from scheduler.plan import rollout_limit
from scheduler.runtime import OneOff

__all__ = ["roll_out", "run_release_phase", "prune_images"]

log = logging.getLogger("bae.deploy")


def run_release_phase(platform: Platform, dep: Deployment, release: Release, out) -> None:
    """Run the Procfile's ``release:`` command once in a one-off unit of the new image; fail on non-zero."""
    command = release.process_types["release"]
    out.step(f"Running release command: {command}")
    job = OneOff.for_release(platform.settings, dep, release, command, name="release")
    pending = b""

    def write(data: bytes) -> None:
        nonlocal pending
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            out.detail(line.decode("utf-8", "replace"))

    code = run_oneoff(platform.runtime, job, stdin=None, stdout=write, stderr=write,
                      timeout=platform.settings.scheduler.release_timeout,
                      alive=lambda: not getattr(out, "cancelled", False))
    if pending:
        out.detail(pending.decode("utf-8", "replace"))
    platform.logs.event(dep.app, dep.name, "deploy", f"release command exited {code} for v{release.version}")
    if code != 0:
        raise DeployFailed(f"the release command failed (exit {code})",
                           "Its output is above; the release's units were not started.")


def _deploy(platform, dep: Deployment, release: Release, out) -> None:
    if platform.scheduler is not None:
        platform.scheduler.deploy(dep, release, progress=out.detail)
        return
    # another process runs the scheduler: hand it the release and wait for the outcome
    platform.store.set_target(dep.id, release.version)
    if not platform.notify():
        raise Unavailable("bae serve is not running, so nothing can be deployed now",
                          "Start it (make up); the change is recorded and the next deploy picks it up.")
    settings = platform.settings.scheduler
    limit = rollout_limit(platform.store.formation(dep), release.process_types, settings.boot_timeout,
                          settings.rollout_batch)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        current = platform.store.release(dep, release.version)
        if current.status == "active":
            return
        if current.status == "failed":
            raise DeployFailed(current.error or "the deploy failed", "The previous release keeps serving.")
        time.sleep(0.25)
    raise DeployFailed(f"the deploy of v{release.version} did not finish within {limit} s")


def roll_out(platform, dep: Deployment, *, image: str, config: dict, process_types: dict, description: str,
             user: str, out, build_id: int | None = None, commit: str | None = None,
             release_phase: bool = True) -> Release:
    """Create release vN and make it run; on any failure the previous release keeps serving."""
    store = platform.store
    release = store.create_release(dep, image=image, config=config, process_types=process_types,
                                   build_id=build_id, commit=commit, user=user, description=description)
    store.ensure_formation(dep, release.process_types, platform.settings.scheduler.default_plan)
    running = {p: f.quantity for p, f in store.formation(dep).items() if p in release.process_types and f.quantity}
    try:
        if release_phase and "release" in release.process_types:
            run_release_phase(platform, dep, release, out)
        summary = ", ".join(f"{p}={n}" for p, n in sorted(running.items())) or "no units (scale with ps:scale)"
        out.step(f"Launching v{release.version}: {summary}")
        _deploy(platform, dep, release, out)
    except Exception as exc:
        message = exc.message if isinstance(exc, BaeError) else "internal error"
        store.fail_release(release, message)
        platform.notify()  # the scheduler goes back to the previous release at once
        platform.logs.event(dep.app, dep.name, "deploy", f"v{release.version} ({description}) by {user} failed: {message}")
        raise
    platform.logs.event(dep.app, dep.name, "deploy", f"v{release.version} ({description}) by {user} is live")
    message = f"Launched v{release.version}"
    if running.get("web"):
        message += f": {platform.web_url(dep.app, dep.name)}"
    out.step(message)
    try:
        prune_images(platform, dep)
    except Exception as exc:  # never fail a deploy for housekeeping
        log.warning("pruning old images of %s failed: %s", dep.slug, exc)
    return release


def prune_images(platform, dep: Deployment) -> int:
    """Remove release images no longer needed: keep those of the last K releases (rollback) and any in use."""
    # imported on use: the config and releases commands import this module, other commands should not load Docker
    from buildpacks.runner import remove_images

    keep_n = platform.settings.scheduler.keep_releases
    releases = platform.store.releases(dep, limit=1000)
    keep = {r.image for r in releases[:keep_n]} | {r.image for r in releases if r.status in ("active", "pending")}
    build = platform.store.last_successful_build(dep)
    if build and build.image:
        keep.add(build.image)
    return remove_images(platform.image_repository(dep), keep)
