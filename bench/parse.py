"""Front-end throughput: parse + resolve a generated spec of 1,000 services x 10 backends.

Prints lines per second for lbspec beside `json.loads` of the same content
dumped as JSON, in the same process, and the ratio between them.

    python bench/parse.py [--services N] [--backends N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import time

from lbspec.loader import load_text
from lbspec.syntax.parser import parse_text


def service(i: int, backends: int) -> tuple[str, dict]:
    a, b = divmod(i, 250)
    pool = [{"name": f"s{i}b{j}", "address": f"10.{a}.{b}.{j + 1}", "port": 8080, "weight": j % 3 + 1}
            for j in range(backends)]
    data = {
        "name": f"s{i}", "vips": [f"192.0.{a}.{b}", f"2001:db8:{i:x}::1"], "listen": {"tcp": [80, 443], "udp": [53]},
        "mode": "nat", "pools": {"app": pool},
        "rules": [{"protocol": "tcp", "ports": [80, 443], "pool": "app", "port": 8080},
                  {"protocol": "udp", "ports": [53], "sources": ["10.0.0.0/8"], "pool": "app"}],
        "otherwise": "reject", "balance": "maglev", "affinity": {"kind": "flow", "timeout": "300s"},
        "health": {"kind": "tcp", "every": "2s", "timeout": "1s", "fall": 3, "rise": 2},
        "require": {"no_drop": "20ms"},
    }
    lines = [f"service s{i} {{", f"    vip 192.0.{a}.{b}, 2001:db8:{i:x}::1", "    listen tcp 80, 443, udp 53",
             "    mode nat", "    pool app {"]
    lines += [f"        backend {x['name']} {x['address']}:8080 weight {x['weight']}" for x in pool]
    lines += ["    }", "    forward tcp 80, 443 to app port 8080", "    forward udp 53 from 10.0.0.0/8 to app",
              "    otherwise reject", "    balance maglev", "    affinity flow timeout 300s",
              "    health tcp every 2s timeout 1s fall 3 rise 2", "    require no_drop within 20ms", "}", ""]
    return "\n".join(lines), data


def best_of(repeat: int, work) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    parts = [service(i, args.backends) for i in range(args.services)]
    text = "\n".join(p[0] for p in parts)
    document = json.dumps({"services": [p[1] for p in parts]}, indent=1)
    lines = text.count("\n")

    loaded = load_text(text, "bench.lbspec")
    assert loaded.ok, loaded.diagnostics[:3]
    parse = best_of(args.repeat, lambda: parse_text(text, "bench.lbspec"))
    total = best_of(args.repeat, lambda: load_text(text, "bench.lbspec"))
    decode = best_of(args.repeat, lambda: json.loads(document))

    print(f"spec: {args.services} services x {args.backends} backends, {lines} lines, {len(text) / 1e6:.2f} MB;"
          f" JSON: {len(document) / 1e6:.2f} MB")
    print(f"{'':24}{'seconds':>10}{'lines/s':>14}")
    print(f"{'lbspec parse':24}{parse:10.3f}{lines / parse:14,.0f}")
    print(f"{'lbspec parse + resolve':24}{total:10.3f}{lines / total:14,.0f}")
    print(f"{'json.loads (same data)':24}{decode:10.3f}{lines / decode:14,.0f}")
    print(f"ratio (parse + resolve) / json.loads: {total / decode:.1f}x")


if __name__ == "__main__":
    main()
