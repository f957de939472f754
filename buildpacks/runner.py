"""Run one build: the buildpacks in a throw-away container, committed to an image.

The container starts from the stack image as user ``bae`` with the source at
/home/bae/app, the deployment's cache at /cache (a host directory no other
deployment sees), the config vars as an env dir, and the buildpacks copied in
(writable, so their ``export`` files work). Its output streams to the pusher.
On success the container is committed as the release image (entrypoint: tini
and bae-launch); the container is removed in every case, also when the build
fails, times out or the pusher disconnects.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from docker.types import Mount

from bae import config
from bae.console import ERROR
from bae.errors import BaeError, DeployFailed, Gone
from bae.model import Build, Source
from bae.unit import APP_DIR, CA_PATH, ENTRYPOINT, HOME, UID, USER
from bae import mirrors
from buildpacks.catalog import BUILTINS, Buildpack, fetch
from buildpacks.engine import client, translated
from buildpacks.procfile import parse_procfile
from buildpacks.reuse import fingerprint, inputs_digest, plan_reuse
from buildpacks.slugignore import slugignore_filter
from buildpacks import layers, tarballs, toolchain

__all__ = ["BuildRequest", "BuildResult", "run_build", "remove_stale_build_containers", "remove_stale_workdirs",
           "remove_images"]

log = logging.getLogger("bae.build")

BUILDER = Path(__file__).resolve().parent / "builder.py"
NPM_CACHE = "npm"  # the deployment's npm cache: /cache/npm in the build (npm_config_cache), seeded from the store
WORKDIR_PREFIX = "bae-build-"  # + the instance id: installations sharing /tmp never touch each other's


@dataclass
class BuildRequest:
    app: str
    deployment: str
    number: int
    source: Source
    buildpacks: tuple[str, ...]  # the deployment's list; empty: detect among the built-ins
    config: dict[str, str]
    cache_dir: Path
    repository: str
    instance: str
    stack: str  # the stack image's tag
    settings: config.Build
    previous: Build | None = None  # the last successful build of this deployment
    trusted_buildpacks: bool = False  # set by an admin: git URLs may name private or loopback hosts
    stack_name: str = "bookworm"  # buildpacks.stack.STACKS
    tarball_store: Path | None = None  # the platform-wide store of registry tarballs (buildpacks.tarballs)

    def container_args(self) -> dict:
        """Name and labels of this build's throw-away container (found by label after a crash)."""
        return {"name": f"bae-{self.instance}-build-{self.app}-{self.deployment}-{self.number}-{secrets.token_hex(3)}",
                "labels": {"bae.platform": self.instance, "bae.role": "build", "bae.app": self.app,
                           "bae.deployment": self.deployment, "bae.build": str(self.number)}}


def _remove_container(container) -> None:
    """Never leave a build container behind; a failure here must not hide the build's own error."""
    try:
        with translated("removing the build container"):
            container.remove(force=True)
    except BaeError as exc:
        log.warning("could not remove build container %s: %s", container.name, exc.message)


@dataclass
class BuildResult:
    image: str
    process_types: dict[str, str]
    reuse: dict | None = None  # what the next build needs to reuse this one's output
    stack: str = ""  # the stack's name and why it was chosen (set by the pipeline)
    stack_reason: str = ""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _add_tree(tar: tarfile.TarFile, src: Path, arcname: str) -> None:
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = UID
        info.uname = info.gname = "bae"
        return info  # modes kept: builder.py runs scripts through their shebang

    tar.add(str(src), arcname=arcname, filter=owned)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid = info.gid = UID
    tar.addfile(info, io.BytesIO(data))


