"""The deploy pipeline: push → build → release → deploy, with progress output.

``Pipeline`` is the git server's deploy hook. It runs between "pack received"
and "refs updated": if it raises, the push is refused and nothing changes.
Every step's output streams to the pusher and is stored as the build's log.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager
from typing import Callable

from bae.console import ERROR, Steps
from bae.errors import BaeError, DeployFailed
from buildpacks.runner import BuildRequest, run_build
from buildpacks.stack import stack_exists, stack_tag
from control.deploy import deploy_lock, roll_out
from control.platform import Platform

__all__ = ["Pipeline", "BuildLog"]

log = logging.getLogger("bae.pipeline")


class BuildLog(Steps):
    """Lines for the pusher (live) and for the build's stored log."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def out(self, text: str = "") -> None:
        with self._lock:
            self.lines.append(text)
        self.progress(text)

    line = out  # a buildpack's output line, as it came

    def error(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(ERROR + part)

    @property
    def cancelled(self) -> bool:
        return bool(getattr(self.progress, "cancelled", False))

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(line + "\n" for line in self.lines)


class Pipeline:
    """Turns a pushed commit into a running release, or refuses it."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def lock(self, app: str, deployment: str, waiting: Callable[[], None]) -> AbstractContextManager[None]:
        """The deploy lock the git server holds around a push (``control.deploy.deploy_lock``)."""
        return deploy_lock(self.platform, app, deployment, waiting)

    def __call__(self, target, old: str, new: str, source, progress) -> None:
        store = self.platform.store
        dep = store.deployment(target.app, target.deployment)
        build = store.start_build(dep, new, old, target.user.name)
        out = BuildLog(progress)
        started = time.monotonic()
        log.info("build %s #%d of %s by %s started", dep.slug, build.number, new[:7], target.user.name)
        out.step(f"Received {new[:7]} for {dep.slug} (build {build.number})")
        try:
            self._check_connected(out)
            built = self.build(dep, build, source, out)
            self._check_connected(out)
            self.release(dep, build, built, out)
        except BaeError as exc:
            if not exc.shown:
                out.error(exc.message)
                if exc.hint:
                    out.error(exc.hint)
            out.error("Push rejected; the previous release keeps serving.")
            store.finish_build(build, "failed", out.text, error=exc.message,
                               keep=self.platform.settings.build.keep_builds)
            log.info("build %s #%d failed after %.1f s: %s", dep.slug, build.number,
                     time.monotonic() - started, exc.message)
            raise DeployFailed(exc.message) from None
        except BaseException:
            out.error("Internal error in the platform; the push was rejected and nothing changed.")
            store.finish_build(build, "failed", out.text, error="internal error",
                               keep=self.platform.settings.build.keep_builds)
            raise
        store.finish_build(build, "succeeded", out.text, image=built.image, process_types=built.process_types,
                           reuse=built.reuse, keep=self.platform.settings.build.keep_builds)
        log.info("build %s #%d succeeded in %.1f s", dep.slug, build.number, time.monotonic() - started)

    @staticmethod
    def _check_connected(out: BuildLog) -> None:
        if out.cancelled:
            raise DeployFailed("the push was cancelled: the client disconnected")

    def build(self, dep, build, source, out: BuildLog):
        """Run the buildpacks over the pushed commit; returns the BuildResult (image, process types)."""
        platform = self.platform
        settings = platform.settings.build
        stack = stack_tag(settings)
        if not stack_exists(stack):
            raise DeployFailed(f"the stack image {stack} has not been built on this platform",
                               "The operator builds it with: bae stack:build (make up does it).")
        request = BuildRequest(
            app=dep.app, deployment=dep.name, number=build.number, source=source,
            buildpacks=dep.buildpacks, trusted_buildpacks=dep.buildpacks_admin,
            config=platform.build_config(dep), cache_dir=platform.cache_dir(dep),
            repository=platform.image_repository(dep), instance=platform.instance,
            stack=stack, settings=settings,
            previous=platform.store.last_successful_build(dep),
        )
        return run_build(request, out)

    def release(self, dep, build, built, out: BuildLog) -> None:
        """Release vN (image, config snapshot, process types), its release phase, and the rollout."""
        platform = self.platform
        roll_out(
            platform, dep, image=built.image, config=platform.build_config(dep),
            process_types=built.process_types, description=f"deploy {build.commit[:7]}", user=build.user,
            out=out, build_id=build.id, commit=build.commit)
