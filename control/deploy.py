"""Releasing: the deploy lock and every operation that makes a release or removes a deployment.

A push (the pipeline), a config change and a rollback each record release vN,
run its release phase and roll it out with zero downtime through ``roll_out``,
holding the deployment's deploy lock (``deploy_lock``; the git server takes it
through the pipeline for the whole push). The rollout itself is the
scheduler's in `bae serve`: ``roll_out`` hands it the release through the store
and the wake socket, shows the scheduler's events as they come, and reads the
outcome where the scheduler writes it: the release's status in the store.
Commands only parse their arguments and format the results.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from typing import Callable, Iterator

from bae.console import Steps
from bae.errors import BaeError, DeployFailed, Invalid, Unavailable
from bae.model import App, Deployment, Release, deployment_key
from control.platform import Platform
from scheduler.oneoff import run_oneoff
from scheduler.plan import rollout_limit
from scheduler.runtime import OneOff

__all__ = ["deploy_lock", "roll_out", "run_release_phase", "prune_images", "change_config", "rollback",
           "destroy_deployment", "destroy_app"]

log = logging.getLogger("bae.deploy")

OUTCOME_POLL = 0.1  # seconds between looks at a deploying release's status


@contextlib.contextmanager
def deploy_lock(platform: Platform, app: str, deployment: str,
                waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Serialise the release-making operations on one deployment (across threads and processes).
    ``waiting()`` is called when another one holds it."""
    fd = os.open(platform.data / "locks" / f"{deployment_key(app, deployment)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_release_phase(platform: Platform, dep: Deployment, release: Release, out: Steps) -> None:
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

    try:
        code = run_oneoff(platform.runtime, job, stdin=None, stdout=write, stderr=write,
                          timeout=platform.settings.scheduler.release_timeout,
                          alive=lambda: not getattr(out, "cancelled", False))
    except DeployFailed:
        raise
    except BaeError as exc:  # it never ran (e.g. no node of the cluster can take its one-off unit)
        platform.logs.event(dep.app, dep.name, "deploy", f"release command did not run for v{release.version}: "
                                                         f"{exc.message}")
        raise DeployFailed(f"the release command did not run: {exc.message}",
                           (exc.hint + " " if exc.hint else "") + "The previous release keeps serving.") from None
    if pending:
        out.detail(pending.decode("utf-8", "replace"))
    platform.logs.event(dep.app, dep.name, "deploy", f"release command exited {code} for v{release.version}")
    if code != 0:
        raise DeployFailed(f"the release command failed (exit {code})",
                           "Its output is above; the release's units were not started.")


def _await_outcome(platform: Platform, dep: Deployment, release: Release, out: Steps) -> None:
    """Hand ``release`` to the scheduler of `bae serve` and wait until the store says how its deploy went,
    showing the scheduler's events for the deployment meanwhile."""
    events = platform.logs.cursor(dep.app, dep.name)
    platform.store.set_target(dep.id, release.version)
    if not platform.notify():
        raise Unavailable("bae serve is not running, so nothing can be deployed now",
                          "Start it (make up); the change is recorded and the next deploy picks it up.")
    settings = platform.settings.scheduler
    limit = rollout_limit(platform.store.formation(dep), release.process_types, settings.boot_timeout,
                          settings.rollout_batch)
    deadline = time.monotonic() + limit
    while True:
        status = platform.store.release(dep, release.version)  # before the events: they are written first
        for entry in events.read():
            if entry.source == "bae" and entry.unit == "scheduler":
                out.detail(entry.text)
        if status.status == "active":
            return
        if status.status == "failed":
            raise DeployFailed(status.error or "the deploy failed", status.hint or "The previous release keeps serving.")
        if time.monotonic() > deadline:
            raise DeployFailed(f"the deploy of v{release.version} did not finish within {limit} s")
        time.sleep(OUTCOME_POLL)


def roll_out(platform: Platform, dep: Deployment, *, image: str, config: dict, process_types: dict, description: str,
             user: str, out: Steps, build_id: int | None = None, commit: str | None = None,
             release_phase: bool = True) -> Release:
    """Create release vN and make it run; on any failure the previous release keeps serving.
    The caller holds the deployment's ``deploy_lock``."""
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
        _await_outcome(platform, dep, release, out)
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


def prune_images(platform: Platform, dep: Deployment) -> int:
    """Remove release images no longer needed: keep those of the last K releases (rollback) and any in use."""
    # imported on use: the command modules import this one, and most commands never load the Docker SDK
    from buildpacks.runner import remove_images

    keep_n = platform.settings.scheduler.keep_releases
    releases = platform.store.releases(dep, limit=1000)
    releases_kept = {r.image for r in releases[:keep_n]} | {r.image for r in releases if r.status in ("active", "pending")}
    keep = set(releases_kept)
    build = platform.store.last_successful_build(dep)
    if build and build.image:
        keep.add(build.image)  # the next build may reuse it (here only: nodes never build)
    removed = remove_images(platform.image_repository(dep), keep)
    platform.runtime.prune_nodes(platform.image_repository(dep), releases_kept)  # the swarm's nodes pulled them too
    return removed


# -- config changes and rollbacks ----------------------------------------------------------


def _roll_config(platform: Platform, dep: Deployment, description: str, user: str, out: Steps) -> bool:
    """Roll ``dep`` to a release of its current code with its config vars as the store has them now.
    False when nothing is deployed (the first deploy takes the vars)."""
    with deploy_lock(platform, dep.app, dep.name,
                     waiting=lambda: out.step(f"Waiting for a deploy of {dep.slug} to finish")):
        active = platform.store.active_release(dep)  # read under the lock: a push may just have made one
        if active is None:
            return False
        roll_out(platform, dep, image=active.image, config=platform.build_config(dep),
                 process_types=active.process_types, description=description, user=user, out=out,
                 build_id=active.build_id, commit=active.commit)
        return True


def change_config(platform: Platform, app: App, scope: int, deployments: list[Deployment],
                  values: dict[str, str | None], *, user: str, out: Steps, restart: bool = True) -> list[str]:
    """Set config vars (a value of None unsets one) on ``app`` (``scope`` 0: shared by its deployments)
    or one deployment's overrides (``scope``: its id), and roll each of ``deployments`` to a release with them.

    All or nothing: when one deployment's rollout fails, the vars go back as they were and every
    deployment already rolled gets a release with them as they were. Returns the keys changed."""
    store = platform.store
    before = store.config_vars(app, scope)
    setting = {k: v for k, v in values.items() if v is not None}
    store.set_config(app, scope, setting)
    changed = list(setting) + store.unset_config(app, scope, [k for k, v in values.items() if v is None])
    what = f"{'set' if setting else 'unset'} {', '.join(changed)}"
    for dep in deployments:
        platform.logs.event(dep.app, dep.name, "api", f"{what} by {user}")
    if not restart:
        out.detail("Recorded; the next deploy uses it (--no-restart).")
        return changed
    rolled: list[Deployment] = []
    for dep in deployments:
        try:
            if _roll_config(platform, dep, what, user, out):
                rolled.append(dep)
        except BaeError as exc:
            store.unset_config(app, scope, [k for k in changed if k not in before])
            store.set_config(app, scope, {k: before[k] for k in changed if k in before})
            for done in rolled:
                out.step(f"Undoing the change on {done.slug}")
                try:
                    _roll_config(platform, done, f"undo {what}", user, out)
                except BaeError as undo:
                    out.error(f"{done.slug}: undoing failed: {undo.message}; it runs with the change until its "
                              "next deploy or config change")
            raise BaeError(f"{dep.slug}: {exc.message}",
                           "The config change was undone; the previous release keeps serving.") from None
    return changed


def rollback_target(platform: Platform, dep: Deployment, version: int | None) -> Release:
    """The release a rollback of ``dep`` goes back to: ``vversion``, or the live one before the current."""
    store = platform.store
    current = store.active_release(dep)
    if version is None:
        earlier = [r for r in store.releases(dep, limit=1000)
                   if r.status in ("superseded", "active") and (current is None or r.version < current.version)]
        if not earlier:
            raise Invalid(f"{dep.slug} has no earlier release to roll back to", f"See `releases {dep.slug}`.")
        target = earlier[0]
    else:
        target = store.release(dep, version)
        if target.status == "failed":
            raise Invalid(f"{target.name} never ran (its deploy failed)", "Pick a release that was live.")
    if current is not None and target.version == current.version:
        raise Invalid(f"{target.name} is the current release already")
    return target


def rollback(platform: Platform, dep: Deployment, target: Release, *, user: str, out: Steps) -> Release:
    """A new release of ``dep`` with ``target``'s image and config vars (no release phase)."""
    out.step(f"Rolling back {dep.slug} to {target.name}")
    with deploy_lock(platform, dep.app, dep.name,
                     waiting=lambda: out.step(f"Waiting for a deploy of {dep.slug} to finish")):
        return roll_out(platform, dep, image=target.image, config=dict(target.config),
                        process_types=target.process_types, description=f"Rollback to {target.name}", user=user,
                        out=out, build_id=target.build_id, commit=target.commit, release_phase=False)


# -- removing deployments -----------------------------------------------------------------------


def destroy_deployment(platform: Platform, dep: Deployment) -> None:
    """Remove a deployment everywhere: units, routes, repo, cache, logs, rows."""
    with deploy_lock(platform, dep.app, dep.name):
        platform.store.destroy_deployment(dep)  # the scheduler stops wanting its units
        platform.notify()
        _remove_units(platform, dep)
        _remove_images(platform, dep)
        platform.repos.destroy(dep.app, dep.name)
        shutil.rmtree(platform.cache_dir(dep), ignore_errors=True)
        platform.logs.remove(dep.app, dep.name)
    (platform.data / "locks" / f"{deployment_key(dep.app, dep.name)}.lock").unlink(missing_ok=True)


def destroy_app(platform: Platform, app: App) -> None:
    for dep in platform.store.deployments(app):
        destroy_deployment(platform, dep)
    if platform.store.addons(app) or (platform.data / "addons" / app.name).exists():
        for addon in platform.store.addons(app):
            platform.store.remove_addon(addon)  # first: the healer must not start them again
        platform.addons.remove_app(app.name)  # containers, network, data and backups
    platform.store.destroy_app(app)
    platform.repos.destroy(app.name)
    shutil.rmtree(platform.data / "cache" / app.name, ignore_errors=True)


def _remove_units(platform: Platform, dep: Deployment) -> None:
    try:
        platform.runtime.remove_all(app=dep.app, deployment=dep.name)
    except BaeError as exc:  # Docker down: the scheduler removes them later (they are orphans)
        log.warning("could not remove the units of %s/%s: %s", dep.app, dep.name, exc.message)


def _remove_images(platform: Platform, dep: Deployment) -> None:
    # imported on use: the command modules import this one, and most commands never load the Docker SDK
    from buildpacks.runner import remove_images

    for attempt in range(3):
        try:
            remove_images(platform.image_repository(dep), force=True)
            return
        except BaeError as exc:  # in use by a unit a reconcile pass started meanwhile, or Docker down
            if attempt == 2:
                log.warning("could not remove the images of %s/%s: %s", dep.app, dep.name, exc.message)
                return
            time.sleep(1)
            _remove_units(platform, dep)
