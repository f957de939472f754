"""Where builds fetch packages from: the host's own configuration, never a host name of ours.

A platform behind a company mirror works unconfigured: the Debian mirror comes
from apt's sources on the host (``/etc/apt/sources.list`` and the deb822
``sources.list.d/*.sources``), pip's index from pip's configuration
(``PIP_INDEX_URL``, ``pip.conf``), npm's registry from npm's (``npm_config_registry``,
``.npmrc``). A setting (``build.debian_mirror``, ``build.pip_index_url``,
``build.npm_registry``) overrides each. Called by the stack builder, the build runner and the add-on
image builder; pure file reading, no network.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

from bae.errors import BaeError

__all__ = ["debian_mirror", "pip_index_url", "npm_registry", "apt_mirrors", "ETC"]

ETC = Path("/etc")


def _deb_lines(text: str):
    """(uri, suites) of each ``deb`` line of a one-line-style sources.list."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = re.sub(r"\[[^]]*\]", " ", line[4:]).split()  # drop [arch=... signed-by=...]
        if len(words) >= 2:
            yield words[0], [words[1]]


def _deb822(text: str):
    """(uri, suites) of each enabled ``Types: deb`` stanza of a deb822 .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split()


def apt_mirrors(etc: Path = ETC) -> list[tuple[str, list[str]]]:
    """Every (uri, suites) the host's apt uses, in apt's reading order."""
    found = []
    main = etc / "apt" / "sources.list"
    if main.is_file():
        found += list(_deb_lines(main.read_text(errors="replace")))
    parts = etc / "apt" / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                found += list(_deb_lines(path.read_text(errors="replace")))
            elif path.suffix == ".sources":
                found += list(_deb822(path.read_text(errors="replace")))
    return found


_DEBIAN_SUITE = re.compile(r"^(bookworm|trixie|forky|sid|bullseye|buster|stable|testing|unstable|oldstable)(-updates|-backports)?$")


def debian_mirror(setting: str = "", etc: Path = ETC) -> str:
    """The Debian archive mirror: the setting, else the host's apt source serving a Debian suite."""
    if setting:
        return setting.rstrip("/")
    for uri, suites in apt_mirrors(etc):
        if uri.startswith(("http://", "https://")) and any(_DEBIAN_SUITE.match(s) for s in suites) \
                and not uri.rstrip("/").endswith("-security"):
            return uri.rstrip("/")
    raise BaeError("no Debian mirror found in this host's apt sources (/etc/apt/sources.list, sources.list.d/)",
                   "Set build.debian_mirror to the URL of a Debian archive mirror.")


def _pip_files(home: Path, etc: Path) -> list[Path]:
    """pip's configuration files, lowest priority first (global, user), as pip reads them."""
    xdg = [Path(p) / "pip" / "pip.conf" for p in os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":") if p]
    files = xdg + [etc / "pip.conf", home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def pip_index_url(setting: str = "", home: Path | None = None, etc: Path = ETC) -> str:
    """pip's index for builds: the setting, else PIP_INDEX_URL, else ``index-url`` of pip's config; '' for pip's default."""
    if setting:
        return setting
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    found = ""
    for path in _pip_files(home or Path.home(), etc):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "index-url"):
                found = parser.get(section, "index-url").strip()
    return found if found.startswith(("http://", "https://")) else ""  # file:// indexes are the host's only


def npm_registry(setting: str = "", home: Path | None = None, etc: Path = ETC) -> str:
    """npm's registry for builds: the setting, else npm_config_registry, else ``registry=`` of npm's config; ''
    for npm's default."""
    if setting:
        return setting
    for key in ("npm_config_registry", "NPM_CONFIG_REGISTRY"):
        if os.environ.get(key):
            return os.environ[key]
    found = ""
    for path in (etc / "npmrc", Path(os.environ.get("NPM_CONFIG_USERCONFIG") or (home or Path.home()) / ".npmrc")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "registry":
                found = value.strip()
    return found
