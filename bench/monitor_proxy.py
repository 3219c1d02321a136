"""Throughput of `lbspec monitor` on a proxy service (`mode proxy`), on a generated capture pair.

    python bench/monitor_proxy.py [--connections 4000] [--rate 1000] [--repeat 3] [--keep DIR]

Writes a client-side and a backend-side pcap of a proxy load balancer
(HAProxy ``mode tcp``, nginx ``stream``): for every client connection the
client's handshake, an HTTP-like request, the LB's answer and the teardown on
the client side, and on the backend side the LB's own connection to a backend
from its own address carrying the same bytes each way (9 packets a side).
Connections open ``--rate`` a second, each lasting about 10 ms, spread over
four backends in turn; the spec is healthy and the capture has no violation.
Then, in the same run and on the same files:

* ``lbspec monitor SPEC --client-side C --backend-side B`` with every library
  property on;
* the same command on an empty capture: start-up (Python, numpy, the spec),
  so that figures without it can be printed.

It prints seconds, packets and connections per second, and peak resident
memory (sampled in one more, untimed run).  lbspec runs with its bytecode
cached, as installed (a first run, not timed, writes the cache); ``--repeat``
runs of each, the fastest counts.  The
capture must yield no violations; the script says so, and exits 1, if lbspec
exits non-zero on it.  Figures depend on the machine: compare runs made
together.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from monitor_throughput import _frame, _with_bytecode, best_of, in_directory, timed  # noqa: E402  (the NAT bench's frames and timing)

VIP, VPORT, BPORT = (192 << 24) | (0 << 16) | (2 << 8) | 10, 80, 8080
LB = (10 << 24) | (1 << 16) | 1  # the LB's own address toward the backends
BACKENDS = [(10 << 24) | (1 << 16) | 11 + i for i in range(4)]
MAC_CLIENT, MAC_LB, MAC_BACKEND = (bytes.fromhex(f"02000000000{k}") for k in (1, 2, 3))
PER_SIDE = 9  # packets per connection and side: 3 handshake, request, answer, its ACK, 3 teardown
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)

SPEC = """
service web {
    vip 192.0.2.10
    listen tcp 80
    mode proxy
    pool app {
        backend app1 10.1.0.11:8080
        backend app2 10.1.0.12:8080
        backend app3 10.1.0.13:8080
        backend app4 10.1.0.14:8080
    }
    forward tcp 80 to app
    balance round_robin
    health tcp every 2s timeout 1s fall 3 rise 2
}
"""

# one connection: (time after its start, side, from which end, flags, which bytes); 0 the client side and 1 the
# backend side; on each side end 0 opens the connection (the client, the LB) and end 1 answers (the LB, a backend)
STEPS = [
    (0.0, 0, 0, 0x02, None), (0.0001, 0, 1, 0x12, None), (0.0003, 0, 0, 0x10, None),
    (0.00015, 1, 0, 0x02, None), (0.00025, 1, 1, 0x12, None), (0.0003, 1, 0, 0x10, None),
    (0.0004, 0, 0, 0x18, "request"), (0.0006, 1, 0, 0x18, "request"),
    (0.0096, 1, 1, 0x18, "answer"), (0.0097, 1, 0, 0x10, None),
    (0.0098, 0, 1, 0x18, "answer"), (0.0101, 0, 0, 0x10, None),
    (0.0102, 0, 0, 0x11, None), (0.0103, 0, 1, 0x11, None), (0.0104, 0, 0, 0x10, None),
    (0.0104, 1, 0, 0x11, None), (0.0105, 1, 1, 0x11, None), (0.0106, 1, 0, 0x10, None),
]
assert len(STEPS) == 2 * PER_SIDE


def _request(k: int) -> bytes:
    return (f"GET /items/{k} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench/1\r\n"
            f"Accept: application/json\r\n\r\n").encode()


def _answer(k: int) -> bytes:
    body = f'{{"item": {k}, "name": "item {k}", "price": {k % 997}}}'.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _connection(k: int, start: float) -> list[tuple[float, int, bytes]]:
    """The packets of client connection ``k`` and the LB's backend connection for it: (time, side, frame)."""
    client = (203 << 24) | (0 << 16) | (113 << 8) | (1 + k % 200)
    cport, lport = 20000 + k % 40000, 10000 + k % 50000
    backend = BACKENDS[k % len(BACKENDS)]
    data = {"request": _request(k), "answer": _answer(k)}
    # each end's initial sequence number, and how far it has sent (a SYN and a FIN count one): [side][end]
    isn = [[1_000_000 + k * 7919, 5_000_000 + k * 104729], [90_000_000 + k * 3571, 700_000_000 + k * 6007]]
    sent = [[0, 0], [0, 0]]
    ends = [((client, cport, MAC_LB + MAC_CLIENT), (VIP, VPORT, MAC_CLIENT + MAC_LB)),
            ((LB, lport, MAC_BACKEND + MAC_LB), (backend, BPORT, MAC_LB + MAC_BACKEND))]
    frames = []
    for delay, side, end, flags, what in STEPS:
        payload = data[what] if what else b""
        (src, sport, macs), (dst, dport, _macs) = ends[side][end], ends[side][1 - end]
        seq = isn[side][end] + sent[side][end]
        ack = 0 if flags == 0x02 else isn[side][1 - end] + sent[side][1 - end]
        ttl = 64 if (side, end) in ((0, 0), (1, 1)) else 63
        frames.append((start + delay, side, _frame(src, sport, dst, dport, seq, ack, flags,
                                                   payload, k * 32 + len(frames), ttl, macs)))
        sent[side][end] += len(payload) + (1 if flags & 0x03 else 0)  # a SYN or FIN takes a sequence number
    return frames


