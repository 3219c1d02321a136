"""Connections per second through real load balancers in the lab, with and without `lbspec monitor --live`.

    python bench/e2e_lab.py [--connections 2000] [--concurrency 8] [--rate 0] [--time-limit 60] \\
                            [--repeat 3] [--balancers nftables haproxy nginx] [--keep DIR] [--json]

Builds the lab (lbspec.lab: a client, a load balancer and three echo
backends in network namespaces; needs root) and, for each load balancer --
nftables DNAT, HAProxy in TCP mode, nginx ``stream`` -- runs the same client
load ``--repeat`` times each way, alternating:

* without monitoring;
* with ``lbspec monitor SPEC --live client:IFACE --live backend:IFACE`` in the
  load balancer's namespace, on both of its interfaces, stopped with Ctrl-C
  (SIGINT) once the load is done.

The load is ``--connections`` TCP connections from the client namespace, over
``--concurrency`` threads: connect, send a line (numbered: a proxy's client and
backend connections are paired by their first bytes), read the echo, close.  The
lab's client and load balancer keep no TIME_WAIT sockets
(``tcp_max_tw_buckets`` 0), or a few runs would use up their ports.
``--rate`` caps the connections per second (0: as fast as they go); every run
stops at ``--time-limit`` seconds.  It prints connections per second (the best
run of each way), their ratio, and what the monitor reports: packets, the
packets the live capture dropped (kernel counters of its sockets; they should
be 0 at the rates used), pairing and violations.  The client, the load
balancer and the monitor share the machine's CPUs, so monitoring slows the
load down by the CPU it takes.  Everything is torn down at the end, also on
Ctrl-C or an error.  Figures depend on the machine: compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

VIP, PORT = "192.0.2.10", 80
BACKENDS = ("b1", "b2", "b3")

SPECS = {
    "nat": """
service web {
    vip 192.0.2.10
    listen tcp 80
    mode nat
    pool app {
        backend b1 10.0.2.11:8080
        backend b2 10.0.2.12:8080
        backend b3 10.0.2.13:8080
    }
    forward tcp 80 to app
    balance round_robin
}
""",
    "proxy": """
service web {
    vip 192.0.2.10
    listen tcp 80
    mode proxy
    pool app {
        backend b1 10.0.2.11:8080
        backend b2 10.0.2.12:8080
        backend b3 10.0.2.13:8080
    }
    forward tcp 80 to app
    balance round_robin
    health tcp every 2s timeout 1s fall 3 rise 2
}
""",
}

HAPROXY = """
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s

frontend lab
    bind 192.0.2.10:80
    default_backend app

backend app
    balance roundrobin
    default-server check inter 2s fall 3 rise 2
    server b1 10.0.2.11:8080
    server b2 10.0.2.12:8080
    server b3 10.0.2.13:8080
"""

# max_fails=0: under this load the lab's echo servers (Python, a listen backlog of 5) now and then miss a SYN;
# with the default max_fails=1 nginx would take the server out for 10 s at the first connect timeout, and soon all.
NGINX = """
events {}

