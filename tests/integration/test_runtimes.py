"""Apps shaped like today's Heroku samples, pushed with real git over ssh: each stack chosen
from the app's Python pins, Node.js with the npm of its line, yarn (classic and berry), pnpm,
uv.lock and poetry.lock; each app answers HTTP through the router with the runtime it asked for.

The trixie and sid stacks are built by the first push that needs them (streaming progress to
the pusher), or by the suite in the background before (tests/conftest.py), and kept, tagged by
recipe hash: a run builds each at most once, later runs reuse them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest
import requests

from helpers import APPS, make_repo

pytestmark = pytest.mark.integration

# Node 12's npm 6 starting an app under a 0.5-CPU plan on a busy 2-core host can take most of a minute
SETTINGS = {"scheduler": {"boot_timeout": 180}}

UV = str(Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin" / "uv")


@pytest.fixture(scope="module")
def dev(server):
    return server.user("runtimes")


def app_repo(tmp_path: Path, name: str, extra: dict | None = None) -> Path:
    src = tmp_path / name
    shutil.copytree(APPS / name, src)
    return make_repo(src, extra or {}, f"{name} sample")


def answer(server, app: str, timeout: float = 30.0) -> str:
    """The app's answer through the router (waits for the route, which follows the deploy)."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"http://127.0.0.1:{server.http_port}/", headers={"Host": f"{app}.bae.localhost"},
                                timeout=10)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response.text
        time.sleep(0.2)


def deploy(server, dev, tmp_path, app: str, sample: str, extra: dict | None = None) -> str:
    assert dev.ssh("apps:create", app).returncode == 0
    push = dev.push(app_repo(tmp_path, sample, extra), app)
    assert push.returncode == 0, push.stderr
    return push.stderr


def restart(server, dev, config: str) -> None:
    """Restart `bae serve` with ``config``; ready once a command answers over SSH."""
    server.stop()
    server.config.write_text(config)
    server.start()
    deadline = time.monotonic() + 60
    while dev.ssh("whoami").returncode != 0:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.5)


