"""Echo backends for the lab: answer every TCP chunk and UDP datagram with ``NAME:`` and what came.

Run inside a backend's namespace::

    python -m lbspec.lab.servers --name b1 --tcp 8080 --udp 5353

It prints ``ready`` once listening and stops on SIGTERM.  The answer names the
backend, so a client can tell which one the load balancer chose.  SIGUSR1 makes
it answer ``--slow`` seconds late (a slowed backend), SIGUSR2 on time again.
A TCP connection that starts with an HTTP request line (an LB's HTTP health
check: HAProxy's ``option httpchk``) gets ``200 OK`` naming the backend, and is
closed.
"""

from __future__ import annotations

import argparse
import re
import signal
import socket
import socketserver
import sys
import threading
import time

__all__ = ["main"]


_REQUEST_LINE = re.compile(rb"[A-Z]{3,10} /\S* HTTP/1\.[01]\r\n")


def _handlers(name: bytes, delay: list[float]):
    class Stream(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(30)
            try:
                while data := self.request.recv(65536):
                    time.sleep(delay[0])
                    if _REQUEST_LINE.match(data):
                        body = name + b"\n"
                        self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                                             % len(body) + body)
                        return
                    self.request.sendall(name + b":" + data)
            except OSError:
                pass

    class Datagram(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock, asked = self.request
            time.sleep(delay[0])
            sock.sendmsg([name + b":" + data], asked, 0, self.client_address)

    return Stream, Datagram


class _TCP(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 256  # socketserver's 5 drops SYNs under a benchmark's load: a fault nobody injected


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 does not name it


class _UDP(socketserver.ThreadingUDPServer):
    """Answers each datagram from the address it was sent to, as a server bound to each of its addresses
    would: with the VIP on a backend (dsr), from the VIP, not from the address its route would pick."""

    allow_reuse_address = True
    daemon_threads = True

    def server_bind(self) -> None:
        super().server_bind()
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            self.socket.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def get_request(self):
        data, ancillary, _flags, client = self.socket.recvmsg(self.max_packet_size, socket.CMSG_SPACE(20))
        return (data, self.socket, [_source(level, kind, value) for level, kind, value in ancillary]), client


def _source(level: int, kind: int, value: bytes) -> tuple[int, int, bytes]:
    """The packet-info a datagram came with, turned into the one that sends the answer from the address
    it was sent to (by any interface: the interface index zeroed)."""
    if level == socket.IPPROTO_IPV6:  # struct in6_pktinfo: the address, then the interface
        return level, kind, value[:16] + bytes(4)
    return level, kind, bytes(4) + value[4:8] + bytes(4)  # struct in_pktinfo: interface, local address, to


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
