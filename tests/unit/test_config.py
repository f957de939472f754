import tomllib

import pytest

from bae.config import Settings, load, render
from bae.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "bae.toml"
    path.write_text(text)
    return path


def test_defaults_without_file(monkeypatch):
    monkeypatch.delenv("BAE_CONFIG", raising=False)
    s = load()
    assert s.data_dir == "/var/lib/bae"
    assert s.base_domain == "bae.localhost"
    assert (s.ssh.host, s.ssh.port, s.router.http_port) == ("0.0.0.0", 2222, 80)


def test_file_and_env(tmp_path, monkeypatch):
    path = write(tmp_path, 'data_dir = "/srv/bae"\n[ssh]\nport = 2022\n[router]\nhttp_port = 8080\n')
    monkeypatch.setenv("BAE_CONFIG", str(path))
    s = load()
    assert (s.data_dir, s.ssh.port, s.router.http_port, s.ssh.host) == ("/srv/bae", 2022, 8080, "0.0.0.0")


@pytest.mark.parametrize("text,key", [
    ("dta_dir = 'x'", "dta_dir"),
    ("[ssh]\nprot = 1", "ssh.prot"),
    ("[sshh]\nport = 1", "sshh"),
    ("[plans.s1]\nmemroy = '1g'", "plans.s1.memroy"),
])
def test_unknown_keys_are_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert f"'{key}'" in err.value.message


@pytest.mark.parametrize("text,key", [
    ("[ssh]\nport = '22'", "ssh.port"),
    ("data_dir = 3", "data_dir"),
    ("ssh = 3", "ssh"),
    ("[scheduler]\nboot_timeout = true", "scheduler.boot_timeout"),
])
def test_wrong_types_are_named(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert f"'{key}'" in err.value.message


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError):
        load(write(tmp_path, "data_dir = "))
    with pytest.raises(ConfigError):
        load(tmp_path / "absent.toml")


def test_render_round_trips_and_documents_every_key(tmp_path):
    text = render(Settings())
    data = tomllib.loads(text)
    assert load(write(tmp_path, text)).ssh.port == 2222
    assert data["ssh"]["port"] == 2222
    # every key is preceded by its description
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line


@pytest.mark.parametrize("text,key,allowed", [
    ("[swarm]\nheartbeat = 0", "swarm.heartbeat", "1 to 300"),
    ("[swarm]\nheartbeat = -2.5", "swarm.heartbeat", "1 to 300"),
    ("[swarm]\nheartbeat = 301", "swarm.heartbeat", "1 to 300"),
    ("[swarm]\nregistry_port = 0", "swarm.registry_port", "1 to 65535"),
    ("[swarm]\nregistry_port = 70000", "swarm.registry_port", "1 to 65535"),
])
def test_swarm_settings_out_of_range_are_refused_naming_the_key_and_the_range(tmp_path, text, key, allowed):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text))
    assert f"'{key}'" in err.value.message and allowed in err.value.message


def test_swarm_settings_in_range_load(tmp_path):
    s = load(write(tmp_path, "[swarm]\nheartbeat = 1\nregistry_port = 65535"))
    assert (s.swarm.heartbeat, s.swarm.registry_port) == (1.0, 65535)