stream {
    upstream app {
        server 10.0.2.11:8080 max_fails=0;
        server 10.0.2.12:8080 max_fails=0;
        server 10.0.2.13:8080 max_fails=0;
    }

    server {
        listen 192.0.2.10:80;
        proxy_pass app;
        proxy_connect_timeout 1s;
    }
}
"""


# -------------------------------------------------------------- the client --

def client(argv: list[str]) -> int:
    """``e2e_lab.py client N CONCURRENCY RATE TIME_LIMIT``: run the load (in the client namespace); print JSON."""
    total, concurrency, rate, limit = int(argv[0]), int(argv[1]), float(argv[2]), float(argv[3])
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0, "started": 0}
    start = time.monotonic()
    deadline = start + limit

    def take() -> bool:
        with lock:
            if counts["started"] >= total or time.monotonic() > deadline:
                return False
            counts["started"] += 1
            due = start + counts["started"] / rate if rate > 0 else 0.0
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        return True

    def work() -> None:
        while take():
            with lock:
                number = counts["started"]
            ok = _connection(b"hello %d\n" % number)
            with lock:
                counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    counts["seconds"] = time.monotonic() - start
    print(json.dumps(counts))
    return 0


def _connection(line: bytes) -> bool:
    try:
        with socket.create_connection((VIP, PORT), timeout=2) as sock:
            sock.sendall(line)
            return bool(sock.recv(4096))
    except OSError:
        return False


# -------------------------------------------------------------- the runs --

def _balancer(kind: str, lab):
    from lbspec.lab import Forward, Haproxy, NftablesDnat, NginxStream

    if kind == "nftables":
        return NftablesDnat(VIP, [Forward("tcp", PORT, [(lab.address(n), 8080) for n in BACKENDS])])
    if kind == "haproxy":
        return Haproxy(HAPROXY)
    return NginxStream(NGINX)


def _load(lab, args) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "client", str(args.connections), str(args.concurrency),
            str(args.rate), str(args.time_limit)]
    return json.loads(lab.client.run(*argv, timeout=args.time_limit + 60))


def _monitored(lab, args, spec: Path) -> tuple[dict, dict]:
    argv = [sys.executable, "-m", "lbspec", "monitor", str(spec), "--live", f"client:{lab.client_interface}",
            "--live", f"backend:{lab.backend_interface}", "--format", "json", "--no-progress",
            "--duration", str(args.time_limit + 30)]
    monitor = lab.resources.spawn(lab.lb.argv(argv), ready="listening on", timeout=60)
    try:
        load = _load(lab, args)
        time.sleep(0.5)  # the last packets reach the monitor
        os.killpg(monitor.pid, signal.SIGINT)
        out, err = monitor.communicate(timeout=120)
    finally:
        lab.resources.stop(monitor, signal.SIGINT, timeout=30)
    try:
        return load, json.loads(out)
    except json.JSONDecodeError:
        raise SystemExit(f"lbspec monitor failed ({monitor.returncode}): {err.strip()[-2000:]}") from None


def _one(kind: str, lab, args, directory: Path) -> dict:
    """``--repeat`` pairs of runs, alternating; the best rate of each kind, every monitor report."""
    spec = directory / f"{kind}.lbspec"
    spec.write_text(SPECS["nat" if kind == "nftables" else "proxy"])
    balancer = _balancer(kind, lab)
    lab.install(balancer)
    plain, watched, documents = [], [], []
    try:
        time.sleep(0.5)  # first health checks
        for _ in range(args.repeat):
            plain.append(_load(lab, args))
            load, document = _monitored(lab, args, spec)
            watched.append(load)
            documents.append(document)
    finally:
        balancer.remove(lab)
        lab.balancer = None
    if args.keep:
        Path(args.keep, f"{kind}.json").write_text(json.dumps(documents, indent=1))
    summaries = [d["monitor"] for d in documents]
    errors = [x["code"] for d in documents for x in d["diagnostics"] if x["severity"] == "error"]
    rates = [s["pairing_rate"] for s in summaries if s["pairing_rate"] is not None]
    return {"balancer": kind, "plain": max(plain, key=_rate), "monitored": max(watched, key=_rate),
            "failed": (sum(r["failed"] for r in plain), sum(r["failed"] for r in watched)),
            "packets": sum(s["packets"] for s in summaries),
            "capture_drops": sum(s.get("capture_drops", 0) for s in summaries),
            "pairing_rate": min(rates) if rates else None,
            "violations": {c: errors.count(c) for c in sorted(set(errors))}}


def _rate(run: dict) -> float:
    return run["ok"] / run["seconds"] if run["seconds"] else 0.0


def _print(results: list[dict], args) -> None:
    print(f"{args.connections} connections per run, {args.repeat} runs of each kind, {args.concurrency} client threads, "
          f"rate {'unlimited' if args.rate <= 0 else f'{args.rate:g}/s'}, time limit {args.time_limit:g}s")
    print(f"{'load balancer':14} {'conn/s':>9} {'monitored':>10} {'ratio':>6} {'failed':>7} {'packets':>9} "
          f"{'drops':>6} {'paired':>7} violations")
    for r in results:
        plain, watched = _rate(r["plain"]), _rate(r["monitored"])
        failed = "/".join(map(str, r["failed"]))
        paired = "-" if r["pairing_rate"] is None else f"{r['pairing_rate']:.1%}"
        violations = ", ".join(f"{c} {n}" for c, n in r["violations"].items()) or "none"
        print(f"{r['balancer']:14} {plain:9,.0f} {watched:10,.0f} {watched / plain if plain else 0:6.2f} "
              f"{failed:>7} {r['packets']:9,} {r['capture_drops']:>6} {paired:>7} {violations}")
    print("(conn/s: completed connections per second, the best run of each kind; ratio: monitored / not; "
          "failed: connections that failed, plain/monitored; packets and drops: what the live captures read and "
          "what the kernel dropped on their sockets, every monitored run; paired: the lowest pairing rate, "
          "nat only; violations: verdicts of every monitored run)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="connections per run (default: 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default: 8)")
    parser.add_argument("--rate", type=float, default=0.0, help="connections per second at most (0: no cap)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per run at most (default: 60)")
    parser.add_argument("--balancers", nargs="+", default=["nftables", "haproxy", "nginx"],
                        choices=["nftables", "haproxy", "nginx"])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind, alternating (default: 3)")
    parser.add_argument("--keep", metavar="DIR", help="write every monitor report (JSON) there")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args(argv)
    from lbspec.lab import Haproxy, Lab, NginxStream, namespaces_available

    reason = namespaces_available()
    if reason is not None:
        print(f"cannot build the lab: {reason}", file=sys.stderr)
        return 2
    missing = {"haproxy": Haproxy.unavailable(), "nginx": NginxStream.unavailable()}
    chosen = [b for b in args.balancers if not missing.get(b)]
    for name in set(args.balancers) - set(chosen):
        print(f"skipping {name}: {missing[name]}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="lbspec-bench-") as directory, Lab(list(BACKENDS)) as lab:
        lab.serve(tcp=[8080], udp=[])
        for namespace in (lab.client, lab.lb):  # tens of thousands of connections a minute: no TIME_WAIT
            namespace.sysctl("net.ipv4.tcp_max_tw_buckets", "0")   # to run out of ports in
        for kind in chosen:
            results.append(_one(kind, lab, args, Path(directory)))
    _print(results, args)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
