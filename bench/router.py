"""bench/router: traffic through bae's router (nginx) against traffic straight to the units.

A Flask + gunicorn app (tests/apps/flask: 2 sync workers per unit, the gunicorn
default kind) runs as 2 web units of the default plan. In one run, ROUNDS times:
  (a) wrk straight to the two units' own ports (one wrk per unit, half the
      connections each, run together; requests/s summed),
  (b) wrk through the router (Host: APP.bae.localhost) with all the connections,
      (a) and (b) in turn, the order swapped every round; the throughput ratio is
      the median of the rounds' ratios (each round's pair saw the same machine),
  (c) at low load (one connection), p50 latency straight vs through the router.
Prints requests/s, p50 and p99 for each, the throughput ratio (target ≥ 0.9) and
the router's added p50 latency at low load (target ≤ 0.2 ms). Also the CPU time per
request of each part in (a) and (b): the units (Docker's accounting), nginx's workers
and wrk: a busy machine moves the requests/s, much less what a request costs.

How (c) is timed: curl, one request at a time, in batches that alternate straight
to a unit and through the router (the order swapped every pair), each request from
the start of its transfer to its last byte. A gunicorn sync worker closes every
connection, so a client going straight to a unit opens one per request (in the
timed request), while through the router it keeps its connection to nginx and nginx
opens the one to the unit inside the timed request. wrk starts its clock only once
the connection is open, which leaves that step out of its straight figure and in its
routed one; wrk's figures at one connection are printed too.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import docker

from bench.common import ROOT, Server, make_repo, tmpdir

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def wrk_start(url: str, connections: int, seconds: int, threads: int = 1, host: str | None = None,
              close: bool = False):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    if close:
        cmd += ["-H", "Connection: close"]
    return subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def units_cpu(engine, ids: list[str]) -> float:
    """CPU seconds the units have used so far (Docker's accounting of their cgroups)."""
    return sum(engine.api.stats(i, stream=False, one_shot=True)["cpu_stats"]["cpu_usage"]["total_usage"]
               for i in ids) / 1e9


def workers_cpu(masters: list[int]) -> float:
    """CPU seconds the nginx workers of ``masters`` have used so far."""
    total = 0
    for master in masters:
        try:
            workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            continue
        for pid in workers:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_result(proc) -> dict:
    out = proc.communicate()[0]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    done = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "requests": done, "p50": p50, "p99": p99, "errors": (errors.group(1) if errors else ""),
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


def curl_times(url: str, requests: int, host: str) -> list[float]:
    """Milliseconds of ``requests`` GETs of ``url``, one after the other in one curl process, each
    from the start of its transfer (its connect included when it needs one) to its last byte."""
    out = subprocess.run(["curl", "-s", "-H", f"Host: {host}", "-w", "\\n@ %{time_total}\\n"] + [url] * requests,
                         capture_output=True, text=True, timeout=120).stdout
    return [float(line[2:]) * 1000 for line in out.splitlines() if line.startswith("@ ")]


def low_load(units: list[str], router_url: str, host: str, batches: int, size: int = 200) -> tuple[list[float], list[float]]:
    """Requests one at a time (curl), in batches that alternate straight to a unit (the units in
    turn) and through the router, the order swapped every pair. A unit closes every connection,
    so each straight request includes its connect; through the router curl keeps its connection
    (the batch's first request, which opens it, is left out). Returns (straight, routed)."""
    straight, routed = [], []
    for i in range(batches):
        unit = units[i % len(units)]
        runs = [(straight, lambda: curl_times(unit, size, host)), (routed, lambda: curl_times(router_url, size + 1, host)[1:])]
        for into, run in (runs if i % 2 == 0 else runs[::-1]):
            into += run()
    return straight, routed


def install_wildcard(server, client) -> str:
    """Upload a *.bae.localhost certificate as the platform's own: wrk sends no SNI for 127.0.0.1, so
    the default HTTPS server's certificate is the one it gets; the Host header routes. Returns the CA file."""
    from tlsutil import make_ca, make_leaf, served

    ca = make_ca("bench root")
    leaf = make_leaf(ca, ["*.bae.localhost"])
    result = client.ssh("certs:add", "--platform", "-", input=(leaf.cert_pem + leaf.key_pem).decode())
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 20
    while served(server.https_port, "bench.bae.localhost") is None:
        assert time.monotonic() < deadline, "the router did not serve the bench certificate"
        time.sleep(0.1)
    path = server.tmp / "bench-ca.pem"  # removed with the bench's directory
    path.write_bytes(ca.cert_pem)
    return str(path)


def s_time(port: int, mode: str, seconds: int) -> float:
    """Handshakes per second, one connection at a time (openssl s_time -new or -reuse, TLS 1.2:
    s_time's reuse needs a session it can take right after the handshake)."""
    out = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, "-tls1_2",
                          "-time", str(seconds)], capture_output=True, text=True).stdout
    found = re.search(r"(\d+) connections in ([\d.]+) real seconds", out)
    return int(found.group(1)) / float(found.group(2)) if found else 0.0


