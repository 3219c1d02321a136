"""The in-process driver: a trace played against a Python load balancer, with simulated backends.

:class:`InProcess` wraps a :class:`~lbspec.harness.adapter.LoadBalancer`.
Events are processed in time order from one queue: a client's packet goes to
``lb.handle``; each packet the LB emits is recorded on the side it goes to (a
packet to a client address on the client side, anything else on the backend
side) and, if it reaches a live backend, the backend answers it
``backend_delay`` later:

* a TCP SYN with a SYN-ACK, a UDP datagram with a datagram, an echo request
  with an echo reply (a dead backend answers nothing);
* in nat and snat modes the answer goes back through the LB (``lb.handle``);
  in dsr and tunnel modes the backend holds the VIP and answers the client
  directly.

dsr and proxy services cannot be driven in process: which backend a dsr
packet goes to is in its Ethernet header, and a proxy terminates TCP; both
need a network driver.
"""

from __future__ import annotations

import heapq
import itertools
import reprlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from ipaddress import ip_address
from typing import Any

from lbspec.diagnostics import InputError, LbspecError
from lbspec.harness.adapter import Emitted, LoadBalancer, Observed, Recording
from lbspec.harness.trace import Fault, Send, Trace
from lbspec.harness.wire import Segment, decode, destination
from lbspec.semantics.model import Address, Backend, Response, Service, Spec

__all__ = ["InProcess", "EPOCH", "UnsupportedMode", "LoadBalancerError", "MARKERS"]

EPOCH = 1_700_000_000  # recordings are dated from here (2023-11-14): captures look like captures
# Capture markers: one datagram between two addresses of the benchmarking range (RFC 2544), seen on both
# sides before the trace starts and after it has drained, so that each capture shows how long it ran.
MARKERS = (ip_address("198.18.0.1"), ip_address("198.18.0.2"))
_LEAD = 1.0  # seconds captured before the first event
_REPLY_THROUGH_LB = ("nat", "snat")


class UnsupportedMode(InputError):
    """A service whose mode an in-process load balancer cannot be tested in."""


class LoadBalancerError(LbspecError, AssertionError):
    """The load balancer under test raised, or returned something that is not IP packets, playing ``trace``."""

    def __init__(self, problem: str, trace: Trace):
        lines = "".join(f"\n  {event.describe()}" for event in trace)
        super().__init__(f"{problem}\nwhile playing this trace ({trace.summary()}):{lines}")
        self.problem, self.trace = problem, trace


@dataclass
class _Backends:
    """The simulated backends: the servers at each address and port, and which are up.  A server may be
    declared more than once (in several pools or services): it is down when any of them has failed."""

    servers: dict[tuple[Address, int | None], list[tuple[Backend, Service]]]
    down: set[tuple[str, str]] = field(default_factory=set)  # (service, backend)

    @classmethod
    def of(cls, services: Iterable[Service]) -> _Backends:
        servers: dict[tuple[Address, int | None], list[tuple[Backend, Service]]] = {}
        for service in services:
            for backend in service.backends:
                servers.setdefault((backend.address, backend.port), []).append((backend, service))
        return cls(servers)

    def at(self, address: Address, port: int) -> list[tuple[Backend, Service]] | None:
        """The server a packet to ``address`` and ``port`` reaches: the backend there on that port, else one
        that names no port, else any at that address (which answers a wrong port as well)."""
        found = self.servers.get((address, port)) or self.servers.get((address, None))
        return found or next((v for (a, _p), v in self.servers.items() if a == address), None)

    def up(self, server: list[tuple[Backend, Service]]) -> bool:
        return not any((service.name, backend.name) in self.down for backend, service in server)



class InProcess:
    """Drive an in-process :class:`LoadBalancer` (made fresh for each run by ``factory``) with a trace.

    ``lb`` is a load balancer or a zero-argument callable that makes one; a
    callable gets a fresh one per run, so state never leaks between traces.
    """

    def __init__(self, lb: LoadBalancer | Callable[[], LoadBalancer], backend_delay: float = 0.0005,
                 epoch: int = EPOCH):
        self.make = _factory(lb)
        self.backend_delay = backend_delay
        self.epoch = epoch

    def run(self, spec: Spec, trace: Trace, services: tuple[str, ...] | None = None) -> Recording:
        chosen = [s for s in spec.services if services is None or s.name in services]
        for service in chosen:
            _supported(service)
        return _Run(self.make(), chosen, trace, self.backend_delay, self.epoch).play()


