"""Which stack a deployment builds on: read the app's Python pins, choose the oldest stack
whose Python satisfies them.

Pins, in the order they are honoured (the first file that pins wins):
``.python-version`` (pyenv's, first version line), ``runtime.txt`` (``python-3.14.2``),
``Pipfile`` (``[requires] python_full_version`` / ``python_version``), and, when
nothing else pins, ``pyproject.toml`` (``[project] requires-python``, else Poetry's
``[tool.poetry.dependencies] python``). A version pin (``3.13``, ``3.14.2``) is
satisfied by a stack with the same minor version; a patch level the stack lacks
builds with the stack's and warns. A range (``>=3.12``) must hold for the stack's
exact version. Pure: the pipeline reads the files and calls ``choose``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Callable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from bae.errors import Invalid

__all__ = ["Pin", "Choice", "read_pin", "choose", "PIN_FILES"]

PIN_FILES = (".python-version", "runtime.txt", "Pipfile", "pyproject.toml")
_VERSION = re.compile(r"^(?:python-?)?(\d+)(?:\.(\d+))?(?:\.(\d+))?$")


@dataclass(frozen=True)
class Pin:
    source: str  # the file, e.g. "runtime.txt"
    text: str  # what it says, as written
    exact: tuple[int, ...] | None = None  # (3, 14) or (3, 14, 2)
    spec: tuple[SpecifierSet, ...] | None = None  # a range, e.g. >=3.12 (alternatives: Poetry's ||)

    def describe(self) -> str:
        return f"{self.source} requests Python {self.text}"


@dataclass(frozen=True)
class Choice:
    stack: str
    python: str
    reason: str  # one line: why this stack
    warning: str | None = None  # one line: a patch level the stack lacks


def _malformed(source: str, text: str, fix: str) -> Invalid:
    return Invalid(f"{source} says '{text[:40]}', which is not a Python version", fix)


def _exact(source: str, text: str) -> Pin:
    match = _VERSION.match(text)
    if not match:
        fix = ("Write a version like python-3.13 in runtime.txt." if source == "runtime.txt"
               else f"Write a version like 3.13 in {source}.")
        raise _malformed(source, text, fix)
    return Pin(source, text.removeprefix("python-").removeprefix("python"),
               exact=tuple(int(p) for p in match.groups() if p is not None))


def _one_range(text: str) -> SpecifierSet:
    text = text.strip()
    poetry = re.match(r"^([\^~])\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?$", text)
    if poetry:  # Poetry's caret and tilde
        parts = [int(p) for p in poetry.groups()[1:] if p is not None]
        low = ".".join(map(str, parts))
        if poetry.group(1) == "^":
            high = f"{parts[0] + 1}" if parts[0] or len(parts) == 1 else f"0.{parts[1] + 1}"
        else:
            high = f"{parts[0]}.{parts[1] + 1}" if len(parts) > 1 else f"{parts[0] + 1}"
        return SpecifierSet(f">={low},<{high}")
    text = text.replace(" ", "")
    if re.match(r"^\d", text):  # Poetry's bare version means ==
        text = "==" + text
    return SpecifierSet(text)


def _range(source: str, text: str) -> Pin:
    try:
        return Pin(source, text.strip(), spec=tuple(_one_range(part) for part in text.split("||")))
    except InvalidSpecifier:
        raise Invalid(f"{source} says Python '{text[:40]}', which is not a version range",
                      "Write a range like >=3.12 (PEP 440).") from None


def read_pin(read: Callable[[str], bytes | None]) -> Pin | None:
    """The app's Python pin, or None; ``read(path)`` returns a file of the pushed commit or None."""
    for name in (".python-version", "runtime.txt"):  # the first line that is not a comment
        raw = read(name)
        for line in (raw or b"").decode("utf-8", "replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                return _exact(name, line)
    raw = read("Pipfile")
    if raw is not None:
        try:
            requires = tomllib.loads(raw.decode("utf-8", "replace")).get("requires", {})
        except tomllib.TOMLDecodeError as exc:
            raise Invalid(f"Pipfile is not valid TOML ({exc})", "Fix it, or regenerate it with pipenv.") from None
        for key in ("python_full_version", "python_version"):
            if isinstance(requires, dict) and requires.get(key):
                return _exact("Pipfile", str(requires[key]).strip())
    raw = read("pyproject.toml")
    if raw is not None:
        try:
            data = tomllib.loads(raw.decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError as exc:
            raise Invalid(f"pyproject.toml is not valid TOML ({exc})", "Fix it and push again.") from None
        requires = (data.get("project") or {}).get("requires-python")
        if requires:
            return _range("pyproject.toml", str(requires))
        poetry = ((data.get("tool") or {}).get("poetry") or {}).get("dependencies") or {}
        if isinstance(poetry, dict) and isinstance(poetry.get("python"), str):
            return _range("pyproject.toml", poetry["python"])
    return None


def _satisfies(pin: Pin, version: Version) -> bool:
    if pin.exact is not None:
        return tuple(version.release[:len(pin.exact[:2])]) == pin.exact[:2]
    return any(spec.contains(version, prereleases=True) for spec in pin.spec)


def choose(pin: Pin | None, stacks: list[tuple[str, str]], default: str) -> Choice:
    """The oldest of ``stacks`` ([(name, python version)], oldest first) that satisfies ``pin``."""
    pythons = dict(stacks)
    if pin is None:
        return Choice(default, pythons[default], "no Python pin (.python-version, runtime.txt, Pipfile, "
                      "pyproject.toml): the default stack")
    for name, python in stacks:
        if _satisfies(pin, Version(python)):
            warning = None
            if pin.exact is not None and len(pin.exact) == 3 and Version(python).release[:3] != pin.exact:
                warning = (f"{pin.source} requests Python {pin.text}; stack {name} has {python}, "
                           f"so this build uses {python}")
            return Choice(name, python, f"{pin.describe()}; {name} is the oldest stack with Python {python}",
                          warning)
    available = ", ".join(f"{python} ({name})" for name, python in stacks)
    minor = stacks[-1][1].rsplit(".", 1)[0]
    example = {"runtime.txt": f"python-{minor}", "pyproject.toml": f'requires-python = ">={minor}"',
               "Pipfile": f'python_version = "{minor}"'}.get(pin.source, minor)
    raise Invalid(f"{pin.describe()}, which no stack provides (available: {available})",
                  f"Pin one of those in {pin.source}, e.g. {example}.")