def resumption(port: int, host: str, cafile: str) -> str:
    """What openssl s_client says about a second connection offering the first one's session (TLS 1.3 ticket)."""
    session = os.path.join(os.path.dirname(cafile), "session.pem")
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host, "-CAfile", cafile,
            "-ign_eof"]
    subprocess.run(base + ["-sess_out", session], input=request, capture_output=True, text=True, timeout=20)
    out = subprocess.run(base + ["-sess_in", session], input=request, capture_output=True, text=True,
                         timeout=20).stdout
    line = next((l.strip() for l in out.splitlines() if l.startswith(("Reused", "New,"))), "no answer")
    return line


def main(seconds: int = 8, connections: int = 64, rounds: int = 3, plan: str = "s1",
         procfile: str | None = None, settings: dict | None = None) -> None:
    tmp = tmpdir("bae-bench-router-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae", settings).start()
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    try:
        client = server.user("bench", admin=True)
        src = tmp / "flask"
        shutil.copytree(ROOT / "tests" / "apps" / "flask", src)
        client.ssh("apps:create", "bench")
        push = client.push(make_repo(src, {"Procfile": procfile} if procfile else {}, "flask"), "bench")
        assert push.returncode == 0, push.stderr
        assert client.ssh("ps:scale", "bench", f"web=2:{plan}").returncode == 0
        ips = [next(iter(engine.api.inspect_container(c["Id"])["NetworkSettings"]["Networks"].values()))["IPAddress"]
               for c in engine.api.containers(filters={"label": [f"bae.platform={instance}", "bae.app=bench"]})]
        host = "bench.bae.localhost"
        router_url = f"http://127.0.0.1:{server.http_port}/"
        tls_url = f"https://127.0.0.1:{server.https_port}/"
        cafile = install_wildcard(server, client)
        for proc in [wrk_start(f"http://{ip}:5000/", 2, 2) for ip in ips] + [wrk_start(router_url, 2, 2, host=host),
                                                                              wrk_start(tls_url, 2, 2, host=host)]:
            proc.communicate()  # warm up every path
        load_before = os.getloadavg()

        direct, routed, low_direct, low_routed = [], [], [], []
        straight_ms, routed_ms = [], []
        routed_tls, low_routed_tls, close_http, close_tls, page_http, page_tls = [], [], [], [], [], []

        unit_ids = [c["Id"] for c in engine.api.containers(filters={"label": [f"bae.platform={instance}", "bae.app=bench"]})]
        masters = server.router_pids()

        def costs(run) -> dict:
            """``run``'s result with the CPU microseconds per request of the units, nginx and wrk."""
            before = units_cpu(engine, unit_ids), workers_cpu(masters), children_cpu()
            result = run()
            after = units_cpu(engine, unit_ids), workers_cpu(masters), children_cpu()
            per = [(b - a) * 1e6 / result["requests"] for a, b in zip(before, after)]
            return {**result, "cpu_units": per[0], "cpu_nginx": per[1], "cpu_wrk": per[2]}

        def run_direct():
            def both():
                runs = [wrk_result(p) for p in [wrk_start(f"http://{ip}:5000/", connections // 2, seconds) for ip in ips]]
                return {"rps": sum(r["rps"] for r in runs), "requests": sum(r["requests"] for r in runs),
                        "p50": statistics.mean(r["p50"] for r in runs), "p99": max(r["p99"] for r in runs),
                        "errors": ", ".join(r["errors"] for r in runs if r["errors"])}
            direct.append(costs(both))

        def run_routed():
            routed.append(costs(lambda: wrk_result(wrk_start(router_url, connections, seconds, threads=2, host=host))))

        for round_ in range(rounds):
            for run in ((run_direct, run_routed) if round_ % 2 == 0 else (run_routed, run_direct)):
                run()
                time.sleep(1)
            low_direct.append(wrk_result(wrk_start(f"http://{ips[0]}:5000/", 1, seconds // 2)))
            low_routed.append(wrk_result(wrk_start(router_url, 1, seconds // 2, host=host)))
            straight, through = low_load([f"http://{ip}:5000/" for ip in ips], router_url, host, batches=2 * seconds)
            straight_ms += straight
            routed_ms += through
            time.sleep(1)
            routed_tls.append(wrk_result(wrk_start(tls_url, connections, seconds, threads=2, host=host)))
            time.sleep(1)
            low_routed_tls.append(wrk_result(wrk_start(tls_url, 1, seconds // 2, host=host)))
            close_http.append(wrk_result(wrk_start(router_url, connections, seconds // 2, threads=2, host=host,
                                                   close=True)))
            close_tls.append(wrk_result(wrk_start(tls_url, connections, seconds // 2, threads=2, host=host,
                                                  close=True)))
            # nginx alone (its 404 page for an unknown name, no unit): the router's own cost of TLS
            page_http.append(wrk_result(wrk_start(router_url, connections, seconds // 2, threads=2,
                                                  host="nobody.bae.localhost")))
            page_tls.append(wrk_result(wrk_start(tls_url, connections, seconds // 2, threads=2,
                                                 host="nobody.bae.localhost")))
        load_after = os.getloadavg()

        def med(rows, key):
            return statistics.median(r[key] for r in rows)

        print(f"\n== router: Flask + gunicorn ({plan}) × 2 units, {connections} connections, "
              f"median of {rounds} rounds of {seconds}s")
        print(f"{'path':<30}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}  errors")
        for name, rows in (("straight to the 2 units", direct), ("through the router", routed)):
            errors = "; ".join(r["errors"] for r in rows if r["errors"]) or "none"
            non2xx = sum(r.get("non2xx", 0) for r in rows)
            print(f"{name:<30}{med(rows, 'rps'):>12.0f}{med(rows, 'p50'):>9.2f}{med(rows, 'p99'):>9.2f}  {errors}"
                  + (f", {non2xx} non-2xx" if non2xx else ""))
        print("CPU per request (µs):  " + ";  ".join(
            f"{name}: units {med(rows, 'cpu_units'):.0f}, nginx {med(rows, 'cpu_nginx'):.0f}, wrk {med(rows, 'cpu_wrk'):.0f}, "
            f"all {med(rows, 'cpu_units') + med(rows, 'cpu_nginx') + med(rows, 'cpu_wrk'):.0f}"
            for name, rows in (("straight", direct), ("through the router", routed))))
        ratios = [r["rps"] / d["rps"] for d, r in zip(direct, routed)]
        print(f"throughput ratio router/direct: {statistics.median(ratios):.2f}   (target ≥ 0.9; "
              f"rounds {', '.join(f'{x:.2f}' for x in ratios)}; ratio of the medians "
              f"{med(routed, 'rps') / med(direct, 'rps'):.2f})")
        sd, sr = statistics.median(straight_ms), statistics.median(routed_ms)
        print(f"low load (1 connection) p50, curl, {len(routed_ms)} requests each way in alternating batches: "
              f"straight {sd:.3f} ms (with its connect), router {sr:.3f} ms, added {sr - sd:.3f} ms   (target ≤ 0.2 ms)")
        ld, lr = med(low_direct, "p50"), med(low_routed, "p50")
        print(f"  wrk at 1 connection (clock starts after the connect): direct {ld:.3f} ms, router {lr:.3f} ms, "
              f"added {lr - ld:.3f} ms")

        print(f"\n== router over TLS, same run: HTTPS vs HTTP through the router, {connections} connections")
        print(f"{'path':<38}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}  errors")
        for name, rows in (("HTTP through the router (keep-alive)", routed),
                           ("HTTPS through the router (keep-alive)", routed_tls),
                           ("HTTP, a new connection per request", close_http),
                           ("HTTPS, a new handshake per request", close_tls),
                           ("HTTP, router only (404 page, no unit)", page_http),
                           ("HTTPS, router only (404 page, no unit)", page_tls)):
            errors = "; ".join(r["errors"] for r in rows if r["errors"]) or "none"
            print(f"{name:<38}{med(rows, 'rps'):>12.0f}{med(rows, 'p50'):>9.2f}{med(rows, 'p99'):>9.2f}  {errors}")
        print(f"HTTPS/HTTP keep-alive throughput ratio: {med(routed_tls, 'rps') / med(routed, 'rps'):.2f}"
              "   (target ≥ 0.85)")
        print(f"HTTPS/HTTP ratio with the router alone as the bottleneck: "
              f"{med(page_tls, 'rps') / med(page_http, 'rps'):.2f}")
        lt = med(low_routed_tls, "p50")
        print(f"low load (1 connection) p50 through the router: HTTP {lr:.3f} ms, HTTPS {lt:.3f} ms, "
              f"added by TLS {lt - lr:.3f} ms")
        print(f"new-handshake rate ({connections} clients, full TLS handshake per request): "
              f"{med(close_tls, 'rps'):.0f}/s (plain TCP connections: {med(close_http, 'rps'):.0f}/s)")
        new, reused = s_time(server.https_port, "-new", seconds // 2), s_time(server.https_port, "-reuse", seconds // 2)
        print(f"openssl s_time, one connection at a time: full handshakes {new:.0f}/s, resumed {reused:.0f}/s")
        print(f"resumption (openssl s_client -sess_out, then -sess_in): {resumption(server.https_port, host, cafile)}")
        print(f"load average (1 min) before/after the rounds: {load_before[0]:.1f} / {load_after[0]:.1f} "
              f"on {os.cpu_count()} cores")
    finally:
        server.stop()
        server.cleanup()  # its units, images, network and router
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(*[int(a) for a in sys.argv[1:4]])
