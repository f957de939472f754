"""The stack images: one per Debian release, each with Python, Node.js, a C
toolchain, uv, tini and the user ``bae``, built without any container registry.

Recipe: ``debootstrap --variant=minbase`` of the stack's suite + ``docker import``
for the base (or the operator's ``build.base_image``), then ``stack/Dockerfile`` on
top, the same for every suite (same user, paths, tini, CA handling). Each tag is a
hash of the recipe and the suite, so a stack is built once and rebuilt only when
its recipe changes. Packages come from the host's Debian mirror
(``bae.mirrors``). Called by ``bae stack:build``, by the pipeline (which
builds a missing stack during the push that needs it, its progress streaming to
the pusher) and by the build runner, which needs the tag.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bae.errors import BaeError, Gone, Invalid, Unavailable
from bae.hostlock import host_lock
from bae.unit import UID
from bae import mirrors
from buildpacks.engine import client, translated

__all__ = ["Stack", "STACKS", "DEFAULT", "SUITE", "stack_tag", "build_stack", "stack_exists", "stack_named", "versions",
           "resolve", "ensure_base", "RECIPE_DIR"]

log = logging.getLogger("bae.stack")

RECIPE_DIR = Path(__file__).resolve().parent / "stack"
DEBOOTSTRAP_INCLUDE = ["ca-certificates", "python3"]


@dataclass(frozen=True)
class Stack:
    """A Debian release as a stack; ``python`` and ``node`` are what its archive ships (checked
    against the built image, whose /etc/bae-stack.json has the final word)."""

    name: str
    python: str
    node: str


# Oldest first: a deployment gets the oldest stack whose Python satisfies its pins.
STACKS = (Stack("bookworm", "3.11.2", "18.20.4"), Stack("trixie", "3.13.5", "20.19.2"),
          Stack("sid", "3.14.10", "24.22.2"))
DEFAULT = STACKS[0].name
SUITE = DEFAULT  # the default stack's Debian release (add-on images build on its base too)


def stack_named(name: str) -> Stack:
    for stack in STACKS:
        if stack.name == name:
            return stack
    raise Invalid(f"there is no stack named '{name[:40]}'",
                  f"Stacks: {', '.join(s.name for s in STACKS)}, or auto (chosen from the app's Python pins).")


def _base_image(build, suite: str) -> str:
    """The operator's registry image for ``suite``, or '' (debootstrap): ``build.base_image`` is the
    default suite's unless it says ``{suite}``."""
    if "{suite}" in build.base_image:
        return build.base_image.replace("{suite}", suite)
    return build.base_image if suite == DEFAULT else ""


def _base_recipe(build, suite: str = DEFAULT) -> dict:
    base_image = _base_image(build, suite)
    mirror = "" if base_image else mirrors.debian_mirror(build.debian_mirror)
    return {"suite": suite, "variant": "minbase", "include": DEBOOTSTRAP_INCLUDE, "mirror": mirror,
            "base_image": base_image}


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _recipe(build, suite: str) -> dict:
    files = {p.name: p.read_text() for p in sorted(RECIPE_DIR.iterdir()) if p.is_file()}
    return {"base": _base_recipe(build, suite), "files": files, "uid": UID}


def stack_tag(build, name: str = DEFAULT) -> str:
    """The image builds and units of stack ``name`` run on: the operator's, or bae's own by recipe hash."""
    if build.stack_image:
        return build.stack_image
    return f"bae/stack:{name}-{_digest(_recipe(build, name))}"


def _base_tag(build, suite: str = DEFAULT) -> str:
    image = _base_image(build, suite)
    if image:
        return image
    digest = _digest(_base_recipe(build, suite))
    return f"bae/stack-base:{digest}" if suite == DEFAULT else f"bae/stack-base-{suite}:{digest}"


def ensure_base(build, out: Callable[[str], None], suite: str = DEFAULT) -> str:
    """The base image of Debian ``suite`` (debootstrap'd, or the operator's registry image), made
    if missing; stacks and service images (add-ons) build on it, so each release is bootstrapped once."""
    base = _base_tag(build, suite)
    if _base_image(build, suite):
        out(f"Building on the configured base image {base}")
    elif not stack_exists(base):
        _debootstrap(build, suite, base, out)
    return base


def stack_exists(tag: str) -> bool:
    """Is the stack image ``tag`` (stack_tag) in the Docker Engine?"""
    try:
        with translated("looking up the stack image"):
            client().images.get(tag)
        return True
    except Gone:
        return False


@functools.lru_cache(maxsize=32)
def _versions_of(tag: str) -> dict:
    with translated("reading the stack's versions"):
        container = client().containers.create(tag, command=["true"], labels={"bae.role": "probe"})
    try:
        with translated("reading the stack's versions"):
            chunks, _ = container.get_archive("/etc/bae-stack.json")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            return json.loads(tar.extractfile(tar.getmembers()[0]).read())
    except (Gone, ValueError, IndexError):  # a stack from before /etc/bae-stack.json
        return {}
    finally:
        with contextlib.suppress(BaeError), translated("removing a probe container"):
            container.remove(force=True)


def versions(build, name: str) -> dict:
    """What stack ``name`` has: {"python", "node", ...}; from the image once built, else from STACKS."""
    stack = stack_named(name)
    known = {"python": stack.python, "node": stack.node}
    tag = stack_tag(build, name)
    if not build.stack_image and stack_exists(tag):
        known.update(_versions_of(tag))
    return known


