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
from pathlib import Path
from typing import Callable

from bae.console import ERROR, Steps
from bae.errors import BaeError, DeployFailed
from buildpacks.runner import BuildRequest, run_build
from buildpacks.stack import build_stack, resolve, stack_exists, stack_tag
from control.deploy import deploy_lock, roll_out
from control.platform import Platform

__all__ = ["Pipeline", "BuildLog"]

log = logging.getLogger("bae.pipeline")


class BuildLog(Steps):
    """Lines for the pusher (live) and for the build's stored log.

    With a ``path``, each line is also appended to that file as it comes, so the
    output of a build that ``bae serve`` did not live to finish survives it
    (``Pipeline.recover`` stores it with the build).
    """

    def __init__(self, progress, path: Path | None = None) -> None:
        self.progress = progress
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", errors="replace")

    def out(self, text: str = "") -> None:
        with self._lock:
            self.lines.append(text)
            if self._file is not None:
                self._file.write(text + "\n")
                self._file.flush()  # in the kernel's hands: survives a kill -9 of this process
        self.progress(text)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

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
        live = self.live_log(build.id)
        out = BuildLog(progress, live)
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
            live.unlink(missing_ok=True)
            log.info("build %s #%d failed after %.1f s: %s", dep.slug, build.number,
                     time.monotonic() - started, exc.message)
            raise DeployFailed(exc.message) from None
        except BaseException:
            out.error("Internal error in the platform; the push was rejected and nothing changed.")
            store.finish_build(build, "failed", out.text, error="internal error",
                               keep=self.platform.settings.build.keep_builds)
            live.unlink(missing_ok=True)
            raise
        finally:
            out.close()
        store.finish_build(build, "succeeded", out.text, image=built.image, process_types=built.process_types,
                           reuse=built.reuse, keep=self.platform.settings.build.keep_builds,
                           stack=built.stack, stack_reason=built.stack_reason)
        live.unlink(missing_ok=True)
        log.info("build %s #%d succeeded in %.1f s", dep.slug, build.number, time.monotonic() - started)

    def live_log(self, build_id: int) -> Path:
        """Where a running build's output is appended as it comes."""
        return self.platform.data / "run" / "builds" / f"{build_id}.log"

    def recover(self) -> int:
        """Mark builds a crashed ``bae serve`` left running as interrupted, keeping their output.

        Called at start-up, before any push can start a build. Returns how many there were.
        """
        store = self.platform.store
        interrupted = store.running_builds()
        for build in interrupted:
            live = self.live_log(build.id)
            text = live.read_text(errors="replace") if live.exists() else ""
            text += f"{ERROR}Interrupted: bae serve stopped during this build; the push was not applied.\n"
            store.finish_build(build, "failed", text, error="interrupted: bae serve stopped during the build")
            live.unlink(missing_ok=True)
            log.info("build #%d (id %d) was interrupted by a stop of bae serve; its output is kept",
                     build.number, build.id)
        for stray in (self.platform.data / "run" / "builds").glob("*.log"):
            stray.unlink(missing_ok=True)  # builds that finished, or were deleted since
        return len(interrupted)

    @staticmethod
    def _check_connected(out: BuildLog) -> None:
        if out.cancelled:
            raise DeployFailed("the push was cancelled: the client disconnected")

    def build(self, dep, build, source, out: BuildLog):
        """Run the buildpacks over the pushed commit; returns the BuildResult (image, process types)."""
        platform = self.platform
        settings = platform.settings.build
        choice = resolve(settings, dep.stack, source.read)
        out.step(f"Stack {choice.stack}" + (f" (Python {choice.python})" if choice.python else "") + f": {choice.reason}")
        if choice.warning:
            out.error("Warning: " + choice.warning)
        stack = stack_tag(settings, choice.stack)
        if not stack_exists(stack):
            out.step(f"Building the {choice.stack} stack image (its first use on this platform; a few minutes)")
            build_stack(settings, out.detail, choice.stack)
        request = BuildRequest(
            app=dep.app, deployment=dep.name, number=build.number, source=source,
            buildpacks=dep.buildpacks, trusted_buildpacks=dep.buildpacks_admin,
            config=platform.build_config(dep), cache_dir=platform.cache_dir(dep),
            repository=platform.image_repository(dep), instance=platform.instance,
            stack=stack, stack_name=choice.stack, settings=settings,
            previous=platform.store.last_successful_build(dep),
            tarball_store=platform.data / "build-store" / "npm",
        )
        built = run_build(request, out)
        built.stack, built.stack_reason = choice.stack, choice.reason
        return built

    def release(self, dep, build, built, out: BuildLog) -> None:
        """Release vN (image, config snapshot, process types), its release phase, and the rollout."""
        platform = self.platform
        roll_out(
            platform, dep, image=built.image, config=platform.build_config(dep),
            process_types=built.process_types, description=f"deploy {build.commit[:7]}", user=build.user,
            out=out, build_id=build.id, commit=build.commit)
