"""Operating apps: shared config vars, logs, rollback, release phase and one-off commands."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import threading

import pytest
import requests

from helpers import APPS, Load, make_repo, ok, wait_for

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 15, "stop_grace": 5}}




@pytest.fixture(scope="module")
def dev(server):
    return server.user("owner")


@pytest.fixture(scope="module")
def shop(server, dev, tmp_path_factory):
    """App shop with two deployments (default and worker), both running pyweb."""
    tmp = tmp_path_factory.mktemp("shop")
    dev.ssh("apps:create", "shop")
    dev.ssh("deployments:create", "shop", "api")
    for target in ("shop", "shop/api"):
        src = tmp / target.replace("/", "-")
        shutil.copytree(APPS / "pyweb", src)
        push = dev.push(make_repo(src, {}, "pyweb"), target)
        assert push.returncode == 0, push.stderr
    return tmp


def get(server, host, path="/"):
    return requests.get(f"http://127.0.0.1:{server.http_port}{path}", headers={"Host": host}, timeout=10)


def env_of(server, host, key):
    return get(server, host, f"/env/{key}").json()["value"]


def test_shared_and_overridden_config(server, dev, shop):
    ok(dev.ssh("config:set", "shop", "REGION=eu", "TIER=shared"))
    ok(dev.ssh("config:set", "shop/api", "TIER=api-only"))
    assert env_of(server, "shop.bae.localhost", "REGION") == "eu"
    assert env_of(server, "api.shop.bae.localhost", "REGION") == "eu"
    assert env_of(server, "shop.bae.localhost", "TIER") == "shared"
    assert env_of(server, "api.shop.bae.localhost", "TIER") == "api-only"
    shown = ok(dev.ssh("config", "shop/api"))
    assert re.search(r"REGION:\s+eu\s+\(app\)", shown) and re.search(r"TIER:\s+api-only\s+\(deployment api\)", shown)
    assert json.loads(ok(dev.ssh("config", "shop", "--json"))) == {"REGION": "eu", "TIER": "shared"}
    # each config change is a release of each affected deployment, same image
    releases = ok(dev.ssh("releases", "shop/api"))
    assert "set TIER" in releases and "set REGION, TIER" in releases
    info = ok(dev.ssh("apps:info", "shop"))
    assert "REGION, TIER" in info and "eu" not in info.replace("Deployment", "")
    ok(dev.ssh("config:unset", "shop/api", "TIER"))
    assert env_of(server, "api.shop.bae.localhost", "TIER") == "shared"
    assert "TIER=***" in server.log() and "TIER=shared" not in server.log()


def test_bad_config_input(server, dev, shop):
    for args, message in [
        (["config:set", "shop", "1BAD=x"], "is not a config var name"),
        (["config:set", "shop", "PORT=1"], "PORT is set by the platform"),
        (["config:set", "shop", "BAE_X=1"], "BAE_X is set by the platform"),
        (["config:set", "shop", "NOEQUALS"], "is not KEY=VALUE"),
        (["config:set", "shop"], "give at least one KEY=VALUE"),
        (["config:get", "shop", "MISSING"], "has no config var MISSING"),
        (["config:unset", "shop", "MISSING"], "none of MISSING is set"),
        (["config", "nope"], "no app named 'nope'"),
    ]:
        result = dev.ssh(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
    stranger = server.user("stranger")
    assert "do not have access" in stranger.ssh("config", "shop").stderr


def test_tricky_values_round_trip_exactly(server, dev, shop):
    tricky = {
        "MULTI": "line one\nline two\n  indented = yes",
        "QUOTES": "it's \"quoted\" and 'single'",
        "EQUALS": "a=b=c",
        "UNICODE": "héllo wörld ✓ 日本",
        "EMPTY": "",
        "SPACES": "  padded  ",
    }
    args = [shlex.quote(f"{k}={v}") for k, v in tricky.items()]
    ok(dev.ssh("config:set", "shop", *args))
    stored = json.loads(ok(dev.ssh("config", "shop", "--json")))
    for key, value in tricky.items():
        assert stored[key] == value
        assert ok(dev.ssh("config:get", "shop", key))[:-1] == value
        assert env_of(server, "shop.bae.localhost", key) == value
    local = json.loads(server.bae("config", "shop", "--json", check=True).stdout)
    assert local["UNICODE"] == tricky["UNICODE"]
    ok(dev.ssh("config:unset", "shop", *tricky))


def test_no_restart_records_for_the_next_deploy(server, dev, shop):
    before = ok(dev.ssh("releases", "shop")).splitlines()[0].split()[0]
    ok(dev.ssh("config:set", "shop", "LATER=1", "--no-restart"))
    assert ok(dev.ssh("releases", "shop")).splitlines()[0].split()[0] == before  # no new release
    assert env_of(server, "shop.bae.localhost", "LATER") is None
    ok(dev.ssh("ps:restart", "shop"))  # a restart keeps the release's config
    assert env_of(server, "shop.bae.localhost", "LATER") is None
    ok(dev.ssh("config:set", "shop", "NOW=1"))
    assert env_of(server, "shop.bae.localhost", "LATER") == "1"


def test_config_change_rolls_units_without_failed_requests(server, dev, shop):
    ok(dev.ssh("ps:scale", "shop", "web=2"))
    with Load(f"http://127.0.0.1:{server.http_port}/", "shop.bae.localhost", threads=4, rate=300) as load:
        load.wait(300)
        for i in range(3):
            ok(dev.ssh("config:set", "shop", f"ROLL={i}"))
        load.wait(300)
    assert not load.failures, load.failures[:5]
    assert load.ok > 500
    assert env_of(server, "shop.bae.localhost", "ROLL") == "2"


def test_logs_from_two_units_with_a_crash_outlive_the_units(server, dev, shop):
    ok(dev.ssh("ps:scale", "shop", "web=2"))
    for _ in range(6):
        get(server, "shop.bae.localhost", "/marker-request")
    ok(dev.ssh("ps:scale", "shop", "crasher=1", "--no-wait"))
    wait_for(lambda: "crasher.1 crashed (exit 3)" in dev.ssh("logs", "shop", "-n", "500").stdout, interval=0.5,
             what="a crash event in the logs")
    ok(dev.ssh("ps:scale", "shop", "crasher=0", "web=1"))
    lines = ok(dev.ssh("logs", "shop", "-n", "2000")).splitlines()
    stamps = [line.split(" ", 1)[0] for line in lines]
    assert stamps == sorted(stamps)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00 (app|bae)\[[\w.]+\]: ", line) for line in lines)
    units = {m.group(1) for line in lines if (m := re.search(r"app\[(web\.\d)\]: web\.\d \"GET /marker-request", line))}
    assert units == {"web.1", "web.2"}
    assert any("app[crasher.1]: about to crash" in line for line in lines)  # the crash's own last words
    assert any("bae[scheduler]: crasher.1 crashed (exit 3)" in line for line in lines)
    # web.2 and crasher.1 are gone now; their lines are not
    only_web2 = ok(dev.ssh("logs", "shop", "--unit", "web.2", "-n", "2000"))
    assert "marker-request" in only_web2 and "crasher" not in only_web2
    assert "about to crash" in ok(dev.ssh("logs", "shop", "--type", "crasher"))
    router = ok(dev.ssh("logs", "shop", "--router", "-n", "50"))
    assert re.search(r"bae\[router\]: GET /marker-request 200 \d+B \d+ms unit=web\.\d request_id=\w+", router)
    assert dev.ssh("logs", "shop", "-n", "0").returncode != 0


def test_logs_tail_follows_new_lines(server, dev, shop):
    proc = subprocess.Popen(dev.ssh_cmd + ["bae@127.0.0.1", "logs", "shop", "-t", "-n", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    threading.Thread(target=lambda: [seen.append(line) for line in proc.stdout], daemon=True).start()
    wait_for(lambda: seen, what="the last line, shown before the follow starts")
    get(server, "shop.bae.localhost", "/followed-request")
    ok(dev.ssh("ps:restart", "shop"))  # the follow goes on across unit replacements
    get(server, "shop.bae.localhost", "/after-restart")
    wait_for(lambda: any("/after-restart" in line for line in seen), timeout=15, what="the line after the restart")
    proc.terminate()
    proc.wait(10)
    text = "".join(seen)
    assert "/followed-request" in text and "stopping: replaced" in text


def test_rollback_restores_behaviour_and_config(server, dev, shop, tmp_path):
    ok(dev.ssh("config:set", "shop", "FLAVOUR=vanilla"))
    good = ok(dev.ssh("releases", "shop")).splitlines()[0].split()[0]
    clone = tmp_path / "clone"
    dev.git("clone", "-q", dev.url("shop"), str(clone))
    code = (clone / "app.py").read_text().replace('VERSION = "one"', 'VERSION = "two"')
    assert dev.push(make_repo(clone, {"app.py": code}, "two"), "shop").returncode == 0
    ok(dev.ssh("config:set", "shop", "FLAVOUR=chocolate"))
    assert get(server, "shop.bae.localhost").json()["version"] == "two"
    out = ok(dev.ssh("releases:rollback", "shop", good))
    assert f"Rolling back shop to {good}" in out
    assert get(server, "shop.bae.localhost").json()["version"] == "one"
    assert env_of(server, "shop.bae.localhost", "FLAVOUR") == "vanilla"
    top = ok(dev.ssh("releases", "shop")).splitlines()[0]
    assert f"Rollback to {good}" in top and "current" in top
    info = ok(dev.ssh("releases:info", "shop", top.split()[0]))
    assert "FLAVOUR" in info and "vanilla" not in info and "Image:" in info
    # the default is the release before the current one
    out = ok(dev.ssh("releases:rollback", "shop"))
    assert get(server, "shop.bae.localhost").json()["version"] == "two"
    for bad, message in (("v999", "has no release v999"), ("x", "is not a release")):
        result = dev.ssh("releases:rollback", "shop", bad)
        assert result.returncode != 0 and message in result.stderr


def test_failing_release_phase_rejects_the_push(server, dev, tmp_path):
    dev.ssh("apps:create", "phased")
    src = tmp_path / "phased"
    shutil.copytree(APPS / "pyweb", src)
    procfile = (src / "Procfile").read_text() + "release: echo migrating $BAE_RELEASE; test -z \"$FAIL_RELEASE\"\n"
    push = dev.push(make_repo(src, {"Procfile": procfile}, "with a release phase"), "phased")
    assert push.returncode == 0, push.stderr
    assert "Running release command" in push.stderr and "migrating v1" in push.stderr
    ids = ok(dev.ssh("ps", "phased"))
    ok(dev.ssh("config:set", "phased", "FAIL_RELEASE=1", "--no-restart"))
    make_repo(src, {"app.py": (src / "app.py").read_text() + "\n# new\n"}, "new code")
    failed = dev.push(src, "phased")
    assert failed.returncode != 0
    assert "migrating v2" in failed.stderr and "the release command failed (exit 1)" in failed.stderr
    assert "[remote rejected] master -> master (the release command failed (exit 1))" in failed.stderr
    assert ok(dev.ssh("ps", "phased")).split("\n")[1].split()[0:2] == ids.split("\n")[1].split()[0:2]
    assert get(server, "phased.bae.localhost").status_code == 200
    assert "failed: the release command failed" in ok(dev.ssh("releases", "phased"))


def test_run_returns_exit_code_and_output(server, dev, shop):
    # over SSH the command runs as ssh runs any command: the line as it arrives, through bash -c
    result = dev.ssh("run", "shop", "echo out-$BAE_APP; echo err >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout.strip() == "out-shop" and result.stderr.strip() == "err"
    piped = dev.ssh("run", "shop", "wc", "-c", input="twelve bytes")
    assert piped.returncode == 0 and piped.stdout.strip() == "12"
    tty = dev.ssh("run", "shop", "tty; id -un; echo $FLAVOUR$NOW", extra=["-tt"], input="")
    assert tty.returncode == 0
    lines = tty.stdout.replace("\r", "").split("\n")
    assert lines[0].startswith("/dev/pts/") and lines[1] == "bae"
    quoted = dev.ssh("run", "shop", "bash", "-c", shlex.quote("echo a; echo b"))
    assert quoted.returncode == 0 and quoted.stdout.split() == ["a", "b"]
    pipeline = dev.ssh("run", "shop", "printf x%.0s 1 2 3 | wc -c")
    assert pipeline.stdout.strip() == "3"
    assert dev.ssh("run", "shop").returncode != 0
    assert "one-off unit started by owner" in ok(dev.ssh("logs", "shop", "-n", "300"))
    local = server.bae("run", "shop", "echo", "local")
    assert local.returncode == 0 and local.stdout.strip() == "local"
    # `--` ends bae's options (as with heroku and dokku), locally and over SSH; it never reaches bash
    dashed = server.bae("run", "shop", "--", "echo", "-n", "dashed")
    assert dashed.returncode == 0 and dashed.stdout == "dashed", dashed.stderr
    remote = dev.ssh("run", "shop", "--", "echo", "--", "x")
    assert remote.returncode == 0 and remote.stdout.strip() == "-- x", remote.stderr