def _build_env(req: BuildRequest, toolchain_home: str = "") -> dict[str, str]:
    s = req.settings
    env = {
        "HOME": HOME, "STACK": f"bae-{req.stack_name}", "LANG": "C.UTF-8",
        "SOURCE_VERSION": req.source.sha, "BAE_APP": req.app, "BAE_DEPLOYMENT": req.deployment,
        "BAE_STACK": req.stack,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
    }
    if s.ca_bundle:
        env.update(SSL_CERT_FILE=CA_PATH, REQUESTS_CA_BUNDLE=CA_PATH, PIP_CERT=CA_PATH, NODE_EXTRA_CA_CERTS=CA_PATH,
                   GIT_SSL_CAINFO=CA_PATH, CURL_CA_BUNDLE=CA_PATH)
    index, registry = mirrors.pip_index_url(s.pip_index_url), mirrors.npm_registry(s.npm_registry)
    if index:
        env["PIP_INDEX_URL"] = env["UV_DEFAULT_INDEX"] = index
    if registry:
        env["npm_config_registry"] = registry
    env["npm_config_cache"] = f"/cache/{NPM_CACHE}"
    if toolchain_home:  # the Node.js + npm the build image holds (buildpacks/toolchain.py)
        env["BAE_NODE_TOOLCHAIN"] = toolchain_home
    return env


def _plan_archive(req: BuildRequest, packs: list[Buildpack], nonce: str, toolchain_home: str = "") -> bytes:
    """The plan, the builder and the buildpacks as the members of a tar archive, without its end: the
    source's archive follows them in the same stream (one copy into the container, not two: each
    costs the engine a mount of the container and an unpacking process)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = []
        for i, bp in enumerate(packs):
            arc = f"tmp/bae/buildpacks/{i}-{bp.name.replace('/', '-').replace('#', '-')}"
            _add_tree(tar, bp.path, arc)
            dirs.append({"name": bp.name, "dir": "/" + arc, "looks_for": bp.looks_for})
        plan = {"mode": "configured" if req.buildpacks else "auto", "buildpacks": dirs, "nonce": nonce,
                "env": _build_env(req, toolchain_home)}
        _add_bytes(tar, "tmp/bae/plan.json", json.dumps(plan).encode())
        _add_bytes(tar, "tmp/bae/builder.py", BUILDER.read_bytes(), 0o755)
        info = tarfile.TarInfo("tmp/bae/env")
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, UID, UID
        tar.addfile(info)
        for key, value in req.config.items():
            _add_bytes(tar, f"tmp/bae/env/{key}", value.encode(), 0o600)
        end = tar.offset  # what close() adds (zero blocks) would end the stream here
    return buf.getvalue()[:end]


def remove_stale_build_containers(instance: str) -> int:
    """Remove build containers a crashed platform left behind (called at start-up)."""
    with translated("cleaning up old build containers"):
        stale = client().containers.list(all=True, filters={"label": [f"bae.platform={instance}", "bae.role=build"]})
        for container in stale:
            container.remove(force=True)
    return len(stale)


def remove_stale_workdirs(instance: str) -> int:
    """Remove the temporary build directories a killed platform left (called at start-up)."""
    stale = list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{instance}-*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def remove_images(repository: str, keep: frozenset[str] | set[str] = frozenset(), *, force: bool = False) -> int:
    """Remove one deployment's release images whose tags are not in ``keep``.

    ``force`` when the deployment is destroyed; otherwise (pruning) an image a unit still
    runs stays. Newest first, by tag: a reused build's image is a child of the one before
    it, and removing the child's last tag also removes the untagged parents."""
    removed = 0
    with translated("removing release images"):
        images = client().images.list(name=repository)
    for image in sorted(images, key=lambda i: i.attrs.get("Created", ""), reverse=True):
        for tag in image.tags:
            if tag in keep:
                continue
            try:
                with translated(f"removing the image {tag}"):
                    client().images.remove(tag, force=force)
                removed += 1
            except BaeError:
                if force:
                    raise
    return removed


