"""Which buildpacks a build runs: the built-ins, or a deployment's own list.

A deployment's list (``buildpacks:set``) holds built-in names, local
directories (admins only: they are read from the platform host) or git URLs
with an optional ``#ref``. Git URLs are cloned on the host with argument lists
(never a shell) for each build. Called by the buildpacks commands (to validate)
and by the build runner (to fetch).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bae.errors import BaeError, Invalid

__all__ = ["Buildpack", "BUILTINS", "validate_spec", "fetch"]

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Buildpack:
    name: str
    path: Path
    looks_for: str = "(its bin/detect decides)"


BUILTINS = [
    Buildpack("python", HERE / "python", "requirements.txt, Pipfile.lock, pyproject.toml or setup.py"),
    Buildpack("nodejs", HERE / "nodejs", "package.json"),
]
_ALIASES = {b.name: b for b in BUILTINS} | {f"heroku/{b.name}": b for b in BUILTINS}
_GIT_URL = re.compile(r"(https|git)://[A-Za-z0-9._~:@%+\-]+(/[A-Za-z0-9._~%+\-/]*)?(#[A-Za-z0-9._/\-]{1,100})?")
_ADMIN_URL = re.compile(r"(https?|git|ssh)://[A-Za-z0-9._~:@%+\-]+(/[A-Za-z0-9._~%+\-/]*)?(#[A-Za-z0-9._/\-]{1,100})?")
_FILE_URL = re.compile(r"file:///[A-Za-z0-9._~%+\-/]+(#[A-Za-z0-9._/\-]{1,100})?")


def validate_spec(spec: str, admin: bool) -> str:
    """Return ``spec`` if it names a usable buildpack for this caller, else raise Invalid."""
    if spec in _ALIASES:
        return spec
    if len(spec) > 500:
        raise Invalid("the buildpack spec is longer than 500 characters")
    if spec.startswith("/") or spec.startswith("file://"):
        if not admin:
            raise Invalid(
                f"'{spec[:80]}' is on the platform host; only admins may use local buildpacks",
                "Use a git URL (https://…/buildpack.git#ref) or a built-in: python, nodejs.",
            )
        if spec.startswith("file://"):
            if not _FILE_URL.fullmatch(spec):
                raise Invalid(f"'{spec[:80]}' is not a file:// git URL bae accepts")
            return spec
        path = Path(spec)
        if ".." in path.parts or not (path / "bin" / "detect").is_file() or not (path / "bin" / "compile").is_file():
            raise Invalid(f"{spec} is not a buildpack directory", "A buildpack has bin/detect and bin/compile.")
        return spec
    if _GIT_URL.fullmatch(spec) or (admin and _ADMIN_URL.fullmatch(spec)):
        return spec
    raise Invalid(
        f"'{spec[:80]}' is neither a built-in buildpack nor an https:// or git:// URL",
        "Use python, nodejs, or a URL like https://github.com/org/buildpack.git#v1.",
    )


def fetch(spec: str, workdir: Path) -> Buildpack:
    """A local directory holding the buildpack ``spec`` names (cloning git URLs into workdir)."""
    if spec in _ALIASES:
        return _ALIASES[spec]
    if spec.startswith("/"):
        return Buildpack(os.path.basename(spec.rstrip("/")) or spec, Path(spec))
    url, _, ref = spec.partition("#")
    dest = Path(tempfile.mkdtemp(prefix="bp-", dir=workdir))
    cmd = ["git", "-c", "advice.detachedHead=false", "clone", "--quiet", "--depth", "1"]
    if ref:
        cmd += ["--branch", ref]
    cmd += ["--", url, str(dest / "bp")]
    # Nothing of the host's: no credentials, no config, no SSH keys (HOME is an empty directory).
    home = Path(tempfile.mkdtemp(prefix="home-", dir=workdir))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "GIT_TERMINAL_PROMPT": "0",
           "GIT_ASKPASS": "/bin/false", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_SSH_COMMAND": "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null "
                              "-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/dev/null"}
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE"):
        if name in os.environ:
            env[name] = os.environ[name]
    cmd[1:1] = ["-c", "credential.helper=", "-c", "protocol.file.allow=user"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise BaeError(f"could not fetch buildpack {spec}: {detail[0]}",
                       "Check the URL and #ref with buildpacks; the previous release keeps serving.")
    name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "custom"
    return Buildpack(name + (f"#{ref}" if ref else ""), dest / "bp")
