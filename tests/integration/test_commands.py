"""Every foundation command, locally and over SSH, with its bad-input cases."""

from __future__ import annotations

import socket
import stat
import subprocess
import time

import pytest

from helpers import BAE, free_port, ok, run

pytestmark = pytest.mark.integration


def fails(result, *needles, code=None):
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stderr)
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"
    assert "Traceback" not in result.stderr + result.stdout
    return result.stderr


def test_help_local_and_remote(server, admin):
    local = ok(server.bae("help"))
    remote = ok(admin.ssh("help"))
    for name in ("apps:create", "keys:add", "access:list", "deployments:destroy"):
        assert name in local and name in remote
    assert "serve" in local and "serve " not in remote  # local-only commands are hidden over SSH
    assert "Usage: bae apps:create" in ok(server.bae("apps:create", "--help"))
    assert "Usage: ssh -p" in ok(admin.ssh("help", "apps:create"))
    fails(admin.ssh("serve"), "runs only on the platform host")
    fails(admin.ssh("appz:list"), "is not a bae command")
    fails(server.bae("apps:creat", "x"), "Did you mean: apps:create")


def test_users_and_keys(server, admin):
    ok(server.bae("users:add", "carol"))
    fails(server.bae("users:add", "carol"), "already exists")
    fails(server.bae("users:add", "Carol!"), "user name 'Carol!' is not valid")
    carol = server.client("carol")
    out = ok(server.bae("keys:add", "carol", "-", input=carol.public_key))
    assert "Added ed25519 key SHA256:" in out
    assert ok(carol.ssh("whoami")).strip() == "carol"
    listed = ok(server.bae("users:list"))
    assert "carol" in listed and "root" in listed
    # a key belongs to one user only
    ok(server.bae("users:add", "dave"))
    fails(server.bae("keys:add", "dave", "-", input=carol.public_key), "already registered to user 'carol'")
    fails(server.bae("keys:add", "dave", "-", input="garbage"), "not an SSH public key")
    fails(server.bae("keys:add", "dave", str(carol.key)), "private key")
    fails(server.bae("keys:add", "dave", "/nonexistent.pub"), "cannot read /nonexistent.pub")
    fails(server.bae("keys:add", "nobody", "-", input=carol.public_key), "no user named 'nobody'")
    # over SSH: own keys only, from stdin only
    second = server.client("carol")
    ok(carol.ssh("keys:add", "carol", input=second.public_key))
    assert ok(second.ssh("whoami")).strip() == "carol"
    keys = ok(carol.ssh("keys:list"))
    assert sum(line.startswith("carol ") for line in keys.splitlines()) == 2
    fails(carol.ssh("keys:add", "carol", "/etc/ssh/ssh_host_ed25519_key.pub"), "standard input")
    dave_key = server.client("dave")
    fails(carol.ssh("keys:add", "dave", input=dave_key.public_key), "only your own keys")
    fails(carol.ssh("keys:list", "root"), "only your own keys")
    fails(carol.ssh("users:add", "eve"), "only admins may add users")
    fails(carol.ssh("users:list"), "only admins")
    fails(carol.ssh("config:show"), "only admins")
    fingerprint = [line.split()[1] for line in keys.splitlines() if line.startswith("carol ")][1]
    fails(carol.ssh("keys:remove", "carol", "SHA256:nope"), "not a key fingerprint")
    fails(carol.ssh("keys:remove", "carol", "SHA256:" + "A" * 43), "has no key with fingerprint")
    ok(carol.ssh("keys:remove", "carol", fingerprint))
    assert sum(line.startswith("carol ") for line in ok(carol.ssh("keys:list")).splitlines()) == 1
    # admins manage anyone; removing a user locks them out
    ok(admin.ssh("users:remove", "dave"))
    fails(server.bae("users:remove", "dave"), "no user named 'dave'")


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_truncated_keys_are_refused_like_ssh_keygen_does(server, admin, key_type, tmp_path):
    import subprocess

    name = f"cut{key_type}"
    server.bae("users:add", name)
    user = server.client(name, key_type)
    line = user.public_key.strip()
    kind, data = line.split()[:2]
    for text in (line[:60], f"{kind} {data[:-4]}", f"{kind} {data[:len(data) // 2 // 4 * 4]}"):
        copy = tmp_path / "cut.pub"
        copy.write_text(text + "\n")
        assert subprocess.run(["ssh-keygen", "-l", "-f", str(copy)], capture_output=True).returncode != 0
        fails(admin.ssh("keys:add", name, input=text + "\n"), "damaged or cut short")
    assert "SHA256:" not in ok(admin.ssh("keys:list", name))
    ok(admin.ssh("keys:add", name, input=line + "\n"))


def test_state_is_private_to_root(server, admin):
    assert stat.S_IMODE((server.data / "bae.db").stat().st_mode) == 0o600
    for sub in ("repos", "cache", "logs", "run"):
        assert stat.S_IMODE((server.data / sub).stat().st_mode) == 0o700