def _factory(lb: Any) -> Callable[[], Any]:
    if hasattr(lb, "handle") and not isinstance(lb, type):
        return lambda: lb  # one instance for every run: it must not keep state between traces
    if callable(lb):
        return lb
    raise TypeError(f"expected a load balancer (an object with handle(packet, time)) or a callable making one, "
                    f"not {lb!r}")


def _supported(service: Service) -> None:
    if service.mode.kind in ("dsr", "proxy"):
        raise UnsupportedMode(
            f"service {service.name!r} is in `mode {service.mode.kind}`, which an in-process load balancer cannot "
            "be tested in (dsr picks a backend by MAC address, proxy terminates TCP); test it with a network "
            "driver, or test a nat, snat or tunnel service")


class _Run:
    """One trace played: the event queue, the backends and the recording."""

    def __init__(self, lb: Any, services: list[Service], trace: Trace, delay: float, epoch: int):
        self.lb, self.services, self.trace, self.delay = lb, services, trace, delay
        self.backends = _Backends.of(services)
        self.clients = {e.segment.src for e in trace.sends}
        self.recording = Recording(epoch=epoch)
        self.queue: list[tuple[float, int, Callable[[float], None]]] = []
        self.order = itertools.count()
        self.gue_ports = tuple({s.mode.encap_port or 6080 for s in services if s.mode.encap == "gue"}) or (6080,)
        self.now = 0.0

    def play(self) -> Recording:
        for event in self.trace:
            self.at(event.time, self._client(event) if isinstance(event, Send) else self._fault(event))
        self._marker(-_LEAD, b"lbspec: capture starts")
        end = self.trace.duration + _drain(self.services)  # an LB and a backend answering each other stop here
        while self.queue and self.queue[0][0] <= end:
            time, _n, action = heapq.heappop(self.queue)
            self._tick(time)
            action(time)
        self._tick(self.now + _drain(self.services))  # let timers run past the last event
        self._marker(self.now, b"lbspec: capture ends")
        return self.recording

    def _marker(self, time: float, text: bytes) -> None:
        source, target = MARKERS
        data = Segment("udp", source, target, 9, 9, payload=text).encode()
        for side in ("client", "backend"):
            self.recording.packets.append(Observed(time, side, data))

    def at(self, time: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self.queue, (time, next(self.order), action))

    def _tick(self, time: float) -> None:
        if time > self.now:
            self.now = time
            self._call("advance", time, time)

    def _call(self, hook: str, time: float, *args: Any) -> None:
        """Call the LB's ``hook`` (if it has it) and send on what it emits; a failure names the call and trace."""
        method = getattr(self.lb, hook, None)
        if method is None:
            return
        where = lambda: f"{type(self.lb).__name__}.{hook}({', '.join(map(_shown, args))})"  # noqa: E731 - for errors
        try:
            emitted = method(*args)
        except Exception as error:
            raise LoadBalancerError(f"{where()} raised {type(error).__name__}: {error}", self.trace) from error
        self._emitted(_packets(emitted, where, self.trace), time)

    # ---------------------------------------------------------------- events --

    def _client(self, event: Send) -> Callable[[float], None]:
        def send(time: float) -> None:
            data = event.segment.encode()
            self.recording.packets.append(Observed(time, "client", data))
            self._call("handle", time, data, time)
        return send

    def _fault(self, event: Fault) -> Callable[[float], None]:
        def fault(time: float) -> None:
            key = fault_owner(event, self.services)
            (self.backends.down.discard if event.up else self.backends.down.add)(key)
            self.recording.faults.append(Fault(time, event.backend, event.up, key[0]))
            self._call("backend_health", time, event.backend, event.up, time)
        return fault

    def _emitted(self, packets: list[bytes], time: float) -> None:
        for data in packets:
            if destination(data) in self.clients:
                self.recording.packets.append(Observed(time, "client", data))
            else:
                self.recording.packets.append(Observed(time, "backend", data))
                self._deliver(data, time)

    # -------------------------------------------------------------- backends --

    def _deliver(self, data: bytes, time: float) -> None:
        segment = decode(data, self.gue_ports)
        if segment is None:
            return
        address = segment.outer.dst if segment.outer is not None else segment.dst
        server = self.backends.at(address, segment.dport)
        if server is None or not self.backends.up(server):
            return
        answer = _answer(segment)
        if answer is not None:
            self.at(time + self.delay, self._reply(answer, server))

    def _reply(self, answer: Segment, server: list[tuple[Backend, Service]]) -> Callable[[float], None]:
        def reply(time: float) -> None:
            if not self.backends.up(server):
                return  # it died before it could answer
            data = answer.encode()
            if server[0][1].mode.kind in _REPLY_THROUGH_LB:
                self.recording.packets.append(Observed(time, "backend", data))
                self._call("handle", time, data, time)
            else:
                self.recording.packets.append(Observed(time, "client", data))
        return reply