def stack_missing(server, name: str) -> bool:
    probe = ("from bae.config import load; from buildpacks.stack import stack_exists, stack_tag; "
             f"print(stack_exists(stack_tag(load().build, {name!r})))")
    out = subprocess.run([sys.executable, "-c", probe], env=server.env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip() == "False"


def test_django5_pinning_313_builds_on_trixie(server, dev, tmp_path):
    fresh = stack_missing(server, "trixie")
    log = deploy(server, dev, tmp_path, "dj5", "django5")
    assert re.search(r"-----> Stack trixie \(Python 3\.13\.\d+\): \.python-version requests Python 3\.13; "
                     r"trixie is the oldest stack with Python 3\.13", log)
    if fresh:  # the first push that needs a stack builds it (or waits for the suite's build), and says so
        assert "Building the trixie stack image (its first use on this platform" in log
        assert ("remote:        Bootstrapping Debian trixie (minbase)" in log or "Step 1/" in log
                or "is up to date" in log)
    assert "Running python manage.py collectstatic --noinput" in log
    assert re.fullmatch(r"django 5\.2\.\d+ on python 3\.13\.\d+\n", answer(server, "dj5"))
    info = dev.ssh("apps:info", "dj5").stdout
    assert "stack: auto (from the Python pins); last build used trixie: .python-version requests Python 3.13" in info


def test_flask_pinning_314_in_runtime_txt_builds_on_sid(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "fl314", "flask314")
    assert re.search(r"-----> Stack sid \(Python 3\.14\.\d+\): runtime\.txt requests Python 3\.14\.2", log)
    warnings = [line for line in log.splitlines() if "Warning:" in line]
    assert len(warnings) == 1 and re.search(r"runtime\.txt requests Python 3\.14\.2; stack sid has 3\.14\.\d+, "
                                            r"so this build uses 3\.14\.\d+", warnings[0])
    assert "Installing requirements with uv" in log
    assert re.fullmatch(r"flask on python 3\.14\.\d+\n", answer(server, "fl314"))
    # stack:set pins a stack by hand; a pin it cannot satisfy is refused in one line, auto goes back
    bad = dev.ssh("stack:set", "fl314", "jessie")
    assert bad.returncode != 0 and "there is no stack named 'jessie'" in bad.stderr
    assert "Stacks: bookworm, trixie, sid, or auto" in bad.stderr
    assert dev.ssh("stack:set", "fl314", "trixie").returncode == 0
    repo = tmp_path / "flask314"
    refused = dev.push(make_repo(repo, {"app.py": (repo / "app.py").read_text() + "\n"}, "touch"), "fl314")
    assert refused.returncode != 0
    assert "runtime.txt requests Python 3.14.2, but this deployment is set to stack trixie" in refused.stderr
    assert "stack:set APP[/DEP] auto" in refused.stderr
    assert dev.ssh("stack:set", "fl314", "auto").returncode == 0
    assert "stack: auto" in dev.ssh("apps:info", "fl314").stdout
    # a pin no stack satisfies, and one that is not a version: one line each, naming what there is
    old = dev.push(make_repo(repo, {"runtime.txt": "python-3.5.1\n"}, "old"), "fl314")
    assert old.returncode != 0
    assert re.search(r"runtime\.txt requests Python 3\.5\.1, which no stack provides \(available: 3\.11\.\d+ "
                     r"\(bookworm\), 3\.13\.\d+ \(trixie\), 3\.14\.\d+ \(sid\)\)", old.stderr)
    junk = dev.push(make_repo(repo, {"runtime.txt": "python-three\n"}, "junk"), "fl314")
    assert junk.returncode != 0 and "runtime.txt says 'python-three', which is not a Python version" in junk.stderr
    assert "Push rejected; the previous release keeps serving." in junk.stderr
    assert re.fullmatch(r"flask on python 3\.14\.\d+\n", answer(server, "fl314"))


def test_express_on_node_12_with_its_npm_and_a_native_addon(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "ex12", "express12")
    assert re.search(r"Installing Node\.js 12\.22\.12 \(engines\.node: 12\.x; the stack has v18", log)
    assert "with npm 6.14.16 (the npm of Node.js 12)" in log
    assert "Installing dependencies with npm ci (package-lock.json)" in log
    assert answer(server, "ex12") == "node v12.22.12 npm/6.14.16 bufferutil ok built-from-source\n"
    # bufferutil was compiled against the installed Node's own headers: node-gyp downloaded none
    headers = dev.ssh("run", "ex12", "--", "ls ~/.cache/node-gyp 2>/dev/null || echo none downloaded")
    assert headers.stdout.strip() == "none downloaded", headers.stdout + headers.stderr
    # the registry tarballs it fetched (Node.js, npm, the packages) are in the platform's store,
    # root's and read-only, each named by its sha512; the first build of another deployment of
    # the same code takes them from there: its npm cache records no tarball download
    store = server.data / "build-store" / "npm"
    stored = [p for p in store.rglob("*") if p.is_file() and p.parent.name != "tools"]
    assert len(stored) >= 70
    for path in stored:
        info = path.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o444), path
        assert hashlib.sha512(path.read_bytes()).hexdigest() == "".join(path.relative_to(store).parts)

    def downloads(app: str) -> list[str]:
        index = server.data / "cache" / app / "default" / "npm" / "_cacache" / "index-v5"
        return [p.name for p in index.rglob("*") if p.is_file() and b".tgz" in p.read_bytes()]

    assert len(downloads("ex12")) >= 70
    # Node.js's and npm's tarballs are marked as tools: seeded into every build's cache, the others by lockfile
    assert len(list((store / "tools").iterdir())) == 2
    # that build made a toolchain image (the stack + Node.js 12 and npm 6, from the store): a second
    # app's build starts from it, unpacks neither, and its release image's own layer is the app only
    assert "Making a toolchain image with Node.js 12.22.12 and npm 6.14.16" in log
    log = deploy(server, dev, tmp_path / "second", "ex12b", "express12")
    assert "Installing dependencies with npm ci (package-lock.json)" in log
    assert "from the platform's toolchain image: nothing to unpack" in log and "Making a toolchain" not in log
    assert downloads("ex12b") == []
    assert answer(server, "ex12b") == "node v12.22.12 npm/6.14.16 bufferutil ok built-from-source\n"
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    toolchains = engine.images.list(name=f"bae/{instance}/toolchain/node")
    assert len(toolchains) == 1, toolchains
    image = re.search(r"Built image (\S+) \(.*this build's layer ([0-9.]+) MB\)", log)
    assert float(image.group(2)) < 20, log  # Node.js + npm alone are ~60 MB
    parents = {layer["Id"] for layer in engine.api.history(image.group(1))}
    assert toolchains[0].id in parents


def test_yarn_classic(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "yarn1", "yarn1")
    assert "Installing yarn 1.22.22" in log and "Installing dependencies with yarn install (yarn.lock)" in log
    assert "Pruning devDependencies" in log
    assert answer(server, "yarn1") == "node v18.20.4 yarn/1.22.22\n"


