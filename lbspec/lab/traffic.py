"""Client traffic for the lab: bounded TCP connections and UDP datagrams, with who answered each.

Run inside the client's namespace; prints one JSON document::

    python -m lbspec.lab.traffic --tcp 192.0.2.10:80 --connections 20 --messages 3 \\
        --udp 192.0.2.10:53 --datagrams 30 --interval 0.02 --deadline 20

``--udp-size BYTES`` pads each datagram to that size: past the path's MTU
(1500 in the lab), the client's kernel sends it as IP fragments.  ``--tcp-size
BYTES`` pads each TCP message to that size, ended by a newline, and the client
reads each answer to its newline.  ``--tcp-reuse N`` binds the connections'
source ports, from 20000 on, each port for N connections in a row: a client
that reuses its ports (or a NAT in front of many) opens a new connection on the
5-tuple of one before.

Every loop is bounded in count, every socket operation by a timeout, and the
whole run by ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

__all__ = ["main"]

REUSED_PORTS = 20000  # below Linux's ephemeral ports: no other socket of the client takes them


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _connection(target: tuple[str, int], messages: int, timeout: float, source_port: int | None, size: int = 0
                ) -> dict:
    out = {"proto": "tcp", "answered_by": None, "answers": 0, "error": None, "port": None}
    sock = socket.socket(_family(target[0]), socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port's last connection may linger
            sock.bind(("", source_port))
        sock.connect(target)
        out["port"] = sock.getsockname()[1]
        for k in range(messages):
            data = b"hello %d" % k
            sock.sendall(data + b"." * (size - len(data) - 1) + b"\n" if size else data)
            answer = sock.recv(4096)
            while size and answer and not answer.endswith(b"\n"):  # (the echo may come in pieces)
                more = sock.recv(65536)
                if not more:
                    break
                answer += more
            if not answer:
                break
            out["answered_by"] = answer.split(b":", 1)[0].decode(errors="replace")
            out["answers"] += 1
    except OSError as error:
        out["error"] = type(error).__name__
    finally:
        sock.close()
    return out


def _datagrams(target: tuple[str, int], count: int, interval: float, timeout: float, source_port: int | None,
               deadline: float, size: int = 0) -> list[dict]:
    sock = socket.socket(_family(target[0]), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    if source_port:
        sock.bind(("", source_port))
    results = []
    for k in range(count):
        if time.monotonic() > deadline:
            break
        data = b"datagram %d " % k
        sock.sendto(data + b"." * (size - len(data)), target)
        result = {"proto": "udp", "answered_by": None, "port": sock.getsockname()[1], "error": None}
        try:
            answer, _ = sock.recvfrom(65536)
            result["answered_by"] = answer.split(b":", 1)[0].decode(errors="replace")
        except OSError as error:
            result["error"] = type(error).__name__
        results.append(result)
        time.sleep(interval)
    sock.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bounded client traffic that records who answered")
    parser.add_argument("--tcp", type=_target, action="append", default=[])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2)
    parser.add_argument("--tcp-size", type=int, default=0, help="pad each TCP message to this many bytes")
    parser.add_argument("--tcp-reuse", type=int, default=0,
                        help="bind source ports from 20000 on, each for this many connections in a row")
    parser.add_argument("--udp", type=_target, action="append", default=[])
    parser.add_argument("--datagrams", type=int, default=10)
    parser.add_argument("--udp-source-port", type=int)
    parser.add_argument("--udp-size", type=int, default=0, help="pad each datagram to this many bytes")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=30.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.deadline
    results = []
    for target in args.udp:
        results += _datagrams(target, args.datagrams, args.interval, args.timeout, args.udp_source_port, deadline,
                              args.udp_size)
    opened = 0
    for _ in range(args.connections):
        for target in args.tcp:
            if time.monotonic() > deadline:
                break
            port = REUSED_PORTS + opened // args.tcp_reuse if args.tcp_reuse else None
            results.append(_connection(target, args.messages, args.timeout, port, args.tcp_size))
            opened += 1
        time.sleep(args.interval)
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