class _Progress:
    """Passes a long tool's output on without flooding: the first line, then one every few seconds."""

    def __init__(self, out: Callable[[str], None], every: float = 3.0) -> None:
        self.out, self.every, self.last = out, every, 0.0
        self.tail: list[str] = []

    def __call__(self, line: str, force: bool = False) -> None:
        line = line.rstrip()
        if not line:
            return
        self.tail = (self.tail + [line])[-15:]
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.out(line)


def _debootstrap(build, suite: str, tag: str, out: Callable[[str], None]) -> None:
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        raise Unavailable("debootstrap is not installed", "apt-get install debootstrap (make up does this).")
    mirror = mirrors.debian_mirror(build.debian_mirror)
    work = Path(tempfile.mkdtemp(prefix="bae-stack-", dir="/var/tmp"))
    try:
        root = work / "rootfs"
        out(f"Bootstrapping Debian {suite} (minbase) from {mirror}")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
               suite, str(root), mirror]
        progress = _Progress(out)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"))
        for line in proc.stdout:
            progress(line)
        if proc.wait() != 0:
            raise BaeError(f"building the {suite} stack failed at step 'debootstrap' (exit {proc.returncode}):\n"
                           + "\n".join(progress.tail),
                           "Check that the Debian mirror (the host's apt sources, or build.debian_mirror) is "
                           "reachable and the disk has room, then push again.")
        out("Importing the root file system into the Docker Engine")
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        repo, _, version = tag.partition(":")
        with translated("importing the stack base image"):
            client().api.import_image_from_file(str(tarball), repository=repo, tag=version)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _context(build) -> io.BytesIO:
    """The recipe directory plus the platform's CA bundle (ca.crt, empty when there is none)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(RECIPE_DIR.iterdir()):
            if path.is_file():
                tar.add(str(path), arcname=path.name)
        ca = Path(build.ca_bundle).read_bytes() if build.ca_bundle and os.path.isfile(build.ca_bundle) else b""
        info = tarfile.TarInfo("ca.crt")
        info.size, info.mode = len(ca), 0o644
        tar.addfile(info, io.BytesIO(ca))
    buf.seek(0)
    return buf


def build_stack(build, out: Callable[[str], None], name: str = DEFAULT, *, force: bool = False) -> str:
    """Build stack ``name`` unless it exists; return its tag. Failures name the step that failed."""
    stack_named(name)
    tag = stack_tag(build, name)
    if build.stack_image:
        out(f"Using the configured stack image {tag} (build.stack_image); nothing to build")
        return tag
    if not force and stack_exists(tag):
        out(f"Stack image {tag} is up to date")
        return tag
    with host_lock("stack", tag):
        if not force and stack_exists(tag):  # another process built it while we waited
            out(f"Stack image {tag} is up to date")
            return tag
        _build_locked(build, name, tag, out, force)
    return tag


def _build_locked(build, name: str, tag: str, out: Callable[[str], None], force: bool) -> None:
    started = time.monotonic()
    base = _base_tag(build, name)
    if force and not _base_image(build, name):
        _debootstrap(build, name, base, out)
    else:
        ensure_base(build, out, name)
    out(f"Installing Python, Node.js, a C toolchain, uv and tini; adding user bae (uid {UID})")
    args = {"BASE": base, "MIRROR": mirrors.debian_mirror(build.debian_mirror), "SUITE": name, "BAE_UID": str(UID),
            "PIP_INDEX_URL": mirrors.pip_index_url(build.pip_index_url)}
    progress = _Progress(out)
    step = "docker build"
    with translated(f"building the {name} stack image"):
        stream = client().api.build(fileobj=_context(build), custom_context=True, tag=tag, buildargs=args,
                                    rm=True, forcerm=True, decode=True, pull=False)
        for chunk in stream:
            if "error" in chunk:
                raise BaeError(f"building the {name} stack failed at step '{step}': " + chunk["error"].strip()
                               + ("\n" + "\n".join(progress.tail[-10:]) if progress.tail else ""),
                               "Check that the Debian mirror and the package index are reachable and the disk "
                               "has room, then push again (or run bae stack:build " + name + ").")
            for text in chunk.get("stream", "").splitlines():
                if text.startswith("Step "):
                    step = text.split(":", 1)[-1].strip()[:60]
                    progress(text if len(text) < 100 else text[:97] + "...", force=True)
                else:
                    progress(text)
    if name == DEFAULT:
        with translated("tagging the stack image"):
            client().images.get(tag).tag("bae/stack", "latest")
    out(f"Built stack image {tag} in {time.monotonic() - started:.0f} s")
    log.info("stack image %s built", tag)


def resolve(build, pinned: str, read: Callable[[str], bytes | None]):
    """The stack a build of this source uses (a buildpacks.pins.Choice): ``pinned`` (stack:set)
    when set, else the oldest stack whose Python satisfies the app's pins. Raises Invalid for a
    malformed or unsatisfiable pin, naming the versions there are."""
    from buildpacks.pins import Choice, Pin, choose, read_pin

    pin: Pin | None = read_pin(read)
    if build.stack_image:
        return Choice(build.stack_image, "", "build.stack_image is set: every build uses it")
    available = [(s.name, versions(build, s.name)["python"]) for s in STACKS]
    if not pinned:
        return choose(pin, available, DEFAULT)
    stack_named(pinned)
    python = dict(available)[pinned]
    if pin is not None:
        try:
            choose(pin, [(pinned, python)], pinned)  # raises when the pinned stack's Python does not satisfy it
        except Invalid:
            raise Invalid(f"{pin.describe()}, but this deployment is set to stack {pinned} (Python {python})",
                          "Change the pin, or let the pins choose: stack:set APP[/DEP] auto.") from None
    return Choice(pinned, python, "set with stack:set")
