"""bench/restart: failed requests under load across restarts that end users must not notice.

A deployment with web=2 (the tests' pyweb sample) serves a bounded load loop
(4 keep-alive clients, 200 requests/s in all) through the router while, RUNS
times each:
  (a) `bae serve` is killed with SIGKILL and started again (its nginx is adopted);
  (b) `bae serve` is stopped gracefully and started again (`systemctl restart`);
  (c) one unit's container is restarted with `docker restart` (the same unit comes back).
Each case counts the requests answered, failed (anything but 200, or an error) and
resent (a GET a client sends again after the server closed an idle keep-alive
connection, as every HTTP client does), and the seconds until `bae serve` accepts
SSH again (a, b) or both units serve again (c). Target: zero failed requests.

Run: .venv/bin/python -m bench.restart [RUNS]
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import time

import docker

from bench.common import ROOT, Server, make_repo, tmpdir
import helpers  # noqa: E402  (bench.common put tests/ on the path)
from helpers import Load  # noqa: E402

RATE, THREADS = 200.0, 4


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    return helpers.wait_for(predicate, timeout=timeout, interval=0.05, what=what)


def routed_units(server: Server, host: str) -> int:
    return helpers.routed_units(server.http_port, host)


def answered(load: Load) -> int:
    return load.ok + len(load.failures)


def settle(load: Load, count: int = 200) -> None:
    """Let ``count`` more requests through (traffic before and after the event)."""
    target = answered(load) + count
    wait_for(lambda: answered(load) >= target, what=f"{count} more requests")


def main(runs: int = 3) -> None:
    tmp = tmpdir("bae-bench-restart-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae", {"scheduler": {"stop_grace": 5}}).start()
    engine = docker.from_env(version="auto")
    results: dict[str, list[tuple[int, int, int, float]]] = {"kill": [], "term": [], "unit": []}
    try:
        client = server.user("bench")
        server.plain_app(client, "steady")
        src = tmp / "steady"
        shutil.copytree(ROOT / "tests" / "apps" / "pyweb", src)
        if client.push(make_repo(src, {}, "pyweb"), "steady").returncode != 0:
            raise RuntimeError("the push failed")
        if client.ssh("ps:scale", "steady", "web=2").returncode != 0:
            raise RuntimeError("ps:scale failed")
        host = "steady.bae.localhost"
        wait_for(lambda: routed_units(server, host) == 2, what="two routed units")
        instance = (server.data / "instance-id").read_text().strip()

        def case(name: str, event) -> None:
            with Load(f"http://127.0.0.1:{server.http_port}/", host, threads=THREADS, rate=RATE) as load:
                settle(load)
                started = time.perf_counter()
                event()
                took = time.perf_counter() - started
                settle(load)
            results[name].append((load.ok, len(load.failures), load.resent, took))
            if load.failures:
                print(f"  {name}: {load.failures[:3]}", file=sys.stderr)

        def kill_and_start() -> None:
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait()
            server.start()

        def stop_and_start() -> None:
            server.stop()
            server.start()

        def docker_restart() -> None:
            (row,) = engine.api.containers(filters={"label": [f"bae.platform={instance}", "bae.app=steady",
                                                              "bae.process=web", "bae.index=1"]})
            engine.api.restart(row["Id"], timeout=5)
            wait_for(lambda: routed_units(server, host) == 2, what="both units routed again")

        for _ in range(runs):
            case("kill", kill_and_start)
            case("term", stop_and_start)
            case("unit", docker_restart)
    finally:
        server.stop()
        server.cleanup()  # units, images, network and the router's nginx
        shutil.rmtree(tmp, ignore_errors=True)

    titles = {"kill": "kill -9 of bae serve + restart", "term": "SIGTERM of bae serve + restart",
              "unit": "docker restart of web.1 (web=2)"}
    print(f"\n== restarts under load ({THREADS} clients, {RATE:.0f} req/s), {runs} runs each")
    print(f"{'case':<34}{'requests':>10}{'failed':>8}{'resent':>8}{'back in':>10}  target")
    for name, rows in results.items():
        total = sum(r[0] + r[1] for r in rows)
        failed = sum(r[1] for r in rows)
        resent = sum(r[2] for r in rows)
        took = statistics.median(r[3] for r in rows)
        print(f"{titles[name]:<34}{total:>10}{failed:>8}{resent:>8}{took:>9.2f}s  0 failed")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