class _Watch(threading.Thread):
    """Kills the build container on timeout or when the pusher goes away."""

    def __init__(self, container, timeout: float, out) -> None:
        super().__init__(daemon=True)
        self.container, self.deadline, self.out = container, time.monotonic() + timeout, out
        self.done = threading.Event()
        self.reason: str | None = None

    def run(self) -> None:
        while not self.done.wait(0.5):
            if time.monotonic() > self.deadline:
                self.reason = "timeout"
            elif self.out.cancelled:
                self.reason = "cancelled"
            if self.reason:
                try:
                    with translated("stopping the build"):
                        self.container.kill()
                except BaeError:
                    pass  # it ended by itself meanwhile
                return


COMMIT_CHANGES = [
    f"USER {USER}", f"WORKDIR {APP_DIR}", f"ENV HOME={HOME}",
    "ENTRYPOINT " + json.dumps(ENTRYPOINT), 'CMD ["bash"]', "LABEL bae.role=image",
]


def _process_types(out, procfile: str | None, defaults: dict[str, str]) -> dict[str, str]:
    types, warnings = parse_procfile(procfile) if procfile is not None else ({}, [])
    for warning in warnings:
        out.error(warning)
    out.step("Discovering process types")
    if procfile is not None:
        out.detail(f"Procfile declares types -> {', '.join(types) or '(none)'}")
    defaults = {k: v for k, v in defaults.items() if k not in types}
    if defaults:
        out.detail(f"Default types for buildpack -> {', '.join(defaults)}")
    if not types and not defaults:
        out.error("No process types: add a Procfile with a line like 'web: gunicorn app:app'.")
    return {**defaults, **types}


def _commit(container, req: BuildRequest) -> tuple[str, str]:
    """The build container as release image ``REPOSITORY:bN``; returns that name and the line that
    announces it. Not paused: the container has ended, or is ending once its output has (no process
    of it writes any more)."""
    tag = f"b{req.number}"
    with translated("saving the release image"):
        image = container.commit(repository=req.repository, tag=tag, pause=False, changes=COMMIT_CHANGES + [
            f"LABEL bae.build={req.number}"])  # (the SDK inspects the new image: attrs are current)
        layer = image.history()[0].get("Size", 0)
    return f"{req.repository}:{tag}", _built(f"{req.repository}:{tag}", image.attrs["Size"], layer)


def _built(image: str, size: int, layer: int) -> str:
    return f"Built image {image} ({_mb(size)}, this build's layer {_mb(layer)})"


def _remove_image(name: str) -> None:
    """The release image of a build that failed after all; a failure here must not hide the build's error."""
    try:
        with translated("removing the image of a failed build"):
            client().images.remove(name, force=True)
    except BaeError as exc:
        log.warning("could not remove image %s: %s", name, exc.message)


def _try_reuse(req: BuildRequest, out, fp: str, keep) -> BuildResult | None:
    """The previous build plus a layer of changed files, when that is what a build would produce."""
    prev = req.previous
    if prev is None or not prev.reuse or not prev.image:
        return None
    try:
        old_source = req.source.at(prev.commit)
        plan = plan_reuse(prev.reuse, fp, req.source, old_source, keep)
    except KeyError:  # the previous commit is gone (repository rewritten)
        return None
    if plan is None:
        return None
    try:
        with translated("looking up the previous build's image"):
            previous = client().images.get(prev.image)
    except Gone:
        return None
    names = sorted(plan.changed)
    out.step(f"Code-only change: reusing build {prev.number}'s {', '.join(prev.reuse.get('buildpacks', []))} output "
             "(its inputs are unchanged)")
    out.detail(f"{len(names)} file(s) changed" + (f": {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "")
                                                 if names else ""))
    changed = set(names)
    procfile = req.source.read("Procfile")
    types = _process_types(out, procfile.decode("utf-8", "replace") if procfile is not None else None,
                           prev.reuse.get("defaults", {}))
    tag = f"b{req.number}"
    try:  # one `docker load` of the new layer (buildpacks/layers.py)
        files = req.source.tar(APP_DIR.lstrip("/"), UID, lambda p: p in changed) if names else None
        size = layers.add_layer(previous.id, f"{req.repository}:{tag}", files, {"bae.build": str(req.number)},
                                f"bae: build {req.number}, code-only change on build {prev.number}")
        out.step(_built(f"{req.repository}:{tag}", previous.attrs.get("Size", 0) + size, size))
        return BuildResult(f"{req.repository}:{tag}", types, dict(prev.reuse, depth=plan.depth))
    except layers.Refused as exc:
        log.info("code-only image of %s/%s by docker load refused (%s); committing a container instead",
                 req.app, req.deployment, exc)
    container = None
    try:
        with translated("preparing the release image"):
            container = client().containers.create(prev.image, **req.container_args())
            if names:
                container.put_archive("/", req.source.tar(APP_DIR.lstrip("/"), UID, lambda p: p in changed))
        image, built = _commit(container, req)
        out.step(built)
    finally:
        if container is not None:
            _remove_container(container)
    reuse = dict(prev.reuse, depth=plan.depth)
    return BuildResult(image, types, reuse)


