"""bench/addons: add-on services against the same servers started by hand, in one run.

(1) `addons:create` until the service accepts connections (the image exists), per kind.
    Target: ≤ 3 s.
(2) pgbench (select-only, then the default TPC-B-like run) and redis-benchmark from a
    client on the app's network (where its units are; the stack image has no pgbench,
    so the client is a container of the add-on image there) against the add-on, versus
    the same image's server started by hand (`docker run`, same memory and CPU limits)
    with the client on a plain network of their own. Target: ≥ 0.95× throughput.
(3) A PostgreSQL database of SIZE_MB (default 1024) filled with pgbench -i:
    `addons:backups:capture` (pg_dump -Fc + restore into a throw-away container + row
    count check) versus bare `pg_dump -Fc` then `pg_restore` into a fresh cluster.
    Target: ≤ 2.5× the bare dump and restore. `addons:backups:restore` is shown too.

Run: .venv/bin/python -m bench.addons [SIZE_MB]   (scale SIZE_MB down on a busy machine)
     .venv/bin/python -m bench.addons create      (only (1), 5 creates per kind)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import docker

from bench.common import Server, median, tmpdir

PLAN = "l1"  # 2 GB, 2 CPUs: the whole machine here, so the comparison is about the platform, not the plan
CLIENTS = 8
SECONDS = 20


def sh(cmd: list[str], timeout: float = 3600) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[:6]} failed: {result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def container_of(engine, instance: str, app: str, name: str) -> dict:
    return engine.api.containers(filters={"label": [f"bae.platform={instance}", "bae.role=addon", f"bae.app={app}",
                                                     f"bae.addon={name}"]})[0]


def address(engine, instance: str, app: str, name: str) -> str:
    return container_of(engine, instance, app, name)["Labels"]["bae.ip"]


def ip_of(name: str) -> str:
    return sh(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]).strip()


def tps(output: str) -> float:
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    return float(match.group(1))


def redis_rps(output: str) -> float:
    rates = [float(m) for m in re.findall(r'"[A-Z_ ()0-9]+","([0-9.]+)"', output)]
    return sum(rates) / len(rates)


def pgbench(image: str, network: str, host: str, password: str, args: list[str]) -> str:
    return sh(["docker", "run", "--rm", "--label", "bae-bench=1", "--network", network, "-e", f"PGPASSWORD={password}",
               image, "pgbench", "-h", host, "-U", "app", *args, "app"])


def report_create(create: dict, header: bool = True) -> None:
    if header:
        load = open("/proc/loadavg").read().split()[:3]
        print(f"\n== addons:create (load average: {' '.join(load)}; 2 cores)")
    for kind, (ready, wall, worst) in create.items():
        print(f"{'addons:create ' + kind + ' → accepting connections':<52}{ready:>11.2f}s{'':>12}{'':>8}  ≤ 3 s"
              f"  (median; worst {worst:.2f} s; whole command {wall:.2f} s)")


def main(size_mb: int = 1024, only_create: bool = False) -> None:
    engine = docker.from_env(version="auto")
    tmp = tmpdir("bae-bench-addons-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae").start()
    instance = (server.data / "instance-id").read_text().strip()
    made_networks = []
    try:
        client = server.user("bench", admin=True)
        client.ssh("apps:create", "bench")
        from addons.images import build_image
        from addons.kinds import KINDS
        from bae.config import Settings
        from buildpacks.stack import ensure_base

        build = Settings().build
        images = {k: build_image(build, kind, kind.versions[0], lambda suite, out: ensure_base(build, out, suite), print)
                  for k, kind in KINDS.items()}

        # (1) addons:create until accepting connections
        create = {}
        for kind in ("redis", "postgres", "mysql"):
            times, walls = [], []
            runs = 5 if only_create else 3
            for i in range(runs):
                started = time.perf_counter()
                out = client.ssh("addons:create", "bench", kind, "--as", f"{kind}-c{i}", "--plan", PLAN)
                walls.append(time.perf_counter() - started)
                assert out.returncode == 0, out.stderr
                times.append(float(re.search(r"Accepting connections after ([0-9.]+) s", out.stdout).group(1)))
            create[kind] = (median(times), median(walls), max(times))
            for i in range(runs):
                if kind != "postgres" or i or only_create:
                    client.ssh("addons:destroy", "bench", f"{kind}-c{i}", "--confirm", f"{kind}-c{i}")

        if only_create:
            report_create(create)
            return

        # (2) throughput: the add-on vs the same image started by hand with the same limits
        network = f"bae-{instance}-app-bench"
        pg = client.ssh("config:get", "bench", "DATABASE_URL").stdout.strip()
        pg_password = re.search(r"app:([^@]+)@", pg).group(1)
        ref_net = f"bae-bench-ref-{instance}"
        sh(["docker", "network", "create", "--label", "bae-bench=1", ref_net])
        made_networks.append(ref_net)
        sh(["docker", "run", "-d", "--label", "bae-bench=1", "--name", f"ref-pg-{instance}", "--network", ref_net,
            "--network-alias", "refpg", "--memory", "2g", "--memory-swap", "2g", "--cpus", "2", "-e",
            f"BAE_PASSWORD={pg_password}", "-e", "BAE_MEMORY_MB=2048", "-v", f"{tmp / 'ref-pg'}:/bae", images["postgres"]])
        for _ in range(300):
            if subprocess.run(["docker", "exec", f"ref-pg-{instance}", "pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0:
                break
            time.sleep(0.1)
        results = {}
        pg_hosts = (("bae", network, address(engine, instance, "bench", "postgres-c0")),
                    ("ref", ref_net, ip_of(f"ref-pg-{instance}")))
        for label, net, host in pg_hosts:
            pgbench(images["postgres"], net, host, pg_password, ["-i", "-q", "-s", "10"])
            results[(label, "select")] = tps(pgbench(images["postgres"], net, host, pg_password,
                                                     ["-S", "-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS)]))
            results[(label, "tpcb")] = tps(pgbench(images["postgres"], net, host, pg_password,
                                                   ["-c", str(CLIENTS), "-j", "2", "-T", str(SECONDS)]))
        client.ssh("addons:create", "bench", "redis", "--as", "cache", "--plan", PLAN)
        rd = client.ssh("config:get", "bench", "REDIS_URL").stdout.strip()
        rd_password = re.search(r"redis://:([^@]+)@", rd).group(1)
        sh(["docker", "run", "-d", "--label", "bae-bench=1", "--name", f"ref-rd-{instance}", "--network", ref_net,
            "--network-alias", "refrd", "--memory", "2g", "--memory-swap", "2g", "--cpus", "2", "-e",
            f"BAE_PASSWORD={rd_password}", "-e", "BAE_MEMORY_MB=2048", "-v", f"{tmp / 'ref-redis'}:/bae", images["redis"]])
        time.sleep(1)
        for label, net, host in (("bae", network, address(engine, instance, "bench", "cache")),
                                 ("ref", ref_net, ip_of(f"ref-rd-{instance}"))):
            out = sh(["docker", "run", "--rm", "--label", "bae-bench=1", "--network", net, images["redis"],
                      "redis-benchmark", "-h", host, "-a", rd_password, "-t", "set,get,incr,lpush,lpop", "-n", "100000",
                      "-c", "50", "-q", "--csv"])
            results[(label, "redis")] = redis_rps(out)

        # (3) backup + verify of a SIZE_MB database vs bare pg_dump | pg_restore
        scale = max(1, round(size_mb / 15))
        for _, net, host in pg_hosts:
            pgbench(images["postgres"], net, host, pg_password, ["-i", "-q", "-s", str(scale)])
        started = time.perf_counter()
        out = client.ssh("addons:backups:capture", "bench", "postgres-c0")
        ours_backup = time.perf_counter() - started
        assert out.returncode == 0, out.stderr
        started = time.perf_counter()
        out = client.ssh("addons:backups:restore", "bench", "postgres-c0", "--confirm", "postgres-c0")
        ours_restore = time.perf_counter() - started
        assert out.returncode == 0, out.stderr
        ref = f"ref-pg-{instance}"
        started = time.perf_counter()
        sh(["docker", "exec", "-u", "postgres", ref, "pg_dump", "-h", "/run/postgresql", "-d", "app", "-Fc",
            "-f", "/bae/bare.dump"])
        bare_dump = time.perf_counter() - started
        sh(["docker", "exec", "-u", "postgres", ref, "psql", "-h", "/run/postgresql", "-d", "postgres", "-qc",
            "CREATE DATABASE bare"])
        started = time.perf_counter()
        sh(["docker", "exec", "-u", "postgres", ref, "pg_restore", "-h", "/run/postgresql", "-d", "bare", "-j", "2",
            "/bae/bare.dump"])
        bare_restore = time.perf_counter() - started
        size = sh(["docker", "exec", "-u", "postgres", ref, "psql", "-h", "/run/postgresql", "-d", "app", "-qAtc",
                   "SELECT pg_size_pretty(pg_database_size('app'))"]).strip()

        load = open("/proc/loadavg").read().split()[:3]
        print(f"\n== add-ons (load average before the summary: {' '.join(load)}; 2 cores)")
        print(f"{'case':<52}{'bae':>12}{'reference':>12}{'ratio':>8}  target")
        report_create(create, header=False)
        for key, what in (("select", "pgbench -S (select-only), tps"), ("tpcb", "pgbench (TPC-B-like), tps"),
                          ("redis", "redis-benchmark, mean req/s")):
            ours, theirs = results[("bae", key)], results[("ref", key)]
            print(f"{what:<52}{ours:>12.0f}{theirs:>12.0f}{ours / theirs:>8.2f}  ≥ 0.95")
        print(f"{f'backup+verify of {size} vs bare pg_dump + pg_restore':<52}{ours_backup:>11.2f}s"
              f"{bare_dump + bare_restore:>11.2f}s{ours_backup / (bare_dump + bare_restore):>8.2f}  ≤ 2.5")
        print(f"{'  (bare pg_dump alone)':<52}{'':>12}{bare_dump:>11.2f}s{ours_backup / bare_dump:>8.2f}")
        print(f"{'addons:backups:restore (check, stage, swap)':<52}{ours_restore:>11.2f}s{bare_restore:>11.2f}s"
              f"{ours_restore / bare_restore:>8.2f}")
    finally:
        server.stop()
        server.cleanup()
        for c in engine.api.containers(all=True, filters={"label": ["bae-bench=1"]}):
            engine.api.remove_container(c["Id"], force=True)
        for net in made_networks:
            subprocess.run(["docker", "network", "rm", net], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["create"]:
        main(only_create=True)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)
