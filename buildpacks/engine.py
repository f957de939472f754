"""The Docker Engine as the build side sees it: one client, errors translated.

Only this package's build runner and stack builder use it (the scheduler has
its own runtime). docker's exceptions become BaeError subclasses here.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import docker
import docker.errors
import requests.exceptions

from bae.errors import BaeError, Unavailable

__all__ = ["client", "translated"]


@functools.lru_cache(maxsize=1)
def client() -> docker.DockerClient:
    try:
        c = docker.from_env(version="auto", timeout=600)
        c.ping()
        return c
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise Unavailable(
            f"the Docker Engine does not answer ({exc.__class__.__name__})",
            "Start it (make up starts dockerd) or check DOCKER_HOST.",
        ) from None


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn Docker errors inside the block into a BaeError that says ``what`` failed."""
    try:
        yield
    except BaeError:
        raise
    except docker.errors.APIError as exc:
        raise BaeError(f"{what} failed: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise Unavailable(f"{what} failed: the Docker Engine did not answer ({exc.__class__.__name__})") from None