def _seed_tarballs(req: BuildRequest) -> None:
    """Before a build: the registry tarballs other deployments' builds fetched that this one's lockfile
    names (and the package managers and Node.js), in this one's npm cache."""
    if req.tarball_store is None or not req.tarball_store.is_dir():
        return
    if req.source.read("package.json") is None:  # no npm here: a Python app's cache stays as it is
        return
    started = time.monotonic()
    try:
        digests = tarballs.wanted(req.source.read) | tarballs.tools(req.tarball_store)
        added = tarballs.seed(req.tarball_store, req.cache_dir / NPM_CACHE, UID, digests)
    except OSError as exc:  # a cache that cannot be seeded only costs downloads
        log.warning("could not seed the npm cache of %s/%s: %s", req.app, req.deployment, exc)
        return
    if added:
        log.info("npm cache of %s/%s: %d tarballs from the platform store (%.2f s)", req.app, req.deployment, added,
                 time.monotonic() - started)


def _merge_tarballs(req: BuildRequest) -> None:
    """After a successful build (its container gone): the tarballs it fetched, checked, into the store."""
    if req.tarball_store is None:
        return
    started = time.monotonic()
    try:
        taken = tarballs.merge(req.cache_dir / NPM_CACHE, req.tarball_store)
    except OSError as exc:
        log.warning("could not take the npm tarballs of %s/%s into the store: %s", req.app, req.deployment, exc)
        return
    if taken:
        log.info("platform store: %d tarballs from %s/%s (%.2f s)", taken, req.app, req.deployment,
                 time.monotonic() - started)


