"""The platform registry's generated parts: its config.yml, htpasswd and kept password (no process started)."""

from __future__ import annotations

import stat

import bcrypt
import pytest
import yaml

from bae.errors import BaeError
from scheduler.registry import USER, Registry, htpasswd_line, htpasswd_matches, render_config


def test_config_asks_for_the_platforms_login_over_tls(tmp_path):
    config = yaml.safe_load(render_config(tmp_path, "10.213.7.1:5000"))
    assert config["auth"] == {"htpasswd": {"realm": "bae-registry", "path": str(tmp_path / "htpasswd")}}
    assert config["http"]["addr"] == "10.213.7.1:5000"
    assert config["http"]["tls"] == {"certificate": str(tmp_path / "registry.crt"), "key": str(tmp_path / "registry.key")}
    assert config["storage"]["filesystem"]["rootdirectory"] == str(tmp_path / "storage")
    assert config["storage"]["delete"] == {"enabled": True}  # the prune deletes old manifests (with the login)


def test_htpasswd_holds_the_one_user_with_a_bcrypt_hash():
    line = htpasswd_line("s3cret")
    user, hashed = line.strip().split(":", 1)
    assert user == USER and hashed.startswith("$2") and bcrypt.checkpw(b"s3cret", hashed.encode())
    assert htpasswd_matches(line, "s3cret")
    assert not htpasswd_matches(line, "other")
    assert not htpasswd_matches(line + "eve:" + hashed + "\n", "s3cret")  # nobody else
    assert not htpasswd_matches("bae:plain\n", "plain")  # distribution takes bcrypt only
    assert not htpasswd_matches("", "s3cret")


def test_before_the_first_start_the_ca_and_login_are_a_clear_error(tmp_path):
    registry = Registry(tmp_path / "registry", "10.213.7.1", 5000)
    for call in (lambda: registry.trust_command(), registry.credentials):
        with pytest.raises(BaeError) as caught:
            call()
        assert "Start bae serve once" in caught.value.hint and "registry" in caught.value.message


def test_the_password_is_made_once_root_only_and_the_htpasswd_kept(tmp_path):
    registry = Registry(tmp_path / "registry", "10.213.7.1", 5000)
    assert registry._prepare() is True  # a new certificate and htpasswd: a running registry must restart
    password = registry.credentials()["password"]
    assert len(password) >= 40
    for name in ("password", "htpasswd", "registry.key", "ca.key"):
        assert stat.S_IMODE((tmp_path / "registry" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "registry").stat().st_mode) == 0o700
    htpasswd = (tmp_path / "registry" / "htpasswd").read_text()
    assert password not in htpasswd and htpasswd_matches(htpasswd, password)
    assert registry._prepare() is False  # nothing changed: an adopted registry keeps running
    assert registry.credentials()["password"] == password
    assert (tmp_path / "registry" / "htpasswd").read_text() == htpasswd
    (tmp_path / "registry" / "htpasswd").write_text("bae:$2b$04$" + "x" * 53 + "\n")  # edited by hand
    assert registry._prepare() is True and htpasswd_matches((tmp_path / "registry" / "htpasswd").read_text(), password)
    assert "BEGIN CERTIFICATE" in registry.trust_command()