def test_yarn_berry(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "berry", "berry")
    assert "Installing yarn 4.9.2" in log and "Installing dependencies with yarn install (yarn.lock)" in log
    assert "Default types for buildpack -> web" in log
    assert answer(server, "berry") == "node v18.20.4 yarn/4.9.2\n"
    # a packageManager the registry does not have: one line and the fix
    repo = tmp_path / "berry"
    package = (repo / "package.json").read_text().replace("yarn@4.9.2", "yarn@99.0.0")
    refused = dev.push(make_repo(repo, {"package.json": package}, "no such yarn"), "berry")
    assert refused.returncode != 0
    assert "packageManager names yarn@99.0.0, which the npm registry does not have" in refused.stderr


def test_pnpm(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "pnpm", "pnpm")
    assert "Installing pnpm 9.15.9" in log and "Installing dependencies with pnpm install (pnpm-lock.yaml)" in log
    assert "Pruning devDependencies" in log
    assert answer(server, "pnpm") == "node v18.20.4 pnpm/9.15.9\n"
    # a lockfile that does not match package.json: one line and the fix
    repo = tmp_path / "pnpm"
    package = (repo / "package.json").read_text().replace('"express": "4.21.2"', '"express": "4.21.1"')
    refused = dev.push(make_repo(repo, {"package.json": package}, "out of sync"), "pnpm")
    assert refused.returncode != 0
    assert "pnpm-lock.yaml does not match package.json: run pnpm install locally and commit pnpm-lock.yaml." \
        in refused.stderr


def _uv_lock(src: Path) -> None:
    """A real uv.lock, made by uv (the test's own, from PyPI) against the host's Python."""
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never", SSL_CERT_FILE="/etc/ssl/certs/ca-certificates.crt")
    subprocess.run([UV, "lock", "-q", "--python", "/usr/bin/python3"], cwd=src, env=env, check=True, timeout=300)


def test_uv_lock_project(server, dev, tmp_path):
    src = tmp_path / "uvapp"
    shutil.copytree(APPS / "uvapp", src)
    _uv_lock(src)
    assert dev.ssh("apps:create", "uvapp").returncode == 0
    push = dev.push(make_repo(src, {}, "uv app"), "uvapp")
    assert push.returncode == 0, push.stderr
    assert "Installing dependencies with uv sync (uv.lock)" in push.stderr
    assert "pytest" not in push.stderr.split("uv sync")[1].split("Discovering")[0]  # dev group not installed
    assert re.fullmatch(r"uv app on python 3\.11\.\d+\n", answer(server, "uvapp"))
    pyproject = (src / "pyproject.toml").read_text().replace('"gunicorn==23.0.0"', '"gunicorn==22.0.0"')
    refused = dev.push(make_repo(src, {"pyproject.toml": pyproject}, "out of sync"), "uvapp")
    assert refused.returncode != 0
    assert "uv.lock does not match pyproject.toml: uv would have to update it" in refused.stderr
    assert "Run uv lock locally and commit uv.lock." in refused.stderr


def test_poetry_lock_project(server, dev, tmp_path):
    log = deploy(server, dev, tmp_path, "poetry", "poetryapp")
    assert "Installing dependencies with Poetry 2.2.1 (poetry.lock)" in log
    assert re.fullmatch(r"poetry app on python 3\.11\.\d+\n", answer(server, "poetry"))


def test_a_stack_that_fails_to_build_fails_the_push_naming_the_step(server, dev, tmp_path):
    # v1 on the default stack; then the operator points the platform at a mirror that is down:
    # the stack for that recipe does not exist, its build fails at debootstrap, v1 keeps serving
    deploy(server, dev, tmp_path, "mirror", "poetryapp")
    import tomli_w
    import tomllib

    config = tomllib.loads(server.config.read_text())
    saved = server.config.read_text()
    config.setdefault("build", {})["debian_mirror"] = "http://127.0.0.1:9/debian"
    restart(server, dev, tomli_w.dumps(config))
    try:
        repo = tmp_path / "poetryapp"
        failed = dev.push(make_repo(repo, {"app.py": (repo / "app.py").read_text() + "\n"}, "change"), "mirror")
        assert failed.returncode != 0
        assert "Building the bookworm stack image (its first use on this platform" in failed.stderr
        assert "Bootstrapping Debian bookworm (minbase) from http://127.0.0.1:9/debian" in failed.stderr  # streamed
        assert "building the bookworm stack failed at step 'debootstrap'" in failed.stderr
        assert "Check that the Debian mirror" in failed.stderr
        assert "Push rejected; the previous release keeps serving." in failed.stderr
        assert re.fullmatch(r"poetry app on python 3\.11\.\d+\n", answer(server, "mirror"))
    finally:
        restart(server, dev, saved)
