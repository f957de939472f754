"""bench/build: bae's buildpack builds against a hand-written Dockerfile.

For a Flask + gunicorn app and an Express app, in one run:
  (a) bae: first build of a fresh deployment (git push to a new app: empty cache)
  (b) bae: rebuild after a code-only change
  bae's times run from starting `git push` to the "Built image" line arriving at
  the pusher: the push then goes on to deploy the image, which docker build does not.
  (c) `docker build` of an equivalent Dockerfile FROM the same stack image:
      first (--no-cache) and cached rebuild after the same code-only change.
Prints medians of RUNS runs and the ratios. Targets: (a) ≤ 1.0× the Dockerfile's
first build; (b) ≤ 3 s and ≤ 1.0× the Dockerfile's cached rebuild.

Run: .venv/bin/python -m bench.build [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, Server, make_repo, median, report, run, timed, tmpdir

CA = "/etc/ssl/certs/ca-certificates.crt"
DOCKERFILES = {
    "flask": """FROM {stack}
USER root
COPY ca.crt /etc/ssl/certs/ca-certificates.crt
USER bae
WORKDIR /home/bae/app
COPY --chown=bae:bae requirements.txt .
RUN python3 -m venv .venv && .venv/bin/pip install --no-input -r requirements.txt
COPY --chown=bae:bae . .
ENV PATH=/home/bae/app/.venv/bin:$PATH
CMD ["gunicorn", "app:app"]
""",
    "express": """FROM {stack}
USER root
COPY ca.crt /etc/ssl/certs/ca-certificates.crt
USER bae
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
WORKDIR /home/bae/app
COPY --chown=bae:bae package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY --chown=bae:bae . .
RUN npm run build && npm prune --omit=dev
CMD ["npm", "start"]
""",
}
CODE_FILE = {"flask": "app.py", "express": "server.js"}


def push_until_built(client, name: str, repo: Path) -> float:
    """Seconds from starting the push until the pusher sees the image built (then waits for the deploy)."""
    started = time.perf_counter()
    proc = subprocess.Popen(["git", "push", client.url(name), "master"], cwd=repo, env=client.git_env,
                            stderr=subprocess.PIPE, text=True)
    built = None
    for line in proc.stderr:
        if built is None and "-----> Built image" in line:
            built = time.perf_counter() - started
    if proc.wait() != 0 or built is None:
        raise RuntimeError(f"the push to {name} failed")
    return built


def docker_build(ctx: Path, *flags: str) -> str:
    """The reference: `docker build` of the Dockerfile in ``ctx``, untagged; returns the image id.
    Intermediate containers are removed even when a step fails (--force-rm)."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    return run(["docker", "build", "-q", "--force-rm", *flags, str(ctx)], env=env, check=True).stdout.strip()


def change(repo: Path, app: str, i: int) -> None:
    path = repo / CODE_FILE[app]
    comment = "#" if app == "flask" else "//"
    make_repo(repo, {CODE_FILE[app]: path.read_text() + f"\n{comment} change {i}\n"}, f"change {i}")


def main(runs: int = 3) -> None:
    tmp = tmpdir("bae-bench-build-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae").start()
    stack = run([sys.executable, "-c", "from bae.config import load; from buildpacks.stack import stack_tag; "
                 "print(stack_tag(load().build))"], env=server.env, check=True).stdout.strip()
    rows = []
    images: list[str] = []  # every image docker build made here, newest last: removed at the end
    try:
        client = server.user("bench", admin=True)
        for app in ("flask", "express"):
            first, rebuild, d_first, d_cached = [], [], [], []
            for i in range(runs):
                src = tmp / f"{app}-{i}"
                shutil.copytree(ROOT / "tests" / "apps" / app, src)
                repo = make_repo(src, {}, "sample")
                name = f"{app}-{i}"
                client.ssh("apps:create", name)
                first.append(push_until_built(client, name, repo))
                change(repo, app, i)
                rebuild.append(push_until_built(client, name, repo))
                ctx = tmp / f"docker-{app}-{i}"
                shutil.copytree(ROOT / "tests" / "apps" / app, ctx)
                shutil.copy(CA, ctx / "ca.crt")
                (ctx / "Dockerfile").write_text(DOCKERFILES[app].format(stack=stack))
                d_first.append(timed(lambda: images.append(docker_build(ctx, "--no-cache"))))
                path = ctx / CODE_FILE[app]
                path.write_text(path.read_text() + "\n// change\n" if app == "express" else path.read_text() + "\n# change\n")
                d_cached.append(timed(lambda: images.append(docker_build(ctx))))
            rows.append((f"{app}: (a) first build", median(first), median(d_first), "≤ 1.0× Dockerfile first"))
            rows.append((f"{app}: (b) code-only rebuild", median(rebuild), median(d_cached),
                         "≤ 3 s and ≤ 1.0× cached Dockerfile"))
        report(f"builds, median of {runs} runs (bae buildpacks vs docker build of a Dockerfile)", rows)
    finally:
        server.stop()
        server.cleanup()  # the bench instance's units, images, network and router
        for image in reversed(images):  # newest first: each removal also removes its now unused parents
            run(["docker", "rmi", image])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
