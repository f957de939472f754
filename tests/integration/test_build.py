"""Builds of real sample apps through a real push, and the failures that must refuse it."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import docker
import pytest
import requests

from helpers import APPS, free_port, head, make_repo, run

pytestmark = pytest.mark.integration


def app_repo(tmp_path: Path, name: str, extra: dict | None = None) -> Path:
    src = tmp_path / name
    shutil.copytree(APPS / name, src)
    return make_repo(src, extra or {}, f"{name} sample")


def built_image(push_output: str) -> str:
    return re.search(r"Built image (\S+) ", push_output).group(1)


RUN = secrets.token_hex(4)  # labels this run's containers: other runs on the same engine keep theirs


def run_unit(image: str, command: str, env: dict | None = None) -> tuple[str, int]:
    """Start the image the way a unit starts (entrypoint + Procfile command) and return (id, host port)."""
    client = docker.from_env(version="auto")
    port = free_port()
    container = client.containers.run(image, [command], detach=True, environment={"PORT": "5000", "DYNO": "web.1", **(env or {})},
                                      ports={"5000/tcp": ("127.0.0.1", port)}, labels={"bae.test": RUN})
    return container.id, port


def get(port: int, path: str = "/", timeout: float = 30.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(f"http://127.0.0.1:{port}{path}", timeout=2)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def dev(server):
    return server.user("builder")


@pytest.fixture(scope="module", autouse=True)
def cleanup_containers():
    yield
    client = docker.from_env(version="auto")
    for c in client.containers.list(all=True, filters={"label": f"bae.test={RUN}"}):  # this run's only
        c.remove(force=True)


def no_build_containers(server) -> bool:
    client = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    return not client.containers.list(all=True, filters={"label": [f"bae.platform={instance}", "bae.role=build"]})


def test_flask_with_gunicorn(server, dev, tmp_path):
    dev.ssh("apps:create", "flask")
    repo = app_repo(tmp_path, "flask")
    push = dev.push(repo, "flask")
    assert push.returncode == 0, push.stderr
    log = push.stderr
    assert "remote: -----> Python app detected" in log
    assert "Using Python 3.11" in log and ".python-version requests Python 3.11" in log
    assert "remote: -----> Installing requirements with uv" in log
    assert "remote:        Procfile declares types -> web" in log
    assert re.search(r"Built image \S+ \([\d.]+ MB, this build's layer [\d.]+ MB\)", log)
    container, port = run_unit(built_image(log), "gunicorn app:app --bind 0.0.0.0:${PORT:-5000} --workers 2  # two workers")
    assert get(port).text == "hello from flask on web.1\n"
    # a code-only change reuses the previous build's output: one layer with the changed file
    make_repo(repo, {"app.py": (repo / "app.py").read_text().replace("hello", "howdy"), "Procfile":
                     (repo / "Procfile").read_text() + "clock: python -c 'print(1)'\n"}, "code change")
    again = dev.push(repo, "flask")
    assert again.returncode == 0, again.stderr
    assert "Code-only change: reusing build 1's Python output (its inputs are unchanged)" in again.stderr
    assert "2 file(s) changed: Procfile, app.py" in again.stderr
    assert "Procfile declares types -> web, clock" in again.stderr
    assert "Installing requirements" not in again.stderr
    container2, port2 = run_unit(built_image(again.stderr), "gunicorn app:app --bind 0.0.0.0:$PORT")
    assert get(port2).text == "howdy from flask on web.1\n"
    # deleting a file runs the buildpacks again; the requirements still come from the cache
    (repo / "Procfile").write_text((repo / "Procfile").read_text())
    run(["git", "rm", "-q", ".python-version"], cwd=repo, check=True)
    third = dev.push(make_repo(repo, {}, "delete a file"), "flask")
    assert third.returncode == 0, third.stderr
    assert "Code-only change" not in third.stderr
    assert "Dependencies unchanged: reusing the cached virtualenv" in third.stderr
    _, port3 = run_unit(built_image(third.stderr), "gunicorn app:app --bind 0.0.0.0:$PORT")
    assert get(port3).text == "howdy from flask on web.1\n"
    # builds are listed and their logs kept
    listed = dev.ssh("builds", "flask").stdout
    assert listed.count("succeeded") == 3
    assert "Code-only change" in dev.ssh("builds:output", "flask", "2").stdout
    assert no_build_containers(server)


def test_code_only_images_are_the_previous_image_plus_one_layer(server, dev, tmp_path):
    """A code-only rebuild's image: the previous one's layers, settings and labels plus one layer with
    the changed files (made without a container), new directories the app's own; a chain of them
    runs, and an older one can be removed while a newer one uses its layers."""
    dev.ssh("apps:create", "layered")
    repo = app_repo(tmp_path, "flask")
    first = dev.push(repo, "layered")
    assert first.returncode == 0, first.stderr
    client = docker.from_env(version="auto")
    base = client.images.get(built_image(first.stderr))
    make_repo(repo, {"app.py": (repo / "app.py").read_text().replace("hello", "howdy"),
                     "notes/deep/readme.txt": "new directories\n"}, "code and a new directory")
    second = dev.push(repo, "layered")
    assert second.returncode == 0, second.stderr
    assert "Code-only change: reusing build 1's Python output" in second.stderr
    assert "2 file(s) changed: app.py, notes/deep/readme.txt" in second.stderr
    image = client.images.get(built_image(second.stderr))
    assert image.attrs["RootFS"]["Layers"] == base.attrs["RootFS"]["Layers"] + image.attrs["RootFS"]["Layers"][-1:]
    assert image.labels["bae.build"] == "2" and image.labels["bae.role"] == "image"
    for key in ("Entrypoint", "Cmd", "User", "WorkingDir", "Env"):
        assert image.attrs["Config"][key] == base.attrs["Config"][key], key
    assert len(image.history()) == len(base.history()) + 1
    out = client.containers.run(image.id, ["stat -c '%U %a' notes notes/deep && cat notes/deep/readme.txt "
                                           "&& touch notes/deep/written && grep -q howdy app.py && echo changed"],
                                remove=True, labels={"bae.test": RUN}).decode()
    assert out.split("\n")[:4] == ["bae 755", "bae 755", "new directories", "changed"], out
    make_repo(repo, {"app.py": (repo / "app.py").read_text().replace("howdy", "hi")}, "again")
    third = dev.push(repo, "layered")
    assert third.returncode == 0, third.stderr
    assert "Code-only change: reusing build 2's Python output" in third.stderr
    newest = built_image(third.stderr)
    assert len(client.images.get(newest).attrs["RootFS"]["Layers"]) == len(image.attrs["RootFS"]["Layers"]) + 1
    assert dev.ssh("ps:scale", "layered", "web=0").returncode == 0  # no unit uses build 2's image now
    client.images.remove(built_image(second.stderr), force=True)  # the releases after it keep its layers
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image.id)
    container, port = run_unit(newest, "gunicorn app:app --bind 0.0.0.0:$PORT")
    assert get(port).text == "hi from flask on web.1\n"
    assert no_build_containers(server)


def test_django_collectstatic(server, dev, tmp_path):
    dev.ssh("apps:create", "django")
    repo = app_repo(tmp_path, "django")
    push = dev.push(repo, "django")
    assert push.returncode == 0, push.stderr
    assert "Running python manage.py collectstatic --noinput" in push.stderr
    assert "static file" in push.stderr  # "1 static file copied"
    image = built_image(push.stderr)
    listing = docker.from_env(version="auto").containers.run(image, ["ls staticfiles"], remove=True).decode()
    assert "site.css" in listing
    _, port = run_unit(image, "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT")
    assert get(port).text == "hello from django\n"


def test_express_with_lockfile(server, dev, tmp_path):
    dev.ssh("apps:create", "express")
    repo = app_repo(tmp_path, "express")
    push = dev.push(repo, "express")
    assert push.returncode == 0, push.stderr
    log = push.stderr
    assert "Node.js app detected" in log
    assert "Installing dependencies with npm ci (package-lock.json)" in log
    assert "Running npm run build" in log and "Pruning devDependencies" in log
    assert "Default types for buildpack -> web" in log
    _, port = run_unit(built_image(log), ".bae/bin/npm-start")  # the default web process: npm start without npm
    assert get(port).text == "hello from express on web.1\n"
    assert get(port, "/built").text == "built at build time: true\n"
    assert get(port, "/devdeps").text == "pruned\n"
    make_repo(repo, {"server.js": (repo / "server.js").read_text() + "\n// change\n"}, "code")
    again = dev.push(repo, "express")
    assert again.returncode == 0 and "package-lock.json unchanged: restoring node_modules" in again.stderr
    assert "Running npm run build" in again.stderr  # build scripts read the code: no reuse
    _, port2 = run_unit(built_image(again.stderr), ".bae/bin/npm-start")
    assert get(port2, "/devdeps").text == "pruned\n"


def node_cache(server, app: str) -> Path:
    """The nodejs buildpack's cache of a deployment, on the host."""
    return server.data / "cache" / app / "default" / "buildpacks" / "nodejs"


