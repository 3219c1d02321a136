"""Echo backends for the lab: answer every TCP chunk and UDP datagram with ``NAME:`` and what came.

Run inside a backend's namespace::

    python -m lbspec.lab.servers --name b1 --tcp 8080 --udp 5353

It prints ``ready`` once listening and stops on SIGTERM.  The answer names the
backend, so a client can tell which one the load balancer chose.  SIGUSR1 makes
it answer ``--slow`` seconds late (a slowed backend), SIGUSR2 on time again.
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import sys
import threading
import time

__all__ = ["main"]


def _handlers(name: bytes, delay: list[float]):
    class Stream(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(30)
            try:
                while data := self.request.recv(65536):
                    time.sleep(delay[0])
                    self.request.sendall(name + b":" + data)
            except OSError:
                pass

    class Datagram(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            time.sleep(delay[0])
            sock.sendto(name + b":" + data, self.client_address)

    return Stream, Datagram


class _TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256  # socketserver's 5 drops SYNs under a benchmark's load: a fault nobody injected


class _UDP(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TCP and UDP echo servers that name themselves")
    parser.add_argument("--name", required=True)
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--slow", type=float, default=0.5, help="how late to answer after SIGUSR1 (seconds)")
    args = parser.parse_args(argv)
    delay = [0.0]
    signal.signal(signal.SIGUSR1, lambda *_: delay.__setitem__(0, args.slow))
    signal.signal(signal.SIGUSR2, lambda *_: delay.__setitem__(0, 0.0))
    stream, datagram = _handlers(args.name.encode(), delay)
    servers = []
    for port in args.tcp:
        _TCP.address_family = _family(args.address)
        servers.append(_TCP((args.address, port), stream))
    for port in args.udp:
        _UDP.address_family = _family(args.address)
        servers.append(_UDP((args.address, port), datagram))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    for server in servers:  # no graceful shutdown: its poll would make every stop take half a second
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
