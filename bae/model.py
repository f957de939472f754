"""The vocabulary of bae as frozen dataclasses, plus name validation.

Every component speaks in these types (and the small ``Source`` protocol);
see DESIGN.md for what each word means.
Who calls it: everyone. It imports nothing of ours but errors.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from bae.errors import Invalid

__all__ = [
    "NAME_RULE",
    "validate_name",
    "parse_target",
    "slug",
    "hostname",
    "deployment_key",
    "now",
    "User",
    "PublicKey",
    "App",
    "Deployment",
    "Build",
    "Release",
    "FormationEntry",
    "Caller",
    "Endpoint",
    "Route",
    "Source",
    "DEFAULT_DEPLOYMENT",
    "Certificate",
    "TlsState",
    "Addon",
    "Backup",
]

DEFAULT_DEPLOYMENT = "default"
NAME_RULE = (
    "a lowercase letter, then up to 29 lowercase letters, digits or single hyphens, "
    "not ending in a hyphen (like 'shop' or 'my-api')"
)
_NAME = re.compile(r"[a-z][a-z0-9-]{0,29}")


def validate_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a DNS-label name, else raise Invalid naming ``kind``."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{kind} name is empty", f"{kind.capitalize()} names are {NAME_RULE}.")
    shown = value if len(value) <= 40 else value[:37] + "..."
    if not _NAME.fullmatch(value) or value.endswith("-") or "--" in value:
        raise Invalid(f"{kind} name {shown!r} is not valid", f"{kind.capitalize()} names are {NAME_RULE}.")
    return value


def parse_target(text: str) -> tuple[str, str]:
    """Split ``APP`` or ``APP/DEPLOYMENT`` into validated names."""
    app, sep, dep = text.partition("/")
    validate_name("app", app)
    if sep:
        validate_name("deployment", dep)
    return app, dep if sep else DEFAULT_DEPLOYMENT


def slug(app: str, deployment: str) -> str:
    """How users write a deployment: ``APP`` for the default one, else ``APP/NAME`` (parse_target's inverse)."""
    return app if deployment == DEFAULT_DEPLOYMENT else f"{app}/{deployment}"


def hostname(app: str, deployment: str, base_domain: str) -> str:
    """A deployment's own hostname: ``APP.BASE`` for the default one, else ``DEP.APP.BASE``."""
    return f"{app}.{base_domain}" if deployment == DEFAULT_DEPLOYMENT else f"{deployment}.{app}.{base_domain}"


def deployment_key(app: str, deployment: str) -> str:
    """A deployment as one file-system and nginx name: ``APP--DEP`` (names never hold ``--``)."""
    return f"{app}--{deployment}"


def now() -> str:
    """The current time as the ISO 8601 UTC string stored everywhere (state, logs)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    admin: bool
    created_at: str


@dataclass(frozen=True)
class PublicKey:
    """An SSH public key as registered: OpenSSH line plus its SHA256 fingerprint."""

    fingerprint: str
    kind: str
    bits: int
    comment: str
    openssh: str
    user: str = ""
    created_at: str = ""


@dataclass(frozen=True)
class App:
    id: int
    name: str
    owner: str | None  # None: owned by the platform's admins
    created_at: str
    collaborators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deployment:
    id: int
    app: str
    name: str
    created_at: str
    buildpacks: tuple[str, ...] = ()
    release_version: int | None = None  # the release the scheduler should run
    buildpacks_admin: bool = False  # the list was set by an admin (its URLs may reach private hosts)
    stack: str = ""  # the stack it builds on; '' = chosen from the app's Python pins (stack:set)

    @property
    def slug(self) -> str:
        return slug(self.app, self.name)


@dataclass(frozen=True)
class Build:
    id: int
    deployment_id: int
    number: int
    commit: str
    old_commit: str
    status: str  # pending, running, succeeded, failed
    user: str
    started_at: str
    finished_at: str | None = None
    log: str = ""
    image: str | None = None
    process_types: dict = field(default_factory=dict)
    error: str | None = None
    reuse: dict | None = None  # what a later build needs to reuse this one's output
    stack: str | None = None  # the stack this build used, and why (buildpacks.pins)
    stack_reason: str | None = None


@dataclass(frozen=True)
class Release:
    """``vN`` of a deployment: image + config snapshot + process types. Its content never changes;
    ``status`` tracks its deploy: pending, active, superseded or failed."""

    id: int
    deployment_id: int
    version: int
    image: str
    config: dict
    process_types: dict
    build_id: int | None
    commit: str | None
    user: str
    description: str
    status: str
    created_at: str
    error: str | None = None
    hint: str | None = None  # a failed deploy's: what to do about it

    @property
    def name(self) -> str:
        return f"v{self.version}"


@dataclass(frozen=True)
class FormationEntry:
    """Desired units of one process type: how many, which plan, and the restart generation."""

    process: str
    quantity: int
    plan: str
    generation: int = 0


@dataclass(frozen=True)
class Caller:
    """Who runs a command: a registered user over SSH, or the operator on the host."""

    user: User | None
    local: bool = False

    @property
    def admin(self) -> bool:
        return self.local or bool(self.user and self.user.admin)

    @property
    def name(self) -> str:
        return self.user.name if self.user else "admin"


@dataclass(frozen=True)
class Endpoint:
    """Where the router may send a deployment's traffic: one up web unit."""

    unit: str  # web.1
    address: str  # host:port the router connects to


@dataclass(frozen=True)
class Route:
    """A deployment's hostnames and its up web units (possibly none: the router answers 503)."""

    app: str
    deployment: str
    hostnames: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]

    @property
    def key(self) -> str:
        return deployment_key(self.app, self.deployment)