def test_unknown_key_is_refused(server):
    stranger = server.client("stranger")
    result = stranger.ssh("whoami")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_apps_deployments_access(server, admin):
    frank = server.user("frank")
    grace = server.user("grace")
    out = ok(frank.ssh("apps:create", "frank-shop"))
    assert f"ssh://bae@127.0.0.1:{server.ssh_port}/frank-shop.git" in out
    fails(frank.ssh("apps:create", "frank-shop"), "already exists")
    for bad in ("Frank", "a--b", "x" * 31, "../x", "'a b'", "'a;b'", "x-"):
        fails(frank.ssh("apps:create", bad), "is not valid")
    fails(frank.ssh("apps:create", "-x"), "No such option '-x'")
    fails(frank.ssh("apps:create", "'unbalanced"), "cannot read the command line")
    fails(frank.ssh("apps:create"), "Missing argument 'APP'")
    fails(frank.ssh("apps:create", "a", "b"), "unexpected extra argument")
    assert "frank-shop" in ok(frank.ssh("apps:list"))
    assert "frank-shop" not in ok(grace.ssh("apps:list"))
    assert "frank-shop" in ok(server.bae("apps:list"))
    fails(grace.ssh("apps:info", "frank-shop"), "do not have access", code=3)
    fails(grace.ssh("apps:info", "nope"), "no app named 'nope'")
    for cmd in (["run", "frank-shop", "true"], ["ps:scale", "frank-shop", "web=2"]):  # nothing pushed yet
        fails(frank.ssh(*cmd), "nothing is deployed to frank-shop yet")
    # deployments
    out = ok(frank.ssh("deployments:create", "frank-shop", "worker"))
    assert "/frank-shop/worker.git" in out
    fails(frank.ssh("deployments:create", "frank-shop", "worker"), "already")
    fails(frank.ssh("deployments:create", "frank-shop", "Bad_Name"), "is not valid")
    listed = ok(frank.ssh("deployments:list", "frank-shop"))
    assert "default" in listed and "worker" in listed
    assert "worker.frank-shop.bae.localhost" in listed
    info = ok(frank.ssh("apps:info", "frank-shop"))
    assert "worker" in info and "Owner:          frank" in info
    # access
    fails(grace.ssh("access:add", "frank-shop", "grace"), "do not have access")
    ok(frank.ssh("access:add", "frank-shop", "grace"))
    fails(frank.ssh("access:add", "frank-shop", "grace"), "already")
    fails(frank.ssh("access:add", "frank-shop", "nobody"), "no user named 'nobody'")
    assert "grace" in ok(frank.ssh("access:list", "frank-shop"))
    assert "frank-shop" in ok(grace.ssh("apps:list"))
    ok(grace.ssh("apps:info", "frank-shop"))
    fails(grace.ssh("access:list", "frank-shop"), "only the owner")
    fails(grace.ssh("apps:destroy", "frank-shop", "--confirm", "frank-shop"), "only the owner")
    fails(grace.ssh("deployments:create", "frank-shop", "extra"), "only the owner")
    ok(frank.ssh("access:remove", "frank-shop", "grace"))
    fails(frank.ssh("access:remove", "frank-shop", "grace"), "not a collaborator")
    fails(grace.ssh("apps:info", "frank-shop"), "do not have access")
    # destroy needs the exact confirmation
    fails(frank.ssh("deployments:destroy", "frank-shop/worker"), "--confirm frank-shop/worker")
    fails(frank.ssh("deployments:destroy", "frank-shop/worker", "--confirm", "frank-shop"), "does not match")
    fails(frank.ssh("deployments:destroy", "frank-shop/default", "--confirm", "frank-shop/default"), "Destroy the app")
    ok(frank.ssh("deployments:destroy", "frank-shop/worker", "--confirm", "frank-shop/worker"))
    assert not (server.data / "repos" / "frank-shop" / "worker.git").exists()
    fails(frank.ssh("apps:destroy", "frank-shop"), "--confirm frank-shop")
    ok(frank.ssh("apps:destroy", "frank-shop", "--confirm", "frank-shop"))
    assert not (server.data / "repos" / "frank-shop").exists()
    fails(frank.ssh("apps:info", "frank-shop"), "no app named")
    # admins may create apps for others, users may not
    ok(admin.ssh("apps:create", "for-grace", "--owner", "grace"))
    assert "for-grace" in ok(grace.ssh("apps:list"))
    fails(grace.ssh("apps:create", "sneaky", "--owner", "frank"), "only admins")


def test_config_show(server, admin):
    out = ok(server.bae("config:show"))
    assert f"port = {server.ssh_port}" in out
    assert "# TCP port of the SSH server" in out
    assert ok(admin.ssh("config:show")) == out
    bad = server.tmp / "bad.toml"
    bad.write_text("[ssh]\nprot = 1\n")
    env = dict(server.env, BAE_CONFIG=str(bad))
    result = run(BAE + ["config:show"], env=env)
    fails(result, "unknown setting 'ssh.prot'", code=78)


def test_shell_subsystem_and_forwarding_refused(server, admin):
    shell = admin.ssh(extra=["-T"])
    assert shell.returncode != 0 and "no interactive shell" in shell.stderr
    sftp = admin.ssh("sftp", extra=["-s"])
    assert sftp.returncode != 0 and "no 'sftp' subsystem" in sftp.stderr
    # a local forward (-L) is only refused when a connection uses it:
    port = free_port()
    cmd = [("LogLevel=INFO" if part == "LogLevel=ERROR" else part) for part in admin.ssh_cmd]
    proc = subprocess.Popen(cmd + ["-N", "-L", f"{port}:127.0.0.1:{server.ssh_port}", "bae@127.0.0.1"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.settimeout(5)
                    try:
                        assert s.recv(100) == b""  # the channel was refused, so ssh closes the socket
                    except ConnectionResetError:
                        pass  # ... or resets it
                    break
            except ConnectionRefusedError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        try:
            err = proc.communicate(timeout=5)[1]
        except subprocess.TimeoutExpired:  # a client busy in its own teardown: its output is what counts
            proc.kill()
            err = proc.communicate()[1]
    assert "administratively prohibited" in err, err
    remote = admin.ssh("whoami", extra=["-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"])
    assert remote.returncode != 0 and "remote port forwarding failed" in remote.stderr
