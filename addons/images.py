"""Service images: Redis, PostgreSQL and MariaDB from Debian packages, like the stack.

Each recipe (``images/KIND/``: a Dockerfile and the scripts the container runs)
is built on the stack's debootstrap'd bookworm base (handed in by the composition root,
``buildpacks.stack.ensure_base``: Debian is bootstrapped once per machine). The tag is a hash of the base and the
recipe, so an image is built only when its recipe changes. Called by
``addons:build`` / ``stack:build`` and, when missing, by ``addons:create``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

from addons.engine import engine
from bae import mirrors
from addons.kinds import Kind

__all__ = ["image_tag", "build_image", "RECIPES"]

log = logging.getLogger("bae.addons.images")

RECIPES = Path(__file__).resolve().parent / "images"


def _recipe(build, kind: Kind, version: str) -> dict:
    folder = RECIPES / kind.recipe
    files = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}
    suite, args = kind.image_recipe(version)
    base_image = build.base_image if suite == "bookworm" else ""
    return {"suite": suite, "args": args, "mirror": mirrors.debian_mirror(build.debian_mirror), "base_image": base_image, "files": files}


def image_tag(build, kind: Kind, version: str) -> str:
    digest = hashlib.sha256(json.dumps(_recipe(build, kind, version), sort_keys=True).encode()).hexdigest()[:12]
    return f"bae/addon-{kind.recipe}:{digest}"


def build_image(build, kind: Kind, version: str, base_image: Callable[[str, Callable[[str], None]], str],
                out: Callable[[str], None], *, force: bool = False) -> str:
    """Build the image of ``kind`` ``version`` unless it exists; return its tag. ``base_image(suite,
    out)`` gives a Debian release's base image (bootstrapped if missing); the composition root
    passes it in (buildpacks.stack.ensure_base)."""
    tag = image_tag(build, kind, version)
    if not force and engine().image_exists(tag):
        return tag
    suite, args = kind.image_recipe(version)
    base = base_image(suite, out)
    out(f"Building the {kind.title} {version} image {tag} from Debian {suite} packages")
    engine().build(str(RECIPES / kind.recipe), tag, {"BASE": base, "MIRROR": _recipe(build, kind, version)["mirror"], **args}, out)
    log.info("add-on image %s built", tag)
    return tag
