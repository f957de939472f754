"""The one error root of bae.

Library code raises these; only the edges (CLI, SSH channel, build output) turn
them into text. Each error carries what went wrong and, where there is one, the
fix, so a user never has to read a traceback.
"""

from __future__ import annotations

__all__ = [
    "BaeError",
    "NotFound",
    "Gone",
    "AccessDenied",
    "Invalid",
    "Conflict",
    "ConfigError",
    "DeployFailed",
    "Unavailable",
]


class BaeError(Exception):
    """Root of every error bae raises on purpose.

    ``message`` says what went wrong; ``hint`` (optional) how to fix it.
    ``exit_code`` is what the CLI and the SSH channel exit with.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, shown: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.shown = shown  # already printed to the user (e.g. in a build log)

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class NotFound(BaeError):
    """A named thing (user, app, deployment, key, build) does not exist."""


class Gone(NotFound):
    """Something the engine held for us (a unit, an image) is no longer there: removed behind our back."""


class AccessDenied(BaeError):
    """The caller may not do this to that app or user."""

    exit_code = 3


class Invalid(BaeError):
    """A name, key, number, file or argument from a user is malformed."""

    exit_code = 2


class Conflict(BaeError):
    """The request clashes with existing state (duplicate name, key in use, ...)."""


class ConfigError(BaeError):
    """The platform's settings file is wrong; raised at start-up."""

    exit_code = 78  # EX_CONFIG


class DeployFailed(BaeError):
    """A build, release or rollout failed; the previous release keeps serving."""


class Unavailable(BaeError):
    """A part of the platform bae depends on (Docker, nginx, the daemon) is not answering."""
