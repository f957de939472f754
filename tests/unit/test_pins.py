"""Which stack an app's Python pins choose (buildpacks.pins), without Docker."""

from __future__ import annotations

import pytest

from bae.errors import Invalid
from buildpacks.pins import choose, read_pin

STACKS = [("bookworm", "3.11.2"), ("trixie", "3.13.5"), ("sid", "3.14.10")]


def chosen(files: dict[str, str]):
    pin = read_pin(lambda name: files[name].encode() if name in files else None)
    return choose(pin, STACKS, "bookworm")


@pytest.mark.parametrize("files, stack", [
    ({}, "bookworm"),
    ({".python-version": "# pyenv\n3.13\n"}, "trixie"),
    ({"runtime.txt": "python-3.14"}, "sid"),
    ({"runtime.txt": "python-3.11.9\n"}, "bookworm"),
    ({"runtime.txt": "# pinned\npython-3.13\n"}, "trixie"),
    ({"Pipfile": '[requires]\npython_version = "3.13"\n'}, "trixie"),
    ({"Pipfile": '[requires]\npython_full_version = "3.14.0"\n'}, "sid"),
    ({"pyproject.toml": '[project]\nrequires-python = ">=3.12"\n'}, "trixie"),
    ({"pyproject.toml": '[project]\nrequires-python = ">=3.10"\n'}, "bookworm"),
    ({"pyproject.toml": '[tool.poetry.dependencies]\npython = "^3.14"\n'}, "sid"),
    ({"pyproject.toml": '[tool.poetry.dependencies]\npython = "~3.13"\n'}, "trixie"),
    # the first file that pins wins: .python-version over runtime.txt over pyproject.toml
    ({".python-version": "3.14", "runtime.txt": "python-3.11", "pyproject.toml": '[project]\nrequires-python=">=3.12"'},
     "sid"),
    ({"runtime.txt": "python-3.11", "pyproject.toml": '[project]\nrequires-python = ">=3.12"\n'}, "bookworm"),
])
def test_oldest_stack_that_satisfies_the_pin(files, stack):
    assert chosen(files).stack == stack


def test_reason_and_patch_warning():
    choice = chosen({"runtime.txt": "python-3.14.2"})
    assert choice.reason == "runtime.txt requests Python 3.14.2; sid is the oldest stack with Python 3.14.10"
    assert choice.warning == "runtime.txt requests Python 3.14.2; stack sid has 3.14.10, so this build uses 3.14.10"
    assert chosen({"runtime.txt": "python-3.14.10"}).warning is None
    assert chosen({".python-version": "3.14"}).warning is None
    assert "no Python pin" in chosen({}).reason


@pytest.mark.parametrize("files, message", [
    ({"runtime.txt": "python-3.5.1"}, "runtime.txt requests Python 3.5.1, which no stack provides "
                                      "(available: 3.11.2 (bookworm), 3.13.5 (trixie), 3.14.10 (sid))"),
    ({"runtime.txt": "python-banana"}, "runtime.txt says 'python-banana', which is not a Python version"),
    ({".python-version": "pypy3.10"}, ".python-version says 'pypy3.10', which is not a Python version"),
    ({"pyproject.toml": '[project]\nrequires-python = "=>3.12"\n'},
     "pyproject.toml says Python '=>3.12', which is not a version range"),
    ({"pyproject.toml": '[project]\nrequires-python = ">=4"\n'}, "pyproject.toml requests Python >=4, which no stack"),
    ({"Pipfile": "[requires\n"}, "Pipfile is not valid TOML"),
])
def test_bad_pins_say_what_and_how_to_fix(files, message):
    with pytest.raises(Invalid) as caught:
        chosen(files)
    assert caught.value.message.startswith(message)
    assert caught.value.hint
