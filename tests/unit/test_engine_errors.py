"""Every exception the Docker SDK (and the HTTP libraries under it) can raise is translated once,
on each side: the units' runtime and the build side. Like httpx's test that every transport
exception is mapped: a new exception class in a new SDK version fails here, not in production."""

from __future__ import annotations

import inspect

import docker.errors
import pytest
import requests.exceptions
import urllib3.exceptions

from bae.errors import BaeError, Gone, Unavailable
from buildpacks import engine
from scheduler import runtime_docker


def _classes(module) -> list[type[BaseException]]:
    return sorted({obj for _, obj in inspect.getmembers(module, inspect.isclass)
                   if issubclass(obj, Exception) and not issubclass(obj, Warning) and obj.__module__.startswith(module.__name__.split(".")[0])},
                  key=lambda c: c.__qualname__)


ENGINE_EXCEPTIONS = _classes(docker.errors) + _classes(requests.exceptions) + _classes(urllib3.exceptions)


def _instance(cls: type[BaseException]) -> BaseException:
    """One instance of ``cls``, whatever its constructor wants."""
    for args in ((), ("boom",), ("boom", None), ("boom", None, None), (None, "boom", "boom"),
                 (None, 1, "cmd", "image", "err"), ("boom", [])):
        try:
            return cls(*args)
        except Exception:  # wrong arguments for this constructor: try the next shape
            continue
    return cls.__new__(cls)  # constructors that want a live response object


@pytest.mark.parametrize("side", [runtime_docker, engine], ids=["units", "builds"])
@pytest.mark.parametrize("cls", ENGINE_EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_engine_exception_is_mapped(side, cls):
    exc = _instance(cls)
    assert isinstance(exc, side.ENGINE_ERRORS), f"{cls.__qualname__} is not caught by {side.__name__}"
    translated = side.translate(exc, "doing it")
    assert isinstance(translated, BaeError)
    assert translated.message.startswith("doing it failed")


@pytest.mark.parametrize("side", [runtime_docker, engine], ids=["units", "builds"])
def test_what_the_translation_says(side):
    assert type(side.translate(docker.errors.NotFound("no such container"), "x")) is Gone
    assert isinstance(side.translate(requests.exceptions.ConnectionError("refused"), "x"), Unavailable)
    refused = side.translate(docker.errors.APIError("409", explanation="conflict"), "x")
    assert type(refused) is BaeError and refused.message == "x failed: conflict"