class Source(Protocol):
    """The files of one pushed commit, read without a checkout (the git server makes them,
    the build runner reads them). Paths are POSIX, relative to the repository root."""

    @property
    def sha(self) -> str:
        """The commit's id (hex)."""

    def at(self, sha: str) -> Source:
        """Another commit of the same repository; KeyError if it is gone."""

    def entry(self, path: str) -> tuple[int, bytes] | None:
        """(git mode, object id) of a file, symlink or directory, or None if absent."""

    def read(self, path: str, limit: int = 1 << 20) -> bytes | None:
        """A regular file's bytes (not a symlink's target), or None if absent."""

    def walk(self) -> Iterator[tuple[str, int, bytes]]:
        """(path, git mode, object id) of every file, symlink and submodule."""

    def tar(self, prefix: str, uid: int, keep: Callable[[str], bool] = lambda p: True) -> Iterator[bytes]:
        """The files as an uncompressed tar stream under ``prefix``, owned by ``uid``."""


@dataclass(frozen=True)
class Certificate:
    """A TLS certificate the router may serve: uploaded or from ACME. Its chain and key are files
    (``data_dir/tls/NAME.pem`` and ``NAME.key``); this is what is known about it.
    ``deployment_id`` None: the platform's own (a wildcard for ``*.BASE_DOMAIN``)."""

    name: str
    deployment_id: int | None
    source: str  # "uploaded" or "acme"
    hostnames: tuple[str, ...]  # its subject alternative names (DNS), wildcards as "*.example.com"
    issuer: str
    serial: str  # hex
    fingerprint: str  # SHA-256 of the leaf, hex
    not_before: str  # ISO 8601 UTC
    not_after: str
    created_at: str = ""

    @property
    def short(self) -> str:
        """How commands name it: the first 12 hex digits of its fingerprint."""
        return self.fingerprint[:12]


@dataclass(frozen=True)
class TlsState:
    """A deployment's HTTPS choices and its automatic certificate's renewal progress."""

    deployment_id: int
    auto: bool = False  # certs:auto on: certificates from the ACME CA
    redirect: bool = False  # certs:redirect on: HTTP -> HTTPS (308)
    hsts: bool = False
    failures: int = 0  # failed orders in a row (backoff)
    not_before: str | None = None  # no new order before this time (backoff)
    last_attempt: str | None = None
    last_error: str | None = None  # None: the last attempt succeeded
    last_success: str | None = None


@dataclass(frozen=True)
class Addon:
    """A data service owned by an app, reachable by its units only, exposed as a config var URL."""

    id: int
    app: str
    name: str  # a DNS label, unique within the app; also its host name on the app's network
    kind: str  # redis, postgres, mysql
    version: str  # the major version it was created with; changes only through addons:upgrade
    plan: str
    password: str
    config_var: str  # REDIS_URL, DATABASE_URL or NAME_URL
    created_at: str
    generation: int = 0  # bumped by addons:restart and credential rotations: the container is replaced
    schedule: str | None = None  # HH:MM (UTC) of the daily backup
    retention: int = 7  # verified backups kept
    failures: int = 0  # consecutive failed starts (healing backs off)
    not_before: str | None = None  # no start before this time (backoff)
    schedule_since: str | None = None  # when the schedule was set: the first backup is at its next HH:MM


@dataclass(frozen=True)
class Backup:
    """One dump of an add-on; it counts only once ``status`` is "verified" (restored and checked)."""

    id: int
    app: str
    addon: str  # the add-on's name (backups outlive addons:destroy)
    number: int
    kind: str
    version: str
    file: str  # path under data_dir
    status: str  # capturing, verified, failed
    size: int
    created_at: str
    finished_at: str | None
    counts: dict = field(default_factory=dict)  # table or "keys" -> rows/keys, as captured and as restored
    sha256: str = ""
    scheduled: bool = False
    error: str | None = None
