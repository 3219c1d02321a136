"""Checker scale: specs of 10, 100 and 1,000 services (10 backends each), fully checked.

Prints seconds per size (load + every check, all services, both cores) and the
ratio t(1000)/t(100): 10.0 means cost linear in services.  The same run also
times one core, so the parallel speed-up is measured, not assumed.  Then the
same in width: 10 services of 10, 20 and 40 backends each, and the ratio
t(40)/t(10): 4.0 means cost linear in backends.  (A counterexample the solver
found with many backends failing once cost 2 ** failing to replay: 40
backends took 50 times as long as 10.)  Then one service of 25 to 200 rules
(each from a /24 of its own, to 5 pools), and t(200)/t(50): 4.0 is linear.
(Every pair of rules to different pools once went to the solver, and every
reachable rule had a witness built that nothing showed: 200 rules took 94 s.)

    python bench/check_scale.py [--sizes 10,100,1000] [--widths 10,20,40] [--rules 25,50,100,200] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parse import service  # noqa: E402  (the same generated services as bench/parse.py)

from lbspec.check import CheckOptions, check_spec  # noqa: E402
from lbspec.loader import load_text  # noqa: E402


def run(size: int, jobs: int, backends: int = 10) -> tuple[float, int]:
    return timed("\n".join(service(i, backends)[0] for i in range(size)), jobs)


def ruled(rules: int) -> str:
    """One service of ``rules`` rules, each from a /24 of its own, to 5 pools of 4 backends."""
    lines = ["service s {", "    vip 192.0.2.10", "    listen tcp 80", "    mode nat"]
    for p in range(5):
        lines += [f"    pool p{p} {{", *(f"        backend p{p}b{b} 10.{p}.0.{b + 1}:8080" for b in range(4)), "    }"]
    lines += [f"    forward tcp 80 from 10.{100 + r // 250}.{r % 250}.0/24 to p{r % 5}" for r in range(rules)]
    return "\n".join([*lines, "    health tcp every 2s timeout 1s fall 3 rise 2", "}", ""])


def timed(text: str, jobs: int) -> tuple[float, int]:
    """Seconds to load and fully check ``text``, and the findings."""
    started = time.perf_counter()
    loaded = load_text(text, "scale.lbspec")
    assert loaded.ok, loaded.diagnostics[:3]
    found = check_spec(loaded.spec, CheckOptions(jobs=jobs))
    assert not [x for x in found if x.code in ("LB099", "LB111")], "internal error or unknown"
    return time.perf_counter() - started, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--widths", default="10,20,40", help="backends per service, for 10 services")
    parser.add_argument("--rules", default="25,50,100,200", help="rules of one service")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'services':>9}{'seconds':>10}{'ms/service':>12}{'findings':>10}   ({args.jobs} processes)")
    times = {}
    for size in sizes:
        seconds, found = run(size, args.jobs)
        times[size] = seconds
        print(f"{size:>9}{seconds:>10.2f}{1000 * seconds / size:>12.1f}{found:>10}")
    if 100 in times and 1000 in times:
        print(f"t(1000)/t(100) = {times[1000] / times[100]:.2f}  (10.00 is linear)")
    if args.jobs > 1 and 100 in times:
        single, _ = run(100, 1)
        print(f"100 services on 1 process: {single:.2f}s; speed-up with {args.jobs}: {single / times[100]:.2f}x")
    widths = [int(w) for w in args.widths.split(",") if w]
    print(f"\n{'backends':>9}{'seconds':>10}{'ms/service':>12}{'findings':>10}   (10 services)")
    wide = {}
    for width in widths:
        seconds, found = run(10, args.jobs, width)
        wide[width] = seconds
        print(f"{width:>9}{seconds:>10.2f}{100 * seconds:>12.1f}{found:>10}")
    if len(widths) > 1:
        low, high = min(widths), max(widths)
        print(f"t({high})/t({low}) = {wide[high] / wide[low]:.2f}  ({high / low:.2f} is linear)")
    counts = [int(r) for r in args.rules.split(",") if r]
    print(f"\n{'rules':>9}{'seconds':>10}{'findings':>10}   (one service, one process)")
    ruled_times = {}
    for count in counts:
        seconds, found = timed(ruled(count), 1)
        ruled_times[count] = seconds
        print(f"{count:>9}{seconds:>10.2f}{found:>10}")
    if 50 in ruled_times and 200 in ruled_times:
        print(f"t(200)/t(50) = {ruled_times[200] / ruled_times[50]:.2f}  (4.00 is linear)")


if __name__ == "__main__":
    main()
