"""The vocabulary of bae as frozen dataclasses, plus name validation.

Every component speaks in these types; see DESIGN.md for what each word means.
Who calls it: everyone. It imports nothing of ours but errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bae.errors import Invalid

__all__ = [
    "NAME_RULE",
    "validate_name",
    "parse_target",
    "slug",
    "hostname",
    "User",
    "PublicKey",
    "App",
    "Deployment",
    "Build",
    "Release",
    "FormationEntry",
    "Caller",
    "DEFAULT_DEPLOYMENT",
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
