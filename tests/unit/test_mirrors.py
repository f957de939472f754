"""Mirrors come from the host's apt, pip and npm configuration (bae.mirrors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bae.errors import BaeError
from bae import mirrors


def etc(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_debian_mirror_from_deb822_sources(tmp_path):
    root = etc(tmp_path, {"apt/sources.list.d/debian.sources": (
        "Types: deb\n# a comment\nURIs: http://mirror.internal/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb deb-src\nURIs: http://mirror.internal/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")})
    assert mirrors.debian_mirror("", root) == "http://mirror.internal/debian"


def test_debian_mirror_from_one_line_sources_and_the_setting_wins(tmp_path):
    root = etc(tmp_path, {"apt/sources.list": "# x\ndeb [arch=amd64 signed-by=/k.gpg] https://m.internal/debian trixie main\n",
                          "apt/sources.list.d/other.list": "deb https://vendor.internal/apt stable-vendor main\n"})
    assert mirrors.debian_mirror("", root) == "https://m.internal/debian"
    assert mirrors.debian_mirror("http://set.internal/debian/", root) == "http://set.internal/debian"


def test_no_debian_source_says_how_to_fix(tmp_path):
    with pytest.raises(BaeError) as caught:
        mirrors.debian_mirror("", etc(tmp_path, {"apt/sources.list.d/x.list": "deb https://v.internal/apt nodistro main\n"}))
    assert "build.debian_mirror" in caught.value.hint


def test_pip_index_and_npm_registry_from_their_configuration(tmp_path, monkeypatch):
    for key in ("PIP_INDEX_URL", "PIP_CONFIG_FILE", "npm_config_registry", "NPM_CONFIG_REGISTRY", "NPM_CONFIG_USERCONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    home = tmp_path / "home"
    root = etc(tmp_path, {"pip.conf": "[global]\nindex-url = https://pip.internal/simple\n",
                          "npmrc": "cafile=/x\nregistry=https://npm.internal/\n"})
    assert mirrors.pip_index_url("", home, root) == "https://pip.internal/simple"
    assert mirrors.npm_registry("", home, root) == "https://npm.internal/"
    etc(home, {".config/pip/pip.conf": "[global]\nindex-url = file:///opt/local/simple\n"})
    assert mirrors.pip_index_url("", home, root) == ""  # a file:// index is the host's only
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.internal/simple")
    assert mirrors.pip_index_url("", home, root) == "https://env.internal/simple"
    assert mirrors.pip_index_url("https://set.internal/simple", home, root) == "https://set.internal/simple"
    assert mirrors.npm_registry("", tmp_path / "nohome", tmp_path / "noetc") == ""
