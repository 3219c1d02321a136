"""Throughput of `lbspec monitor` beside tshark, on a generated NAT capture pair.

    python bench/monitor_throughput.py [--packets 1000000] [--flows 10000] [--jobs 1 2] [--combined] [--keep DIR]

Writes a client-side and a backend-side pcap of a NAT load balancer (TCP
flows: handshake, a request, a response in full-size segments, ACKs,
teardown; both sides of every packet, the backend side NAT'd) and then, in the
same run and on the same files:

* ``lbspec monitor SPEC --client-side C --backend-side B`` with every library
  property on (once per ``--jobs`` value);
* ``tshark -r FILE -T fields -e ip.src -e ip.dst -e tcp.srcport`` on each file;
* with ``--combined``, also ``lbspec monitor SPEC BOTH`` on one capture holding
  both sides (as ``tcpdump -i any`` on the LB makes), where each packet's role
  is inferred.

It prints packets per second for each (the fastest of ``--repeat`` runs), their
ratio, the processor time of that run (user and system, summed over the
command's processes: with ``--jobs 2`` the wall-clock time cannot go below
half of it on two cores), and the peak resident memory of each command (summed over its processes,
sampled in one more run: the sampling takes processor time from a command that
keeps both cores busy, so timed runs are not sampled).  lbspec runs with its
bytecode cached, as installed (a first run, not timed, writes the cache).
The capture must yield no violations; the script says so if it does not.
Figures depend on the machine: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

VIP, VPORT, BPORT = (192 << 24) | (0 << 16) | (2 << 8) | 10, 80, 8080
BACKENDS = [(10 << 24) | (1 << 16) | 11 + i for i in range(4)]
MAC_CLIENT, MAC_LB, MAC_BACKEND = (bytes.fromhex(f"02000000000{k}") for k in (1, 2, 3))
SEGMENT, REQUEST, ROUNDS = 1448, 320, 21
PER_SIDE = 50  # packets per flow and side: 3 handshake, request, 21 x (data, ack), 3 teardown, 1 final ack

SPEC = """
service web {
    vip 192.0.2.10
    listen tcp 80
    mode nat
    pool app {
        backend app1 10.1.0.11:8080
        backend app2 10.1.0.12:8080
        backend app3 10.1.0.13:8080
        backend app4 10.1.0.14:8080
    }
    forward tcp 80 to app
    balance round_robin
    affinity flow timeout 300s
    health tcp every 2s timeout 1s fall 3 rise 2
}
"""


# ------------------------------------------------------------- the capture --

def _ip_header(src: int, dst: int, length: int, ident: int, ttl: int) -> bytes:
    header = struct.pack("!BBHHHBBHII", 0x45, 0, length, ident & 0xFFFF, 0x4000, ttl, 6, 0, src, dst)
    words = struct.unpack("!10H", header)
    total = sum(words)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]


def _frame(src, sport, dst, dport, seq, ack, flags, payload, ident, ttl, macs) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
    ip = _ip_header(src, dst, 40 + len(payload), ident, ttl)
    return macs + b"\x08\x00" + ip + tcp + payload


def _template() -> list[tuple[bool, int, int, int, int]]:
    """One flow's packets: (from client, client seq offset, server seq offset, flags, payload length).

    The sequence number is the sender's offset; the ACK the other side's.
    """
    steps = [(True, 0, 0, 0x02, 0), (False, 1, 0, 0x12, 0), (True, 1, 1, 0x10, 0), (True, 1, 1, 0x18, REQUEST)]
    c, s = 1 + REQUEST, 1
    for _ in range(ROUNDS):
        steps.append((False, c, s, 0x10, SEGMENT))
        s += SEGMENT
        steps.append((True, c, s, 0x10, 0))
    steps += [(True, c, s, 0x11, 0), (False, c + 1, s, 0x11, 0), (True, c + 1, s + 1, 0x10, 0),
              (True, c + 1, s + 1, 0x10, 0)]
    assert len(steps) == PER_SIDE
    return steps


TEMPLATE = _template()
BODIES = [bytes((k + i) & 0xFF for i in range(SEGMENT)) for k in range(256)]


def write_pair(directory: Path, packets: int, flows: int, combined: bool = False) -> tuple[Path, Path, int]:
    """Write client.pcap and backend.pcap (and, if ``combined``, both.pcap: the two in one, in time order);
    returns the first two paths and the packet count."""
    flows = max(1, min(flows, packets // (2 * PER_SIDE)))
    rng = np.random.default_rng(7)
    starts = rng.uniform(0, max(flows / 500.0, 1.0), flows) + 1_700_000_000.0
    gap, lb = 0.01, 40e-6
    flow = np.repeat(np.arange(flows), PER_SIDE)
    step = np.tile(np.arange(PER_SIDE), flows)
    from_client = np.array([t[0] for t in TEMPLATE])[step]
    base = starts[flow] + step * gap
    ts = np.concatenate([np.where(from_client, base, base + lb), np.where(from_client, base + lb, base)])
    side = np.repeat([0, 1], len(flow))
    order = np.lexsort((side, ts))
    flow, step = np.tile(flow, 2)[order], np.tile(step, 2)[order]
    ts, side = ts[order], side[order]
    client, backend = directory / "client.pcap", directory / "backend.pcap"
    with open(client, "wb") as near, open(backend, "wb") as far, \
            open(directory / "both.pcap" if combined else os.devnull, "wb") as both:
        for stream in (near, far, both):
            stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for t, s_, f, k in zip(ts.tolist(), side.tolist(), flow.tolist(), step.tolist()):
            frame = _packet(f, k, s_)
            seconds = int(t)
            record = struct.pack("<IIII", seconds, int((t - seconds) * 1e6), len(frame), len(frame)) + frame
            (near if s_ == 0 else far).write(record)
            if combined:
                both.write(record)
    return client, backend, len(ts)


def _packet(flow: int, step: int, side: int) -> bytes:
    from_client, c_off, s_off, flags, length = TEMPLATE[step]
    c, s = 1_000_000 + flow * 7919, 50_000_000 + flow * 104729
    seq, ack = (c + c_off, s + s_off if flags != 0x02 else 0) if from_client else (s + s_off, c + c_off)
    payload = BODIES[flow & 0xFF][:length]
    client = (10 << 24) | (200 << 16) | (flow >> 8 & 0xFF) << 8 | (flow & 0xFF)
    cport = 1024 + flow % 60000
    backend = BACKENDS[flow % len(BACKENDS)]
    ident = flow * 64 + step
    if side == 0:  # client side: the client and the VIP
        if from_client:
            return _frame(client, cport, VIP, VPORT, seq, ack, flags, payload, ident, 64, MAC_LB + MAC_CLIENT)
        return _frame(VIP, VPORT, client, cport, seq, ack, flags, payload, ident, 63, MAC_CLIENT + MAC_LB)
    if from_client:  # backend side: NAT'd
        return _frame(client, cport, backend, BPORT, seq, ack, flags, payload, ident, 63, MAC_BACKEND + MAC_LB)
    return _frame(backend, BPORT, client, cport, seq, ack, flags, payload, ident, 64, MAC_LB + MAC_BACKEND)


# ----------------------------------------------------------------- timing --

class PeakMemory(threading.Thread):
    """Samples the resident memory of a process and its descendants; keeps the largest sum."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(self.pid)))
            time.sleep(0.02)


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as stream:
                todo.extend(int(x) for x in stream.read().split())
        except OSError:
            pass
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(command: list[str], env: dict[str, str] | None = None, memory: bool = False
          ) -> tuple[float, int, int, str, float]:
    """Wall time, peak RSS (bytes; 0 unless ``memory``), exit code, the last line of output of a command, and
    the processor time it and its processes used.

    Memory is sampled by a thread of this process, which takes processor time from the command (some
    17ms of a 0.6s run that keeps both cores busy): a run is timed or sampled, not both."""
    used = _children_cpu()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    sampler = PeakMemory(process.pid)
    if memory:
        sampler.start()
    out, _ = process.communicate()
    elapsed = time.perf_counter() - start
    sampler.running = False
    if memory:
        sampler.join()
    lines = [x for x in out.splitlines() if x.strip()]
    return elapsed, sampler.peak, process.returncode, lines[-1] if lines else "", _children_cpu() - used


