"""The Docker Engine as the build side sees it: one client, errors translated once.

Only this package's build runner and stack builder use it (the scheduler's
runtime is the units' side). The engine's exceptions become BaeError here
(``translate``): an image or container that is gone is ``Gone``, a refusal a
BaeError saying what failed, an engine that does not answer ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from bae.errors import BaeError, Gone, Unavailable

__all__ = ["client", "translated", "translate", "ENGINE_ERRORS"]

# what the engine and the SDK under it raise (not OSError: blocks here also read the pushed source)
ENGINE_ERRORS = (docker.errors.DockerException, docker.errors.StreamParseError, requests.exceptions.RequestException,
                 urllib3.exceptions.HTTPError, urllib3.exceptions.ProxySchemeUnsupported)


@functools.lru_cache(maxsize=1)
def client() -> docker.DockerClient:
    try:
        c = docker.from_env(version="auto", timeout=600)
        c.ping()
        return c
    except ENGINE_ERRORS as exc:
        raise Unavailable(
            f"the Docker Engine does not answer ({exc.__class__.__name__})",
            "Start it (make up starts dockerd) or check DOCKER_HOST.",
        ) from None


def translate(exc: BaseException, what: str) -> BaeError:
    """The engine's error ``exc`` while doing ``what`` as one of ours."""
    if isinstance(exc, BaeError):
        return exc
    if isinstance(exc, docker.errors.NotFound):
        return Gone(f"{what} failed: {exc.explanation or exc}")
    if isinstance(exc, docker.errors.APIError):
        return BaeError(f"{what} failed: {exc.explanation or exc}")
    return Unavailable(f"{what} failed: the Docker Engine did not answer ({exc.__class__.__name__})")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn Docker errors inside the block into a BaeError that says ``what`` failed."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise translate(exc, what) from None