def _shown(argument: Any) -> str:
    """An argument of a call to the LB as a failure shows it: a packet as the trace shows packets."""
    if isinstance(argument, bytes):
        segment = decode(argument)
        return str(segment) if segment is not None else reprlib.repr(argument)
    return repr(argument)


def _packets(emitted: Any, where: Callable[[], str], trace: Trace) -> list[bytes]:
    """What a hook returned, as IP packets: None or an iterable of bytes-like things (a scapy packet too).
    ``where`` names the call, for an error (naming it decodes the packet: only then)."""
    if emitted is None:
        return []
    if isinstance(emitted, (bytes, bytearray, memoryview, str)) or not isinstance(emitted, Iterable):
        raise LoadBalancerError(f"{where()} returned {reprlib.repr(emitted)}: return a list of the IP packets it "
                                "sends (each as bytes), [] for none", trace)
    return [_packet(item, where, trace) for item in emitted]


def _packet(item: Emitted, where: Callable[[], str], trace: Trace) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)) or hasattr(type(item), "__bytes__"):
        return bytes(item)
    raise LoadBalancerError(f"{where()} returned {reprlib.repr(item)} among its packets: each must be an IP packet "
                            "as bytes, or something bytes() turns into one (a scapy packet)", trace)


def fault_owner(fault: Fault, services: list[Service]) -> tuple[str, str]:
    """(service, backend) of the backend ``fault`` names; an error unless exactly one service has it."""
    owners = [s.name for s in services if any(b.name == fault.backend for b in s.backends)
              and fault.service in (None, s.name)]
    if len(owners) != 1:
        raise InputError(f"fault names backend {fault.backend!r}, which is in "
                         f"{len(owners) or 'no'} service{'s' if len(owners) != 1 else ''} of the spec")
    return owners[0], fault.backend


def response_deadline(services: list[Service]) -> float:
    """The longest response deadline of the services' checks (50 ms when none has one)."""
    return max((c.pattern.within for s in services for c in s.checks if isinstance(c.pattern, Response)),
               default=0.05)


def _drain(services: list[Service]) -> float:
    """How long to keep capturing after the last event: past every response deadline, with room to spare."""
    return 1.0 + 2 * response_deadline(services)


def _answer(received: Segment) -> Segment | None:
    """What a backend sends back for ``received`` (decapsulated), or None."""
    if received.outer is not None:
        received = replace(received, outer=None)
    if received.proto == "tcp" and received.flags == {"syn"}:
        isn = zlib.crc32(received.encode()) & 0xFFFFFFFF
        return received.reply(flags=frozenset({"syn", "ack"}), seq=isn, ack=received.seq + 1, payload=b"", ttl=64)
    if received.proto == "udp":
        return received.reply(payload=b"re:" + received.payload, ttl=64)
    if received.proto == "icmp" and received.icmp_type in (8, 128):
        return received.reply(icmp_type=received.icmp_type + 1 if received.family == 6 else 0, ttl=64)
    return None
