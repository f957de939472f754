"""Which buildpacks a build runs: the built-ins, or a deployment's own list.

A deployment's list (``buildpacks:set``) holds built-in names, local
directories (admins only: they are read from the platform host) or git URLs
with an optional ``#ref``. Git URLs are cloned on the host with argument lists
(never a shell) for each build. Called by the buildpacks commands (to validate)
and by the build runner (to fetch).

The host clones, so a URL must not become a way into the platform's own
network: unless an admin set the list, the URL's host name is resolved, every
address must be a public one (no loopback, link-local, private, shared or
reserved ranges), and git then connects to exactly the address that was checked
(``http.curloptResolve`` for https, the address itself for git://) with
redirects off, so neither DNS rebinding nor a redirect leads elsewhere. This
is checked both when the list is set (a clear refusal) and at each clone.
Failures say that the clone failed, never why: a connection error's text
would turn builds into a port scanner. The details go to the operator's log.
(Cloning inside a build container was the other option; but a container still
reaches the host's bridge address, the LAN and link-local metadata services,
so it would not close the hole by itself.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bae.errors import BaeError, Invalid

__all__ = ["Buildpack", "BUILTINS", "validate_spec", "fetch"]

HERE = Path(__file__).resolve().parent

log = logging.getLogger("bae.build")
_PORTS = {"https": 443, "git": 9418}


@dataclass(frozen=True)
class Buildpack:
    name: str
    path: Path
    looks_for: str = "(its bin/detect decides)"


BUILTINS = [
    Buildpack("python", HERE / "python", "requirements.txt, Pipfile.lock, uv.lock, poetry.lock, pyproject.toml or setup.py"),
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
    if admin and _ADMIN_URL.fullmatch(spec):
        return spec
    if _GIT_URL.fullmatch(spec):
        public_address(spec.partition("#")[0])
        return spec
    raise Invalid(
        f"'{spec[:80]}' is neither a built-in buildpack nor an https:// or git:// URL",
        "Use python, nodejs, or a URL like https://github.com/org/buildpack.git#v1.",
    )


def public_address(url: str) -> tuple[str, int, str]:
    """(host, port, address) of an https:// or git:// URL whose host resolves to public addresses only."""
    parts = urlsplit(url)
    hint = "Use a buildpack hosted on the public internet (e.g. https://github.com/org/buildpack.git), or ask an admin."
    try:
        host, port = parts.hostname or "", parts.port or _PORTS[parts.scheme]
    except (ValueError, KeyError):
        raise Invalid(f"'{url[:80]}' has no usable host and port", hint) from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Invalid(f"the buildpack host {host[:80]} cannot be resolved", hint) from None
    addresses = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise Invalid(f"the buildpack host {host[:80]} is not on the public internet", hint)
        addresses.append(str(ip))
    if not addresses:
        raise Invalid(f"the buildpack host {host[:80]} cannot be resolved", hint)
    return host, port, addresses[0]


def fetch(spec: str, workdir: Path, trusted: bool = False) -> Buildpack:
    """A local directory holding the buildpack ``spec`` names (cloning git URLs into workdir).

    Unless ``trusted`` (an admin set the list), an https:// or git:// URL is cloned
    only from the public address its host resolves to now.
    """
    if spec in _ALIASES:
        return _ALIASES[spec]
    if spec.startswith("/"):
        return Buildpack(os.path.basename(spec.rstrip("/")) or spec, Path(spec))
    url, _, ref = spec.partition("#")
    pinned = []
    clone_url = url
    if not trusted and _GIT_URL.fullmatch(spec):
        try:
            host, port, address = public_address(url)
        except Invalid as exc:
            raise BaeError(f"could not fetch buildpack {spec}: {exc.message}", exc.hint) from None
        if url.startswith("https://"):
            pinned = ["-c", f"http.curloptResolve={host}:{port}:{address}", "-c", "http.followRedirects=false"]
        else:  # git:// has no certificate to match: connect to the checked address itself
            literal = f"[{address}]" if ":" in address else address
            clone_url = url.replace(f"//{urlsplit(url).netloc}", f"//{literal}:{port}", 1)
    dest = Path(tempfile.mkdtemp(prefix="bp-", dir=workdir))
    cmd = ["git", *pinned, "-c", "advice.detachedHead=false", "clone", "--quiet", "--depth", "1"]
    if ref:
        cmd += ["--branch", ref]
    cmd += ["--", clone_url, str(dest / "bp")]
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
        # The reason stays in the operator's log: echoing "connection refused" or
        # "not found" would let a user map what answers where.
        log.info("clone of buildpack %s failed: %s", spec, " | ".join(proc.stderr.strip().splitlines()[-3:]))
        raise BaeError(f"could not fetch buildpack {spec} (the git clone failed)",
                       "Check the URL and #ref with buildpacks; the previous release keeps serving.")
    name = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "custom"
    return Buildpack(name + (f"#{ref}" if ref else ""), dest / "bp")