def write_pair(directory: Path, connections: int, rate: float) -> tuple[Path, Path, int]:
    """Write client.pcap and backend.pcap; returns their paths and the packet count."""
    records = [r for k in range(connections) for r in _connection(k, 1_700_000_000.0 + k / rate)]
    records.sort(key=lambda r: r[0])
    client, backend = directory / "client.pcap", directory / "backend.pcap"
    with open(client, "wb") as near, open(backend, "wb") as far:
        near.write(PCAP_HEADER)
        far.write(PCAP_HEADER)
        for t, side, frame in records:
            seconds = int(t)
            micros = round((t - seconds) * 1e6)
            (near if side == 0 else far).write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    return client, backend, len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4000, help="client connections (each with its backend one)")
    parser.add_argument("--rate", type=float, default=1000.0, help="connections opened per second of capture")
    parser.add_argument("--keep", metavar="DIR", help="write the captures here and keep them")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest counts")
    args = parser.parse_args(argv)
    return in_directory(args.keep, lambda directory: _run(args, directory))


def _run(args, directory: Path) -> int:
    started = time.perf_counter()
    client, backend, count = write_pair(directory, max(1, args.connections), args.rate)
    spec = directory / "proxy.lbspec"
    spec.write_text(SPEC)
    print(f"proxy capture pair: {args.connections:,} connections, {count:,} packets, "
          f"written in {time.perf_counter() - started:.1f}s")
    lbspec = [sys.executable, "-m", "lbspec", "monitor", str(spec), "--client-side", str(client),
              "--backend-side", str(backend), "--no-progress", "--format", "json"]
    empty = directory / "empty.pcap"
    empty.write_bytes(PCAP_HEADER)
    env = _with_bytecode(directory)
    nothing = lbspec[:5] + [str(empty)] + lbspec[9:]  # the same command and output format, on no packets
    timed(nothing, env)  # writes the bytecode caches
    startup = min(timed(nothing, env)[0] for _ in range(args.repeat))
    elapsed, cpu, peak, codes = best_of(lbspec, env, args.repeat)
    code = max(codes)
    steady = max(elapsed - startup, 1e-9)
    print(f"{'command':30} {'seconds':>8} {'CPU s':>6} {'packets/s':>11} {'connections/s':>14} {'peak RSS':>9} "
          f"{'exit':>5}")
    print(f"{'lbspec monitor (proxy)':30} {elapsed:8.2f} {cpu:6.2f} {count / elapsed:11,.0f} "
          f"{args.connections / elapsed:14,.0f} {peak / 2**20:7.0f}MB {code:>5}")
    print(f"(lbspec startup on an empty capture: {startup:.2f}s; without it: {steady:.2f}s, "
          f"{count / steady:,.0f} packets/s, {args.connections / steady:,.0f} connections/s)")
    if set(codes) != {0}:
        print(f"NOTE: lbspec exited {', '.join(map(str, sorted(set(codes))))} on a capture that has no violation "
              f"(run it with --keep DIR and --format text to see why)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
