"""bench/scale: how fast bae starts and heals units, against bare `docker run`.

(1) Scale web 0→10 on a deployed app until all 10 units accept connections on
    $PORT, against 10 bare `docker run -d` of the same image and command,
    started concurrently in the same run and timed the same way (until each
    container's port accepts a connection). Target: ratio ≤ 1.3.
(2) Kill a web unit (`docker kill`) and time until its replacement accepts
    connections. Target: ≤ 2 s. Each kill is a first crash of its app (a crash
    loop backs off on purpose).
Prints medians of RUNS runs. With --addons, the scaled app has a Redis add-on, so
each of its units gets a firewall opening to it before it starts (see README,
Add-ons), and an app without one is scaled the same way in the same runs: the
difference is what reaching an add-on costs. For comparison, 10 `docker run` on the
app's add-on network (a user-defined bridge: where units ran before) are timed too.

Run: .venv/bin/python -m bench.scale [RUNS] [--addons]
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time

import docker

from bench.common import ROOT, Server, make_repo, median, tmpdir

N = 10


def accepts(ip: str, port: int = 5000) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_all_up(engine, ids_fn, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = ids_fn()
        if len(ids) >= count:
            ips = []
            for cid in ids:
                try:
                    nets = engine.api.inspect_container(cid)["NetworkSettings"]["Networks"]
                    ips.append(next(iter(nets.values()))["IPAddress"])
                except (docker.errors.NotFound, StopIteration):
                    ips.append("")
            if all(ip and accepts(ip) for ip in ips):
                return
        time.sleep(0.02)
    raise TimeoutError("units did not come up")


def main(runs: int = 3, addons: bool = False) -> None:
    engine = docker.from_env(version="auto")
    tmp = tmpdir("bae-bench-scale-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae").start()
    instance = (server.data / "instance-id").read_text().strip()
    try:
        client = server.user("bench", admin=True)
        src = tmp / "pyweb"
        shutil.copytree(ROOT / "tests" / "apps" / "pyweb", src)
        repo = make_repo(src, {}, "pyweb")
        apps = [f"scale-{i}" for i in range(max(runs, 2) if addons else runs)]  # --addons compares with scale-1
        for app in apps:
            client.ssh("apps:create", app)
            push = client.push(repo, app)
            assert push.returncode == 0, push.stderr
        if addons:
            made = client.ssh("addons:create", "scale-0", "redis")
            assert made.returncode == 0, made.stderr
        image = engine.api.containers(filters={"label": [f"bae.platform={instance}", "bae.app=scale-0", "bae.role=unit"]})[0]["Image"]
        client.ssh("ps:scale", "scale-0", "web=0")

        def units(app: str) -> list[str]:
            return [c["Id"] for c in engine.api.containers(filters={"label": [
                f"bae.platform={instance}", "bae.role=unit", f"bae.app={app}", "bae.process=web"]})]

        def scale(app: str) -> float:
            started = time.perf_counter()
            assert client.ssh("ps:scale", app, f"web={N}", "--no-wait").returncode == 0
            wait_all_up(engine, lambda: units(app), N)
            took = time.perf_counter() - started
            client.ssh("ps:scale", app, "web=0")
            return took

        def bare(network: str | None) -> float:
            made: list[str] = []
            lock = threading.Lock()

            def run_one() -> None:
                c = engine.containers.run(image, ["python3 app.py"], detach=True, environment={"PORT": "5000"},
                                          labels={"bae-bench": instance}, **({"network": network} if network else {}))
                with lock:
                    made.append(c.id)

            started = time.perf_counter()
            threads = [threading.Thread(target=run_one) for _ in range(N)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_all_up(engine, lambda: list(made), N)
            took = time.perf_counter() - started
            for cid in made:
                engine.api.remove_container(cid, force=True)
            return took

        ours, theirs, plain, on_network = [], [], [], []
        if addons:
            client.ssh("ps:scale", "scale-1", "web=0")
        for _ in range(runs):
            ours.append(scale("scale-0"))
            if addons:
                plain.append(scale("scale-1"))

            theirs.append(bare(None))
            if addons:  # the same on the app's add-on network (a user-defined bridge, where units ran before)
                on_network.append(bare(f"bae-{instance}-app-scale-0"))

        heal = []
        for app in apps[1:] + apps[:1]:
            if app == "scale-0" or (addons and app == "scale-1"):
                client.ssh("ps:scale", app, "web=1")
            # one unit, up: units of an earlier scale-down may still be stopping
            deadline = time.monotonic() + 120
            while len(units(app)) != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            wait_all_up(engine, lambda: units(app), 1, timeout=120)
            (victim,) = units(app)
            started = time.perf_counter()
            engine.api.kill(victim)
            wait_all_up(engine, lambda: [u for u in units(app) if u != victim], 1)
            heal.append(time.perf_counter() - started)

        load = " ".join(open("/proc/loadavg").read().split()[:3])
        print(f"\n== scale and heal, median of {runs} runs" + (" (the app has a Redis add-on)" if addons else "")
              + f"; load average {load} (2 cores)")
        print(f"{'case':<44}{'bae':>9}{'reference':>12}{'ratio':>8}  target")
        print(f"{'scale web 0→10, all accepting connections':<44}{median(ours):>8.2f}s{median(theirs):>11.2f}s"
              f"{median(ours) / median(theirs):>8.2f}  ≤ 1.3 (vs 10 concurrent docker run)")
        if addons:
            print(f"{'  vs 10 docker run on the add-on network':<44}{median(ours):>8.2f}s{median(on_network):>11.2f}s"
                  f"{median(ours) / median(on_network):>8.2f}  (Docker's own cost of that network: "
                  f"{median(on_network) - median(theirs):+.2f} s)")
            print(f"{'  the same app without an add-on':<44}{median(plain):>8.2f}s{median(theirs):>11.2f}s"
                  f"{median(plain) / median(theirs):>8.2f}  (reaching the add-on costs "
                  f"{median(ours) - median(plain):+.2f} s, {median(ours) / median(plain):.2f}×)")
        pairs = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs))
        print(f"{'  bae / docker run, run by run':<44}{pairs}")
        print(f"{'kill a unit → replacement accepting':<44}{median(heal):>8.2f}s{'':>12}{'':>8}  ≤ 2 s")
    finally:
        server.stop()
        server.cleanup()  # its units, images, network and router
        for c in engine.api.containers(all=True, filters={"label": [f"bae-bench={instance}"]}):
            engine.api.remove_container(c["Id"], force=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--addons"]
    main(int(args[0]) if args else 3, "--addons" in sys.argv[1:])