def test_node_modules_cache_one_copy_and_lockfile_changes(server, dev, tmp_path):
    dev.ssh("apps:create", "exnext")
    repo = app_repo(tmp_path, "express")
    assert dev.push(repo, "exnext").returncode == 0
    cache = node_cache(server, "exnext")
    # one copy, the tree as installed (devDependencies too): npm 9's production tree is derived from it
    assert (cache / "node_modules" / "is-odd").is_dir() and (cache / "node_modules" / "express").is_dir()
    assert not (cache / "node_modules.prod").exists() and not (cache / "node_modules.full").exists()
    # a push changing package.json and the lockfile (a new dependency) installs, whatever else it changes
    make_repo(repo, {name: (APPS / "express-next" / name).read_text() for name in ("package.json", "package-lock.json")}
              | {"server.js": (repo / "server.js").read_text() + "\n// change\n"}, "left-pad")
    push = dev.push(repo, "exnext")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with npm ci (package-lock.json)" in push.stderr
    assert "unchanged: restoring" not in push.stderr
    image = built_image(push.stderr)
    client = docker.from_env(version="auto")
    listing = client.containers.run(image, ["ls node_modules; node -e 'console.log(require(\"left-pad\")(1, 3, 0))'"],
                                    remove=True, labels={"bae.test": RUN}).decode()
    assert "left-pad" in listing.split() and "express" in listing.split() and "is-odd" not in listing.split()
    assert listing.split()[-1] == "001"
    assert (cache / "node_modules" / "left-pad").is_dir()
    # the cache of the layout before (node_modules.full + .prod) is never read, even under the current key
    (cache / "node_modules").rename(cache / "node_modules.full")
    (cache / "node_modules.full" / "left-pad" / "index.js").write_text("module.exports = () => 'stale';\n")
    shutil.copytree(cache / "node_modules.full", cache / "node_modules.prod", symlinks=True)
    run(["chown", "-R", "1100:1100", str(cache)], check=True)  # the build user's, as a build would have left it
    make_repo(repo, {"server.js": (repo / "server.js").read_text() + "\n// again\n"}, "code")
    push = dev.push(repo, "exnext")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with npm ci (package-lock.json)" in push.stderr
    answer = client.containers.run(built_image(push.stderr), ["node -e 'console.log(require(\"left-pad\")(1, 3, 0))'"],
                                   remove=True, labels={"bae.test": RUN}).decode().strip()
    assert answer == "001"
    assert not (cache / "node_modules.full").exists() and not (cache / "node_modules.prod").exists()