def _children_cpu() -> float:
    """User and system time of this process's children that have ended (and of theirs that they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_of(command: list[str], env: dict[str, str] | None, repeat: int) -> tuple[float, float, int, list[int]]:
    """The fastest of ``repeat`` timed runs and its processor time, the peak RSS of one more run, and every
    run's exit code."""
    runs = [timed(command, env) for _ in range(repeat)]
    sampled = timed(command, env, memory=True)
    fastest = min(runs, key=lambda r: r[0])
    return fastest[0], fastest[4], sampled[1], [r[2] for r in runs + [sampled]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", metavar="DIR", help="write the captures here and keep them")
    parser.add_argument("--no-tshark", action="store_true", help="skip the tshark comparison")
    parser.add_argument("--combined", action="store_true",
                        help="also time one capture holding both sides (roles inferred), --jobs 1")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest counts")
    args = parser.parse_args(argv)
    return in_directory(args.keep, lambda directory: _run(args, directory))


def in_directory(keep: str | None, run) -> int:
    """``run(directory)`` in ``keep`` (made if need be, and kept) or in a temporary directory, removed after."""
    directory = Path(keep or tempfile.mkdtemp(prefix="lbspec-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return run(directory)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def _run(args, directory: Path) -> int:
    started = time.perf_counter()
    client, backend, count = write_pair(directory, args.packets, args.flows, args.combined)
    spec = directory / "web.lbspec"
    spec.write_text(SPEC)
    size = (client.stat().st_size + backend.stat().st_size) / 1e6
    print(f"capture pair: {count:,} packets, {size:,.0f} MB, written in {time.perf_counter() - started:.1f}s")
    results = []
    lbspec = [sys.executable, "-m", "lbspec", "monitor", str(spec), "--client-side", str(client),
              "--backend-side", str(backend), "--no-progress", "--format", "json"]
    empty = directory / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    env = _with_bytecode(directory)
    nothing = lbspec[:5] + [str(empty)] + lbspec[9:]  # the same command and output format, on no packets
    timed(nothing, env)  # writes the bytecode caches
    startup = min(timed(nothing, env)[0] for _ in range(args.repeat))
    ok = True
    commands = [(f"lbspec monitor --jobs {jobs}", lbspec + ["--jobs", str(jobs)]) for jobs in args.jobs]
    if args.combined:
        commands.append(("lbspec monitor BOTH (one capture)", lbspec[:5] + [str(directory / "both.pcap")] + lbspec[9:]))
    for name, command in commands:
        elapsed, cpu, peak, codes = best_of(command, env, args.repeat)
        ok &= codes == [0] * len(codes)
        results.append((name, elapsed, cpu, peak, max(codes)))
    if not args.no_tshark and shutil.which("tshark"):
        results.append(("tshark -T fields (both files)", *_tshark((client, backend), args.repeat), 0))
    _print(results, count, startup)
    if not ok:
        print("NOTE: lbspec reported violations or failed on a capture that has none (see exit codes above)")
    return 0 if ok else 1


def _with_bytecode(directory: Path) -> dict[str, str]:
    """The environment for lbspec's runs: bytecode cached (in ``directory``) as in any installation, even
    where PYTHONDONTWRITEBYTECODE is set or the package's own caches are stale."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(directory / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _tshark(paths, repeat: int) -> tuple[float, float, int]:
    """tshark on each file in turn: the fastest total of ``repeat`` runs and its processor time, and the peak
    RSS of one more."""
    fields = ["-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "tcp.srcport"]
    runs = [[timed(["tshark", "-r", str(path), *fields]) for path in paths] for _ in range(repeat)]
    best = min(runs, key=lambda run: sum(r[0] for r in run))
    peak = max(timed(["tshark", "-r", str(path), *fields], memory=True)[1] for path in paths)
    return sum(r[0] for r in best), sum(r[4] for r in best), peak


def _print(results, count: int, startup: float) -> None:
    reference = next((r for r in results if r[0].startswith("tshark")), None)
    print(f"{'command':34} {'seconds':>8} {'CPU s':>6} {'packets/s':>12} {'vs tshark':>10} {'peak RSS':>10} "
          f"{'exit':>5}")
    for name, elapsed, cpu, peak, code in results:
        rate = count / elapsed
        ratio = f"{reference[1] / elapsed:9.1f}x" if reference else "-"
        print(f"{name:34} {elapsed:8.2f} {cpu:6.2f} {rate:12,.0f} {ratio:>10} {peak / 2**20:8.0f}MB {code:>5}")
    steady = [f"{name.removeprefix('lbspec monitor ')} {count / max(elapsed - startup, 1e-9):,.0f}"
              for name, elapsed, _cpu, _peak, _code in results if name.startswith("lbspec")]
    print(f"(lbspec startup -- Python, the grammar, the spec -- on an empty capture: {startup:.2f}s; "
          f"packets/s without it: {', '.join(steady)})")


if __name__ == "__main__":
    sys.exit(main())
