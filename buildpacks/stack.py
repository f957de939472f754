"""The stack image: Debian bookworm with Python, Node.js, a C toolchain and the
user ``bae``, built without any container registry.

Recipe: ``debootstrap --variant=minbase`` + ``docker import`` for the base (or
the operator's ``build.base_image``), then ``stack/Dockerfile`` on top. The tag
is a hash of the recipe, so the image is rebuilt only when the recipe changes.
Called by ``bae stack:build`` (and so by ``make up``/``make test``) and by the
build runner, which needs the tag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from bae.errors import BaeError, Gone, Unavailable
from bae.unit import UID
from buildpacks.engine import client, translated

__all__ = ["stack_tag", "build_stack", "stack_exists", "ensure_base", "RECIPE_DIR", "SUITE"]

log = logging.getLogger("bae.stack")

RECIPE_DIR = Path(__file__).resolve().parent / "stack"
SUITE = "bookworm"
DEBOOTSTRAP_INCLUDE = ["ca-certificates", "python3"]


def _base_recipe(build, suite: str = SUITE) -> dict:
    return {"suite": suite, "variant": "minbase", "include": DEBOOTSTRAP_INCLUDE, "mirror": build.debian_mirror,
            "base_image": build.base_image}


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _recipe(build) -> dict:
    files = {p.name: p.read_text() for p in sorted(RECIPE_DIR.iterdir()) if p.is_file()}
    return {"base": _base_recipe(build), "files": files, "uid": UID}


def stack_tag(build) -> str:
    """The image builds and units run on: the operator's, or bae's own by recipe hash."""
    return build.stack_image or f"bae/stack:{_digest(_recipe(build))}"


def _base_tag(build, suite: str = SUITE) -> str:
    if suite != SUITE:  # another release's base (add-on images of newer majors): always bootstrapped
        return f"bae/stack-base-{suite}:{_digest(_base_recipe(build, suite))}"
    return build.base_image or f"bae/stack-base:{_digest(_base_recipe(build))}"


def stack_exists(tag: str) -> bool:
    """Is the stack image ``tag`` (stack_tag) in the Docker Engine?"""
    try:
        with translated("looking up the stack image"):
            client().images.get(tag)
        return True
    except Gone:
        return False


def _debootstrap(build, tag: str, out: Callable[[str], None], suite: str = SUITE) -> None:
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        raise Unavailable("debootstrap is not installed", "apt-get install debootstrap (make up does this).")
    work = Path(tempfile.mkdtemp(prefix="bae-stack-", dir="/var/tmp"))
    try:
        root = work / "rootfs"
        out(f"Bootstrapping Debian {suite} (minbase) from {build.debian_mirror}")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
               suite, str(root), build.debian_mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise BaeError(f"debootstrap failed (exit {proc.returncode}):\n{tail}",
                           "Check that the Debian mirror (build.debian_mirror) is reachable.")
        out("Importing the root file system into the Docker Engine")
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        repo, _, version = tag.partition(":")
        with translated("importing the stack base image"):
            client().api.import_image_from_file(str(tarball), repository=repo, tag=version)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_base(build, out: Callable[[str], None], suite: str = SUITE) -> str:
    """The base image of Debian ``suite`` (the stack's: debootstrap'd, or the operator's
    ``build.base_image``), made if missing; service images (add-ons) are built on it too, so the
    machine bootstraps each Debian release once."""
    base = _base_tag(build, suite)
    if (suite != SUITE or not build.base_image) and not stack_exists(base):
        _debootstrap(build, base, out, suite)
    return base


def build_stack(build, out: Callable[[str], None], *, force: bool = False) -> str:
    """Build the stack image unless it exists; return its tag."""
    tag = stack_tag(build)
    if build.stack_image:
        out(f"Using the configured stack image {tag} (build.stack_image); nothing to build")
        return tag
    if not force and stack_exists(tag):
        out(f"Stack image {tag} is up to date")
        return tag
    base = _base_tag(build)
    if build.base_image:
        out(f"Building on the configured base image {base}")
    elif force or not stack_exists(base):
        _debootstrap(build, base, out)
    out(f"Installing Python, Node.js, a C toolchain and tini; adding user bae (uid {UID})")
    with translated("building the stack image"):
        stream = client().api.build(path=str(RECIPE_DIR), tag=tag, buildargs={"BASE": base, "MIRROR": build.debian_mirror, "BAE_UID": str(UID)},
                                    rm=True, forcerm=True, decode=True, pull=False)
        last = []
        for chunk in stream:
            if "error" in chunk:
                raise BaeError("building the stack image failed: " + chunk["error"].strip() +
                               ("\n" + "\n".join(last[-10:]) if last else ""))
            text = chunk.get("stream", "").rstrip()
            if text:
                last.append(text)
                if text.startswith("Step "):
                    out(text)
    with translated("tagging the stack image"):
        client().images.get(tag).tag("bae/stack", "latest")
    out(f"Built stack image {tag}")
    log.info("stack image %s built", tag)
    return tag