def express_with_build(tmp_path: Path, name: str, build: str) -> Path:
    """The express sample whose build script also runs ``build`` (a line of JavaScript)."""
    src = tmp_path / name
    shutil.copytree(APPS / "express", src)
    package = (src / "package.json").read_text()
    script = "node build.js && node -e '" + build + "'"
    (src / "package.json").write_text(package.replace('"build": "node build.js"', json.dumps("build") + ": " + json.dumps(script)))
    return make_repo(src, {}, name)


def test_node_modules_cache_is_the_tree_as_installed(server, dev, tmp_path):
    """The cache copy runs while build scripts run: what they add to node_modules is not in it; one that
    writes into an installed file in place gets no cache from that build, and a pristine one after."""
    cache_of = {name: node_cache(server, name) for name in ("exadd", "exwrite")}
    dev.ssh("apps:create", "exadd")
    repo = express_with_build(tmp_path, "exadd", 'require("fs").mkdirSync("node_modules/.cache/tool", {recursive: true}); '
                                                 'require("fs").writeFileSync("node_modules/.cache/tool/out", "x")')
    push = dev.push(repo, "exadd")
    assert push.returncode == 0, push.stderr
    assert "not cached" not in push.stderr
    cache = cache_of["exadd"]
    assert (cache / "key").is_file() and (cache / "node_modules" / "express").is_dir()
    assert (cache / "node_modules" / "is-odd").is_dir()  # pruned from the app, kept in the cache
    assert not (cache / "node_modules" / ".cache").exists()
    assert not list(cache.glob("copy-first"))
    # a lockfile-only change (package.json's facts come from the cache): npm ci again, URLs added by their own run
    make_repo(repo, {"package-lock.json": (repo / "package-lock.json").read_text() + "\n"}, "lockfile only")
    push = dev.push(repo, "exadd")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with npm ci (package-lock.json)" in push.stderr
    assert (repo / "package-lock.json").read_text().count('"resolved"') == 0  # the pushed file as it was
    _, port = run_unit(built_image(push.stderr), ".bae/bin/npm-start")
    assert get(port, "/devdeps").text == "pruned\n"

    dev.ssh("apps:create", "exwrite")
    repo = express_with_build(tmp_path, "exwrite", 'require("fs").appendFileSync("node_modules/express/index.js", "\\n// built\\n")')
    push = dev.push(repo, "exwrite")
    assert push.returncode == 0, push.stderr
    assert "node_modules not cached: a build script wrote into an installed file" in push.stderr
    cache = cache_of["exwrite"]
    assert not (cache / "key").exists() and not (cache / "node_modules").exists() and (cache / "copy-first").exists()
    make_repo(repo, {"server.js": (repo / "server.js").read_text() + "\n// change\n"}, "code")
    push = dev.push(repo, "exwrite")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with npm ci" in push.stderr and "not cached" not in push.stderr
    assert (cache / "key").is_file() and "// built" not in (cache / "node_modules" / "express" / "index.js").read_text()
    make_repo(repo, {"server.js": (repo / "server.js").read_text() + "\n// again\n"}, "code")
    push = dev.push(repo, "exwrite")
    assert push.returncode == 0 and "package-lock.json unchanged: restoring node_modules" in push.stderr, push.stderr
    built = docker.from_env(version="auto").containers.run(
        built_image(push.stderr), ["grep -c '// built' node_modules/express/index.js"], remove=True,
        labels={"bae.test": RUN}).decode().strip()
    assert built == "1"  # the build wrote into a pristine copy once