def run_build(req: BuildRequest, out) -> BuildResult:
    """Build ``req`` into an image; raise DeployFailed (after cleaning up) if it fails."""
    docker = client()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{req.instance}-"))
    container = None
    try:
        packs = [fetch(spec, workdir, req.trusted_buildpacks) for spec in req.buildpacks] if req.buildpacks else list(BUILTINS)
        if req.buildpacks:
            out.step("Using buildpacks: " + ", ".join(req.buildpacks))
        slugignore = req.source.read(".slugignore")
        keep = slugignore_filter((slugignore or b"").decode("utf-8", "replace"))
        fp = fingerprint(req.stack, [str(bp.path) for bp in packs], str(BUILDER), req.config, slugignore,
                         (mirrors.pip_index_url(req.settings.pip_index_url),
                          mirrors.npm_registry(req.settings.npm_registry), req.settings.ca_bundle))
        reused = _try_reuse(req, out, fp, keep)
        if reused is not None:
            return reused
        req.cache_dir.mkdir(parents=True, exist_ok=True)
        os.chown(req.cache_dir, UID, UID)
        _seed_tarballs(req)
        # a Node.js app whose engines an earlier build installed: the stack + that Node.js and npm
        chain = toolchain.lookup(req.tarball_store.parent, req.instance, req.stack, req.source.read) \
            if req.tarball_store is not None else None
        nonce = "@@bae-result-" + secrets.token_hex(8) + "@@"
        # Mounts, not volumes: the docker SDK's volumes= also declares image
        # volumes, which docker commit would copy into the release image.
        mounts = [Mount("/cache", str(req.cache_dir), type="bind")]
        if req.settings.ca_bundle:
            if not os.path.isfile(req.settings.ca_bundle):
                raise BaeError(f"the CA bundle {req.settings.ca_bundle} (build.ca_bundle) does not exist",
                               "Fix the setting, or set it to \"\" to use the stack's own CAs.")
            mounts.append(Mount(CA_PATH, req.settings.ca_bundle, type="bind", read_only=True))
        with translated("creating the build container"):
            container = docker.containers.create(
                chain.image if chain else req.stack, command=["/usr/bin/tini", "-g", "--", "python3", "/tmp/bae/builder.py"],
                user=USER, working_dir=APP_DIR, mounts=mounts,
                **req.container_args(),
                mem_limit=req.settings.memory, memswap_limit=req.settings.memory,
                pids_limit=4096, security_opt=["no-new-privileges"], cap_drop=["ALL"],
            )
            plan = _plan_archive(req, packs, nonce, chain.home if chain else "")
            container.put_archive("/", itertools.chain([plan], req.source.tar(APP_DIR.lstrip("/"), UID, keep)))
            container.start()
        watch = _Watch(container, req.settings.timeout, out)
        watch.start()
        result_line = None
        committed = None
        last_error = None
        pending = b""
        with translated("reading the build output"):
            for chunk in container.logs(stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    if text.startswith(nonce):
                        result_line = text[len(nonce):]
                    else:
                        out.line(text)
                        if text.startswith(ERROR) and last_error is None:
                            last_error = text[len(ERROR):].strip()
            if pending:
                out.line(pending.decode("utf-8", "replace"))
            if result_line is not None and watch.reason is None:
                # the builder printed its result last, and its output has ended: commit now, while the
                # engine finishes the container's exit (a tenth of a second here); the exit is checked below
                committed = _commit(container, req)
            status = container.wait()
            watch.done.set()
            container.reload()
        if committed is not None and (watch.reason or container.attrs["State"].get("OOMKilled")
                                      or status.get("StatusCode") != 0):
            _remove_image(committed[0])
        if watch.reason == "timeout":
            raise DeployFailed(f"the build took longer than {req.settings.timeout} s and was stopped",
                               "Make it faster, or raise build.timeout.")
        if watch.reason == "cancelled":
            raise DeployFailed("the build was stopped: the pusher disconnected")
        if container.attrs["State"].get("OOMKilled"):
            raise DeployFailed(f"the build ran out of memory (limit {req.settings.memory}, setting build.memory)")
        if status.get("StatusCode") != 0 or result_line is None:
            if last_error:  # the buildpack said why; the ng line repeats its first error
                raise DeployFailed(last_error, shown=True)
            raise DeployFailed(f"the build failed (exit {status.get('StatusCode')}) without saying why; see its output above")
        outcome = json.loads(result_line)
        process_types = _process_types(out, outcome["procfile"], outcome["default_process_types"])
        image, built = committed if committed is not None else _commit(container, req)
        out.step(built)
        _remove_container(container)
        container = None
        _merge_tarballs(req)
        if req.tarball_store is not None and outcome.get("toolchain"):  # store: data_dir/build-store
            toolchain.record(req.tarball_store.parent, req.instance, req.stack, req.source.read,
                             outcome["toolchain"], out.step)
        reuse = None
        if outcome.get("inputs") is not None:
            reuse = {"fingerprint": fp, "inputs": outcome["inputs"], "digest": inputs_digest(req.source, outcome["inputs"]),
                     "defaults": outcome["default_process_types"], "buildpacks": outcome["buildpacks"], "depth": 0}
        return BuildResult(image, process_types, reuse)
    finally:
        if container is not None:
            _remove_container(container)
        shutil.rmtree(workdir, ignore_errors=True)
