"""Play a trace's client side with real sockets, in real time: run inside the lab's client namespace.

::

    python -m lbspec.lab.replay < plan.json

The plan (JSON on standard input) lists events in time order, each
``[time, kind, ...]``:

* ``[t, "tcp", flow, src, sport, dst, dport, payload_hex, flags]`` -- a segment
  of TCP flow ``flow``.  The flow's first event opens a real connection from
  ``src:sport`` (connect: the kernel sends the SYN and completes the
  handshake); a payload is sent on it (queued until it is connected); ``fin``
  in ``flags`` shuts the sending side, ``rst`` aborts the connection.
  Sequence numbers, acknowledgements, windows and retransmissions are the
  kernel's.
* ``[t, "udp", flow, src, sport, dst, dport, payload_hex]`` -- a datagram from
  a socket bound to ``src:sport`` (one socket per flow, kept open so that
  answers find it).
* ``[t, "raw", packet_hex, dst]`` -- an IP packet sent as it is (ICMP).
* ``[t, "fault", index]`` -- tell the parent to inject fault ``index`` now: a
  line ``{"fault": index}`` on standard output; playing goes on meanwhile.

The plan also gives ``lead`` (seconds between the start line and time 0),
``settle`` (how long to wait after the last event for answers to what was
sent) and ``linger`` (how long to wait for connections to close).  Output is
JSON lines: ``{"start": WALL}`` (the wall-clock time of time 0), the fault
lines, and ``{"done": {flow: {...}}}`` with what happened to each flow.

Every wait is bounded by the plan; every socket is closed on exit, and a
connection still open after ``linger`` is aborted (RST), so that nothing
holds its client port.  TIME_WAIT is switched off in the client namespace
(``tcp_max_tw_buckets`` 0; the namespace lives as long as the lab), so that a
trace replayed at once -- hypothesis shrinking does that -- can open the same
connections again.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

__all__ = ["main"]

_TIME_WAIT = "/proc/sys/net/ipv4/tcp_max_tw_buckets"


@dataclass
class _Flow:
    proto: str
    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    connected: bool = False
    sent: int = 0
    datagrams: int = 0
    received: int = 0
    answers: int = 0
    shut: bool = False  # a FIN in the trace: shut down writing once the pending bytes are out
    closed_by_peer: bool = False
    error: str | None = None

    def report(self) -> dict:
        return {"proto": self.proto, "sent": self.sent, "datagrams": self.datagrams, "received": self.received, "answers": self.answers,
                "connected": self.connected, "closed_by_peer": self.closed_by_peer, "error": self.error}


class _Player:
    def __init__(self, plan: dict, out):
        self.plan, self.out = plan, out
        self.selector = selectors.DefaultSelector()
        self.flows: dict[int, _Flow] = {}
        self.raw: dict[int, socket.socket] = {}  # a raw socket per address family, each made when first needed

    # ------------------------------------------------------------ the clock --

    def play(self) -> None:
        start = time.time() + float(self.plan.get("lead", 0.05))
        self.say({"start": start})
        for event in self.plan["events"]:
            self.wait_until(start + float(event[0]))
            getattr(self, "_" + event[1])(*event[2:])
        self.settle(time.time() + float(self.plan.get("settle", 0.5)))
        for flow in self.flows.values():
            self.close(flow)
        self.until_closed(time.time() + float(self.plan.get("linger", 0.3)))
        self.say({"done": {str(k): f.report() for k, f in self.flows.items()}})

    def say(self, item: dict) -> None:
        self.out.write(json.dumps(item) + "\n")
        self.out.flush()

    def wait_until(self, when: float) -> None:
        while (left := when - time.time()) > 0:
            self.poll(left)

    def settle(self, deadline: float) -> None:
        """Until every flow has its answers: an echo at least as long as what a TCP flow sent, an answer to
        each datagram."""
        while time.time() < deadline and any(self._waiting(f) for f in self.flows.values()):
            self.poll(deadline - time.time())

    @staticmethod
    def _waiting(flow: _Flow) -> bool:
        if flow.error is not None or flow.closed_by_peer:
            return False
        if flow.proto == "udp":
            return flow.answers < flow.datagrams
        return bool(flow.pending) or flow.received < flow.sent

    def until_closed(self, deadline: float) -> None:
        while time.time() < deadline and any(f.proto == "tcp" and f.sock.fileno() >= 0 and f.error is None
                                             and not f.closed_by_peer for f in self.flows.values()):
            self.poll(deadline - time.time())

    def poll(self, timeout: float) -> None:
        if not self.selector.get_map():
            time.sleep(max(0.0, timeout))
            return
        for key, mask in self.selector.select(max(0.0, timeout)):
            flow = key.data
            if mask & selectors.EVENT_WRITE:
                self.writable(flow)
            if mask & selectors.EVENT_READ and flow.sock.fileno() >= 0:
                self.readable(flow)

    # --------------------------------------------------------------- events --

    def _tcp(self, number: int, src: str, sport: int, dst: str, dport: int, payload: str, flags: list[str]) -> None:
        flow = self.flows.get(number)
        if flow is None:
            flow = self.flows[number] = self.open_tcp(src, sport, dst, dport)
        if flow.error is not None or flow.sock.fileno() < 0:
            return
        if "rst" in flags:
            self.forget(flow, None, abort=True)
            return
        flow.pending += bytes.fromhex(payload)
        flow.shut = flow.shut or "fin" in flags
        if flow.connected:
            self.flush(flow)

    def open_tcp(self, src: str, sport: int, dst: str, dport: int) -> _Flow:
        sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one send, one segment
        sock.setblocking(False)
        flow = _Flow("tcp", sock)
        try:
            sock.bind((src, sport))
            code = sock.connect_ex((dst, dport))
        except OSError as error:
            flow.error = errno.errorcode.get(error.errno, str(error))
            sock.close()
            return flow
        if code not in (0, errno.EINPROGRESS):
            flow.error = errno.errorcode.get(code, str(code))
            sock.close()
            return flow
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, flow)
        return flow

    def _udp(self, number: int, src: str, sport: int, dst: str, dport: int, payload: str) -> None:
        flow = self.flows.get(number)
        if flow is None:
            sock = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            flow = self.flows[number] = _Flow("udp", sock)
            try:
                sock.bind((src, sport))
            except OSError as error:
                flow.error = errno.errorcode.get(error.errno, str(error))
                sock.close()
                return
            self.selector.register(sock, selectors.EVENT_READ, flow)
        if flow.sock.fileno() < 0:
            return
        data = bytes.fromhex(payload)
        try:
            flow.sock.sendto(data, (dst, dport))
            flow.sent += len(data)
            flow.datagrams += 1
        except OSError as error:
            flow.error = errno.errorcode.get(error.errno, str(error))

    def _raw(self, packet: str, dst: str) -> None:
        """Send an IP packet as it is (header and all: IPPROTO_RAW says so in IPv6 too)."""
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        if family not in self.raw:
            self.raw[family] = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self.raw[family].sendto(bytes.fromhex(packet), (dst, 0))
        except OSError:
            pass

    def _fault(self, index: int) -> None:
        self.say({"fault": index})

    # -------------------------------------------------------------- sockets --

    def writable(self, flow: _Flow) -> None:
        if not flow.connected:
            code = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.forget(flow, errno.errorcode.get(code, str(code)))
                return
            flow.connected = True
        self.flush(flow)

    def flush(self, flow: _Flow) -> None:
        try:
            while flow.pending:
                sent = flow.sock.send(flow.pending)
                flow.sent += sent
                del flow.pending[:sent]
        except BlockingIOError:
            pass
        except OSError as error:
            self.forget(flow, errno.errorcode.get(error.errno, str(error)))
            return
        if flow.shut and not flow.pending:
            try:
                flow.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.selector.modify(flow.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if flow.pending else 0), flow)

    def readable(self, flow: _Flow) -> None:
        try:
            data = flow.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as error:
            self.forget(flow, errno.errorcode.get(error.errno, str(error)))
            return
        if flow.proto == "udp" or data:
            flow.received += len(data)
            flow.answers += 1
            return
        flow.closed_by_peer = True
        self.forget(flow, None)

    def close(self, flow: _Flow) -> None:
        """The end of the trace: a TCP flow closes (FIN) and waits for its peer's; a UDP socket just closes."""
        if flow.sock.fileno() < 0:
            return
        if flow.proto == "tcp" and flow.connected and flow.error is None:
            try:
                flow.sock.shutdown(socket.SHUT_WR)
                return
            except OSError:
                pass
        self.forget(flow, None)

    def forget(self, flow: _Flow, error: str | None, abort: bool = False) -> None:
        flow.error = flow.error or error
        if flow.sock.fileno() >= 0:
            try:
                self.selector.unregister(flow.sock)
            except (KeyError, ValueError):
                pass
            if abort:
                flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            flow.sock.close()

    def shutdown(self) -> None:
        for flow in self.flows.values():
            self.forget(flow, None, abort=flow.proto == "tcp" and flow.connected)
        for raw in self.raw.values():
            raw.close()
        self.selector.close()


def _no_time_wait() -> None:
    try:
        with open(_TIME_WAIT, "w") as stream:
            stream.write("0")
    except OSError:
        pass  # not root, or an old kernel: replaying a trace at once may then fail to connect (reported per flow)


def main(argv: list[str] | None = None) -> int:
    plan = json.load(sys.stdin)
    _no_time_wait()
    player = _Player(plan, sys.stdout)
    try:
        player.play()
    finally:
        player.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