def test_node_app_without_procfile(server, dev, tmp_path):
    dev.ssh("apps:create", "plain-node")
    push = dev.push(app_repo(tmp_path, "node-noprocfile"), "plain-node")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with npm install (no lockfile" in push.stderr
    assert "Default types for buildpack -> web" in push.stderr
    _, port = run_unit(built_image(push.stderr), ".bae/bin/npm-start")  # npm's default start: node server.js
    assert get(port).text == "hello from plain node\n"


def test_custom_buildpacks_follow_the_contract(server, dev, tmp_path):
    dev.ssh("apps:create", "custom")
    bp = str(APPS / "custom-buildpack")
    echo = str(APPS / "echo-buildpack")
    refused = dev.ssh("buildpacks:set", "custom", bp)
    assert refused.returncode != 0 and "only admins may use local buildpacks" in refused.stderr
    assert server.bae("buildpacks:set", "custom", bp, echo).returncode == 0
    assert bp in dev.ssh("buildpacks", "custom").stdout
    repo = make_repo(tmp_path / "src", {"hello.txt": "hi there", ".slugignore": "docs/\n*.log\n",
                                        "docs/manual.md": "x", "debug.log": "x", "keep.txt": "k"})
    push = dev.push(repo, "custom")
    assert push.returncode == 0, push.stderr
    log = push.stderr
    assert "Hello app detected" in log and "Echo app detected" in log
    assert "cwd is " in log and "build number 1 in this cache" in log
    assert "The echo buildpack sees HELLO_COMPILED=yes" in log  # export chaining
    assert "Default types for buildpack -> web, greet" in log  # bin/release without the execute bit
    image = built_image(log)
    client = docker.from_env(version="auto")
    files = client.containers.run(image, ["cat files.txt"], remove=True).decode().split()
    assert "keep.txt" in files and "hello.txt" in files
    assert "docs" not in files and "debug.log" not in files  # .slugignore
    greeting = client.containers.run(image, ['echo "$GREETING from $HOME"'], remove=True).decode()
    assert greeting.strip() == "hi there from /home/bae"  # .profile.d is sourced
    owner = client.containers.run(image, ["stat -c %U /home/bae/app /home/bae/app/hello.txt; id -un"], remove=True).decode()
    assert owner.split() == ["bae", "bae", "bae"]
    # the cache persists between builds of this deployment only
    make_repo(repo, {"hello.txt": "again"}, "again")
    assert "build number 2 in this cache" in dev.push(repo, "custom").stderr
    dev.ssh("deployments:create", "custom", "other")
    server.bae("buildpacks:set", "custom/other", bp, check=True)
    assert "build number 1 in this cache" in dev.push(repo, "custom/other").stderr
    # back to detection: no built-in accepts this app
    assert dev.ssh("buildpacks:clear", "custom").returncode == 0
    make_repo(repo, {"x": "y"}, "x")
    refused = dev.push(repo, "custom")
    assert refused.returncode != 0
    assert "No buildpack detected this app." in refused.stderr
    assert "Files at the root of your push: .slugignore, hello.txt, keep.txt, x" in refused.stderr
    assert "The python buildpack looks for: requirements.txt" in refused.stderr
    assert "The nodejs buildpack looks for: package.json" in refused.stderr


def test_git_url_buildpack_with_ref(server, dev, tmp_path):
    bp_repo = tmp_path / "bp.git"
    work = make_repo(tmp_path / "bp", {})
    shutil.copytree(APPS / "custom-buildpack" / "bin", work / "bin", dirs_exist_ok=True)
    make_repo(work, {}, "buildpack v1")
    run(["git", "tag", "v1"], cwd=work, check=True)
    run(["git", "clone", "-q", "--bare", str(work), str(bp_repo)], check=True)
    dev.ssh("apps:create", "giturl")
    bad = dev.ssh("buildpacks:set", "giturl", "not a url")
    assert bad.returncode != 0 and "neither a built-in buildpack nor an https:// or git:// URL" in bad.stderr
    assert dev.ssh("buildpacks:set", "giturl", f"file://{bp_repo}#v1").returncode != 0  # host paths: admins only
    assert dev.ssh("buildpacks:set", "giturl", "ssh://git@example.com/bp.git").returncode != 0  # https/git only
    assert server.bae("buildpacks:set", "giturl", f"file://{bp_repo}#v1").returncode == 0
    push = dev.push(make_repo(tmp_path / "src", {"hello.txt": "git"}), "giturl")
    assert push.returncode == 0, push.stderr
    assert "Hello app detected" in push.stderr
    server.bae("buildpacks:set", "giturl", f"file://{bp_repo}#no-such-ref", check=True)
    failed = dev.push(tmp_path / "src", "giturl", "master", "--force")
    make_repo(tmp_path / "src", {"hello.txt": "again"}, "again")
    failed = dev.push(tmp_path / "src", "giturl")
    assert failed.returncode != 0 and "could not fetch buildpack" in failed.stderr


def test_buildpack_urls_cannot_reach_the_platforms_own_network(server, dev, tmp_path):
    import socket
    import sqlite3

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    seen = []

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(1)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        dev.ssh("apps:create", "probe")
        for url in (f"https://127.0.0.1:{port}/x.git", f"git://localhost:{port}/x.git", f"https://0x7f000001:{port}/x",
                    "https://169.254.169.254/latest.git", "https://10.1.2.3/x.git", "https://192.168.0.1/x.git"):
            refused = dev.ssh("buildpacks:set", "probe", url)
            assert refused.returncode != 0 and "is not on the public internet" in refused.stderr, (url, refused.stderr)
        # a URL stored earlier, or a name that now resolves to loopback: refused at the clone as well
        db = sqlite3.connect(server.data / "bae.db")
        with db:
            db.execute("update deployments set buildpacks = ?, buildpacks_admin = 0 where app_id = "
                       "(select id from apps where name = 'probe')", [f'["https://localhost:{port}/x.git"]'])
        db.close()
        src = make_repo(tmp_path / "src", {"hello.txt": "probe"})
        push = dev.push(src, "probe")
        assert push.returncode != 0 and "is not on the public internet" in push.stderr, push.stderr
        assert not seen, "the platform connected to its own loopback for a user's buildpack URL"
        # an admin may name a host on a private network; a failed clone never says why
        assert server.bae("buildpacks:set", "probe", f"https://127.0.0.1:{port}/x.git").returncode == 0
        push = dev.push(src, "probe")
        assert push.returncode != 0 and "(the git clone failed)" in push.stderr, push.stderr
        assert seen, "the admin's URL was not tried"
        lines = [line for line in push.stderr.splitlines() if "could not fetch" in line or "!" in line]
        for word in ("SSL", "TLS", "onnect", "refused", "reset", str(port) + " ", "gnutls", "closed"):
            assert not any(word in line.replace(f"127.0.0.1:{port}/x.git", "") for line in lines), (word, lines)
    finally:
        listener.close()


def test_failed_builds_refuse_the_push_and_keep_the_log(server, dev, tmp_path):
    dev.ssh("apps:create", "failing")
    server.bae("buildpacks:set", "failing", str(APPS / "custom-buildpack"), check=True)
    repo = make_repo(tmp_path / "src", {"hello.txt": "ok"})
    assert dev.push(repo, "failing").returncode == 0
    good = head(repo)
    git_dir = server.data / "repos" / "failing" / "default.git"
    make_repo(repo, {"fail.txt": "please"}, "breaks the build")
    failed = dev.push(repo, "failing")
    assert failed.returncode != 0
    assert "fail.txt asks this build to fail" in failed.stderr
    assert "the custom-buildpack buildpack failed to compile this app (exit 3)" in failed.stderr
    assert "Push rejected; the previous release keeps serving." in failed.stderr
    assert "[remote rejected] master -> master" in failed.stderr
    assert (git_dir / "refs" / "heads" / "master").read_text().strip() == good
    assert not list((git_dir / "objects").glob("incoming-*"))
    builds = dev.ssh("builds", "failing").stdout
    assert "failed" in builds
    number = re.search(r"^(\d+)\s+failed", builds, re.M).group(1)
    assert "fail.txt asks this build to fail" in dev.ssh("builds:output", "failing", number).stdout
    bad = dev.ssh("builds:output", "failing", "x1")
    assert bad.returncode != 0 and "is not a build number" in bad.stderr
    assert no_build_containers(server)


def test_bad_requirement_and_python_version(server, dev, tmp_path):
    dev.ssh("apps:create", "badreq")
    repo = make_repo(tmp_path / "src", {"requirements.txt": "this-package-does-not-exist-bae-test==1.0\n",
                                        "Procfile": "web: python3 -m http.server $PORT\n"})
    failed = dev.push(repo, "badreq")
    assert failed.returncode != 0
    assert "uv could not install the requirements" in failed.stderr
    assert "this-package-does-not-exist-bae-test was not found in the package registry" in failed.stderr
    make_repo(repo, {"requirements.txt": "", "runtime.txt": "# pinned\npython-3.9.18\n"}, "old python")
    failed = dev.push(repo, "badreq")
    assert failed.returncode != 0
    assert "runtime.txt requests Python 3.9.18, which no stack provides (available: 3.11" in failed.stderr
    assert "git ls-remote" and not dev.git("ls-remote", dev.url("badreq")).stdout.strip()


def test_disconnect_during_build_cleans_up(server, dev, tmp_path):
    dev.ssh("apps:create", "slow")
    server.bae("buildpacks:set", "slow", str(APPS / "custom-buildpack"), check=True)
    repo = make_repo(tmp_path / "src", {"hello.txt": "x", "slow.txt": "sleep"})
    proc = subprocess.Popen(["git", "push", dev.url("slow"), "master"], cwd=repo, env=dev.git_env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []

    def read():
        for line in proc.stderr:
            seen.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any("sleeping" in line for line in seen):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
        time.sleep(0.1)
    # the pusher goes away: git and its ssh die (SIGTERM: SIGINT may be ignored when run in the background)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while not no_build_containers(server):
        assert time.monotonic() < deadline, "the build container outlived its pusher"
        time.sleep(0.3)
    builds = dev.ssh("builds", "slow").stdout
    assert not (server.data / "repos" / "slow" / "default.git" / "refs" / "heads" / "master").exists(), (
        builds + dev.ssh("builds:output", "slow", "1").stdout + server.log()[-3000:])
    assert "failed" in builds


def test_concurrent_builds_of_different_deployments(server, dev, tmp_path):
    names = ["conc-a", "conc-b", "conc-c"]
    repos = {}
    for name in names:
        dev.ssh("apps:create", name)
        server.bae("buildpacks:set", name, str(APPS / "custom-buildpack"), check=True)
        repos[name] = make_repo(tmp_path / name, {"hello.txt": name})
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.setdefault(n, dev.push(repos[n], n))) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        assert results[name].returncode == 0, results[name].stderr
        assert "build number 1 in this cache" in results[name].stderr  # separate caches
    assert no_build_containers(server)


def test_node_engine_installed_from_the_npm_registry(server, dev, tmp_path):
    dev.ssh("apps:create", "node20")
    package = '{"name": "n20", "version": "1.0.0", "engines": {"node": "20.x"}}'
    server_js = "require('http').createServer((q, s) => s.end(process.version)).listen(process.env.PORT)"
    push = dev.push(make_repo(tmp_path / "src", {"package.json": package, "server.js": server_js}), "node20")
    assert push.returncode == 0, push.stderr
    assert re.search(r"Installing Node\.js 20\.\d+\.\d+ \(engines\.node: 20\.x; the stack has v18", push.stderr)
    version = docker.from_env(version="auto").containers.run(built_image(push.stderr), ["node --version"], remove=True)
    assert version.decode().startswith("v20.")
    dev.ssh("apps:create", "node99")
    impossible = package.replace("20.x", "99.x")
    push = dev.push(make_repo(tmp_path / "src99", {"package.json": impossible, "server.js": server_js}), "node99")
    assert push.returncode == 0, push.stderr
    assert "engines.node asks for 99.x, which the stack's Node.js v18" in push.stderr
    assert "Building with v18" in push.stderr


def test_pipfile_lock_and_pyproject(server, dev, tmp_path):
    dev.ssh("apps:create", "pipfile")
    lock = '{"_meta": {}, "default": {"six": {"version": "==1.16.0"}}, "develop": {}}'
    push = dev.push(make_repo(tmp_path / "a", {"Pipfile.lock": lock, "Procfile": "web: python3 -m http.server $PORT"}),
                    "pipfile")
    assert push.returncode == 0, push.stderr
    assert "+ six==1.16.0" in push.stderr
    dev.ssh("apps:create", "pyproj")
    project = '[project]\nname = "hello-bae"\nversion = "0.1"\n[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    push = dev.push(make_repo(tmp_path / "b", {"pyproject.toml": project, "hello_bae.py": "X = 1\n"}), "pyproj")
    assert push.returncode == 0, push.stderr
    assert "+ hello-bae==0.1" in push.stderr
    out = docker.from_env(version="auto").containers.run(built_image(push.stderr), ["python -c 'import hello_bae; print(hello_bae.X)'"],
                                                          remove=True, working_dir="/tmp")
    assert out.decode().strip() == "1"


def test_destroy_removes_images(server, dev, tmp_path):
    dev.ssh("apps:create", "doomed")
    server.bae("buildpacks:set", "doomed", str(APPS / "custom-buildpack"), check=True)
    push = dev.push(make_repo(tmp_path / "src", {"hello.txt": "x"}), "doomed")
    image = built_image(push.stderr)
    client = docker.from_env(version="auto")
    assert client.images.get(image)
    assert dev.ssh("apps:destroy", "doomed", "--confirm", "doomed").returncode == 0
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image)
    assert not (server.data / "cache" / "doomed").exists()
