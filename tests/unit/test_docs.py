"""Docs that cannot drift: every command has help and is in the README; every
setting has a description."""

import dataclasses
import re
from pathlib import Path

import pytest

from bae.config import Settings, load
from control.commands import _load, table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def commands():
    _load()
    return sorted(table.commands)


def test_readme_starts_with_the_two_commands():
    code = README.split("```sh", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split()[0:2] for line in code] == [["make", "up"], ["make", "test"]]


@pytest.mark.parametrize("name", commands())
def test_command_has_help_and_is_documented(name):
    cmd = table.commands[name]
    assert cmd.help and cmd.help.strip(), f"{name} has no help text"
    assert re.search(rf"`{re.escape(name)}(`| )", README), f"{name} is not in README's CLI reference"


def _settings(obj, prefix=""):
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        yield prefix + f.name, f
        if dataclasses.is_dataclass(value):
            yield from _settings(value, prefix + f.name + ".")
        elif isinstance(value, dict):
            for key, sub in value.items():
                yield from _settings(sub, f"{prefix}{f.name}.{key}.")


def test_every_setting_has_a_description():
    for name, f in _settings(Settings()):
        assert f.metadata.get("doc"), f"setting {name} has no description"


def test_the_readme_settings_example_loads(tmp_path):
    example = README.split("```toml", 1)[1].split("```", 1)[0]
    path = tmp_path / "bae.toml"
    path.write_text(example)
    settings = load(path)
    assert settings.source == str(path)
    assert settings.ssh.port == 2222 and settings.plans["s1"].memory == "256m"


def test_readme_commands_work_as_written(tmp_path):
    # The README says `bae users:add ...` right after `make up`: scripts/setup puts bae on PATH.
    import os
    import shutil
    import subprocess

    setup = (Path(__file__).resolve().parents[2] / "scripts" / "setup").read_text()
    assert 'ln -sfn "$PWD/.venv/bin/bae" /usr/local/bin/bae' in setup
    found = shutil.which("bae")
    assert found, "bae is not on PATH: run scripts/setup (make up / make test do)"
    (tmp_path / "bae.toml").write_text(f'data_dir = "{tmp_path}"\n')
    env = dict(os.environ, BAE_CONFIG=str(tmp_path / "bae.toml"))
    assert subprocess.run([found, "help"], capture_output=True, timeout=60, env=env).returncode == 0
