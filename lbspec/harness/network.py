"""The network driver: a trace played with real sockets against a real load balancer in the lab.

:class:`Network` is a :class:`~lbspec.harness.adapter.Driver` for a load
balancer running in a :class:`lbspec.lab.Lab` (nftables, HAProxy, nginx, or
anything with ``install(lab)`` and ``remove(lab)``).  For each trace it:

1. checks that the spec describes the lab (its VIP, backend addresses that
   are the lab's backends, the lab's address family) -- :class:`LabMismatch`
   names what differs;
2. installs the load balancer (when it was given one), aborts every TCP
   connection the client and the backends still have (``ss -K``) and empties
   the connection-tracking table of the LB's namespace (``conntrack -F``), so
   that every trace meets it fresh: conntrack remembers a UDP flow for 30 s
   and more, and would send it where it went in the trace before; and a
   backend blocked during a connection keeps it, and resends its end once let
   through -- into the next trace, past an LB that no longer knows it;
3. adds the trace's client addresses to the client namespace (and a route
   back to each in the LB namespace), so that packets keep their sources;
4. captures both sides of the LB (``lab.capture``), plays the trace from the
   client namespace in real time (:mod:`lbspec.lab.replay`) and injects its
   faults as they come: a backend that fails is killed
   (``lab.kill_backend``, its kernel then refuses connections) or blocked
   (``lab.block_backend``, silence), as ``faults`` says; one that recovers is
   restarted or unblocked;
5. tears down everything it set up, in reverse order, whatever happens --
   and returns the captures as a :class:`~lbspec.harness.adapter.Recording`.

How a trace becomes traffic: each TCP flow is one real connection from the
flow's client address and port -- its first packet opens it (the kernel does
the handshake), each payload is sent as it comes, and every connection is
closed (FIN) when the trace has ended and its answers are in; sequence
numbers, acknowledgements, windows, retransmissions and the exact segments
are the kernel's.  UDP packets are datagrams from a socket bound to the
flow's address and port; ICMP packets are sent as they are.  The recording
holds what the captures saw, not the trace's packets.

Traces are played in real time, so a trace longer than ``max_duration``
seconds is refused: inside a hypothesis search it is rejected (hypothesis
draws another), elsewhere :class:`TraceTooLong` is raised.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbspec.diagnostics import InputError
from lbspec.harness.adapter import Observed, Recording
from lbspec.harness.inprocess import MARKERS, fault_owner, response_deadline
from lbspec.harness.trace import Fault, Trace
from lbspec.harness.wire import Segment
from lbspec.lab.netns import LabError
from lbspec.lab.topology import IPV4, IPV6, host_prefix
from lbspec.semantics.model import Service, Spec

__all__ = ["Network", "LabMismatch", "TraceTooLong", "CaptureLoss", "FAULTS"]

FAULTS = ("kill", "block")  # how a backend fails: its servers killed, or all its traffic dropped
CAPTURE_TRIES = 3  # plays of a trace whose captures lost packets, before the loss is an error
# the lab's own networks, each side of the LB in each family, loopback, and the benchmarking range
_LAB_NETWORKS = [ipaddress.ip_network(f"{address}/{a.length}", strict=False) for a in (IPV4, IPV6)
                 for address in (a.client, a.lb_backend_side)] + [
                 ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "198.18.0.0/15")]


class LabMismatch(InputError):
    """The spec does not describe the lab the driver plays in (a VIP, a backend, an address family)."""


class TraceTooLong(InputError):
    """A trace that would take longer than the driver's ``max_duration`` to play in real time."""


class CaptureLoss(LabError):
    """The lab's captures lost packets (the kernel says so) in every play of a trace."""


@dataclass
class Network:
    """Play traces against the load balancer in ``lab`` with real sockets; judge what the captures saw.

    ``balancer`` is installed before each trace and removed after it (None:
    the one the lab already has, left in place).  ``faults`` is ``"kill"``
    or ``"block"``: how a backend that fails in the trace is made to fail.
    ``max_duration`` bounds a trace's length in seconds; ``settle`` is how
    long to wait for answers after the last event, ``linger`` for connections
    to close, ``tail`` how long to keep capturing after that (default: twice
    the spec's longest response deadline).
    """

    lab: Any  # lbspec.lab.Lab
    balancer: Any = None
    faults: str = "kill"
    max_duration: float = 10.0
    settle: float = 0.5
    linger: float = 0.3
    tail: float | None = None
    keep_captures: str | None = None  # a directory to keep the raw captures of the last run in
    last_flows: dict = field(default_factory=dict, init=False, repr=False)  # what the replay said of each flow

    def __post_init__(self) -> None:
        if self.faults not in FAULTS:
            raise ValueError(f"faults must be one of {', '.join(FAULTS)}, not {self.faults!r}")
        if not self.max_duration > 0:
            raise ValueError(f"max_duration must be positive, not {self.max_duration!r}")
        if shutil.which("conntrack") is None:
            raise LabError("the network driver needs the conntrack tool (Debian package conntrack): each trace "
                           "starts with the load balancer's connection table emptied")

    def run(self, spec: Spec, trace: Trace, services: tuple[str, ...] | None = None) -> Recording:
        chosen = [s for s in spec.services if services is None or s.name in services]
        hosts = lab_backends(self.lab, chosen)
        self._bounded(trace)
        clients = client_addresses(trace, self.lab.addressing.family)
        for _ in range(CAPTURE_TRIES):
            recording, dropped = self._run_once(chosen, trace, hosts, clients)
            if not dropped:
                return recording
        raise CaptureLoss(f"the lab's captures lost packets in each of {CAPTURE_TRIES} plays of this trace "
                          f"({dropped} dropped by the kernel in the last): judged, the loss would be the load "
                          "balancer's")

    def _run_once(self, chosen: list[Service], trace: Trace, hosts: dict[tuple[str, str], str],
                  clients: list[str]) -> tuple[Recording, int | None]:
        with contextlib.ExitStack() as stack:
            if self.balancer is not None:
                self.lab.install(self.balancer)
                stack.callback(self._uninstall)
            self._forget_connections()
            self.lab.lb.run("conntrack", "-F")
            stack.enter_context(_ClientAddresses(self.lab, clients))
            faults = stack.enter_context(_Faults(self.lab, self.faults))
            directory = Path(tempfile.mkdtemp(prefix="lbspec-network-"))
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
            return self._play(chosen, trace, hosts, faults, directory)

    def _play(self, services: list[Service], trace: Trace, hosts: dict[tuple[str, str], str], faults: _Faults,
              directory: Path) -> tuple[Recording, int | None]:
        events = trace.events
        with self.lab.capture(directory) as capture:
            began = time.time()
            _start, done = _Replay(self.lab, self._plan(events)).run(
                lambda index: faults.inject(events[index], hosts[fault_owner(events[index], services)]))
            time.sleep(self.tail if self.tail is not None else _tail(services))
            ended = time.time()
        epoch = int(began)
        if self.keep_captures is not None:
            for path in (capture.client_side, capture.backend_side):
                shutil.copy(path, Path(self.keep_captures) / path.name)
        recording = Recording(epoch=epoch)
        recording.packets += read_ip_packets(capture.client_side, "client", epoch)
        recording.packets += read_ip_packets(capture.backend_side, "backend", epoch)
        recording.packets += _markers(began - epoch, ended - epoch)
        recording.faults += [Fault(when - epoch, f.backend, f.up, f.service) for when, f in faults.injected]
        recording.packets.sort(key=lambda p: p.time)
        self.last_flows = done
        return recording, capture.dropped

    def _forget_connections(self) -> None:
        """Abort the TCP connections the client and the backends have left from the traces before (a
        kernel without socket destruction keeps them: then this does nothing)."""
        hosts = [self.lab.client, *(h.namespace for h in self.lab.backends.values() if h.namespace is not None)]
        for namespace in hosts:
            namespace.run("ss", "-K", "-t", "-n", "state", "all", "exclude", "listening", check=False)

    def _plan(self, events: Iterable) -> dict:
        return {"events": [_planned(e, i) for i, e in enumerate(events)], "settle": self.settle,
                "linger": self.linger, "lead": 0.05}

    def _bounded(self, trace: Trace) -> None:
        if trace.duration <= self.max_duration:
            return
        from hypothesis.control import currently_in_test_context

        if currently_in_test_context():
            from hypothesis import reject

            reject()  # hypothesis draws another trace
        raise TraceTooLong(f"the trace lasts {trace.duration:.3f}s, longer than the network driver plays "
                           f"(max_duration={self.max_duration:g}s): shorten it, or raise max_duration")

    def _uninstall(self) -> None:
        if self.lab.balancer is self.balancer:
            self.balancer.remove(self.lab)
            self.lab.balancer = None


# ------------------------------------------------------------ the lab's spec --

def lab_backends(lab, services: list[Service]) -> dict[tuple[str, str], str]:
    """(service, backend) -> the lab's name for it; :class:`LabMismatch` unless the spec describes the lab."""
    by_address = {ipaddress.ip_address(h.address): h.name for h in lab.backends.values()}
    listed = ", ".join(f"{h.name} {h.address}" for h in lab.backends.values())
    found = {}
    for service in services:
        for vip in service.vips:
            if str(vip) != lab.vip:
                raise LabMismatch(f"service {service.name!r} has VIP {vip}, but the lab's VIP is {lab.vip}: "
                                  f"write the spec for the lab (vip {lab.vip})")
        for backend in service.backends:
            name = by_address.get(backend.address)
            if name is None:
                raise LabMismatch(f"service {service.name!r}: backend {backend.name} {backend.address} is not in "
                                  f"the lab (its backends: {listed}): write the spec with the lab's addresses")
            found[(service.name, backend.name)] = name
    return found


def client_addresses(trace: Trace, family: int = 4) -> list[str]:
    """The trace's client addresses, which the client namespace must own; LabMismatch for those it cannot
    (the lab's own, or of the other family than the lab's)."""
    found = sorted({e.segment.src for e in trace.sends}, key=lambda a: (a.version, a))
    for address in found:
        if address.version != family:
            raise LabMismatch(f"the trace sends from {address}, but the lab is IPv{family}: generate IPv{family} "
                              f"traffic (a spec whose VIPs are IPv{family}), or build the lab with family="
                              f"{address.version}")
        if any(address in network for network in _LAB_NETWORKS):
            raise LabMismatch(f"the trace sends from {address}, an address the lab uses itself "
                              f"({', '.join(map(str, _LAB_NETWORKS))}): use clients outside them")
    return [str(a) for a in found]


def _tail(services: list[Service]) -> float:
    return 2 * response_deadline(services)


# ------------------------------------------------------------- the set-up --

class _ClientAddresses:
    """The trace's client addresses on the client's interface, and a route back to each in the LB namespace."""

    def __init__(self, lab, addresses: list[str]):
        self.lab, self.addresses = lab, addresses
        self.device = ""

    def __enter__(self) -> _ClientAddresses:
        if self.addresses:
            client = self.lab.addressing.client
            self.device = _device_with(self.lab.client, client)
            try:
                _batch(self.lab.client, [f"address add {host_prefix(a)} dev {self.device}" for a in self.addresses])
                _batch(self.lab.lb, [f"route add {host_prefix(a)} via {client}" for a in self.addresses])
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self.addresses:
            _batch(self.lab.lb, [f"route del {host_prefix(a)}" for a in self.addresses], check=False)
            _batch(self.lab.client, [f"address del {host_prefix(a)} dev {self.device}" for a in self.addresses],
                   check=False)


def _device_with(namespace, address: str) -> str:
    for link in json.loads(namespace.ip("-j", "address", "show")):
        if any(a.get("local") == address for a in link.get("addr_info", [])):
            return link["ifname"]
    raise LabMismatch(f"no interface of {namespace.name} holds {address}")


def _batch(namespace, commands: list[str], check: bool = True) -> None:
    from lbspec.lab.netns import run

    run(["ip", "-n", namespace.name, "-force", "-batch", "-"], input="\n".join(commands) + "\n", check=check)


class _Faults:
    """Faults injected into the lab's backends as the trace plays; every one undone on exit."""

    def __init__(self, lab, how: str):
        self.lab, self.how = lab, how
        self.injected: list[tuple[float, Fault]] = []
        self.down: set[str] = set()

    def __enter__(self) -> _Faults:
        return self

    def inject(self, fault: Fault, host: str) -> None:
        if fault.up:
            (self.lab.restart_backend if self.how == "kill" else self.lab.unblock_backend)(host)
            self.down.discard(host)
        else:
            self.down.add(host)
            (self.lab.kill_backend if self.how == "kill" else self.lab.block_backend)(host)
        self.injected.append((time.time(), fault))  # when it took effect

    def __exit__(self, *exc) -> None:
        for host in sorted(self.down):
            (self.lab.restart_backend if self.how == "kill" else self.lab.unblock_backend)(host)
        self.down.clear()


# ------------------------------------------------------------- the replay --

def _planned(event, index: int) -> list:
    if isinstance(event, Fault):
        return [event.time, "fault", index]
    s: Segment = event.segment
    if s.proto == "tcp":
        return [event.time, "tcp", event.flow, str(s.src), s.sport, str(s.dst), s.dport, s.payload.hex(),
                sorted(s.flags)]
    if s.proto == "udp":
        return [event.time, "udp", event.flow, str(s.src), s.sport, str(s.dst), s.dport, s.payload.hex()]
    return [event.time, "raw", s.encode().hex(), str(s.dst)]


class _Replay:
    """``python -m lbspec.lab.replay`` in the client namespace, its fault requests served as they come."""

    def __init__(self, lab, plan: dict):
        self.lab, self.plan = lab, plan

    def run(self, inject) -> tuple[float, dict]:
        import subprocess

        from lbspec.lab.netns import LabError

        argv = self.lab.client.argv([sys.executable, "-m", "lbspec.lab.replay"])
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        self.lab.resources.processes.append(process)
        watchdog = threading.Timer(self._bound(), process.kill)  # the plan bounds the replay; this bounds a bug
        watchdog.start()
        try:
            process.stdin.write(json.dumps(self.plan))
            process.stdin.close()
            start, done = None, None
            for line in process.stdout:
                item = json.loads(line)
                if "start" in item:
                    start = item["start"]
                elif "fault" in item:
                    inject(item["fault"])
                elif "done" in item:
                    done = item["done"]
            process.wait(timeout=30)
            if start is None or done is None:
                raise LabError(f"the replay in the client namespace failed ({process.returncode}): "
                               f"{process.stderr.read().strip()[-2000:]}")
            return start, done
        finally:
            watchdog.cancel()
            self.lab.resources.stop(process)

    def _bound(self) -> float:
        last = self.plan["events"][-1][0] if self.plan["events"] else 0.0
        return last + self.plan["lead"] + self.plan["settle"] + self.plan["linger"] + 60.0


# ------------------------------------------------------------- the capture --

def read_ip_packets(path: str | Path, side: str, epoch: int) -> list[Observed]:
    """The IP packets of a capture file (its link layer taken off), timed from ``epoch``."""
    from lbspec.runtime.capture import CaptureReader

    found = []
    for frames in CaptureReader(path).batches():
        buf = frames.buf
        for offset, caplen, ts, linktype in zip(frames.offset.tolist(), frames.caplen.tolist(),
                                                frames.ts.tolist(), frames.linktype.tolist()):
            data = ip_of(bytes(buf[offset:offset + caplen]), linktype)
            if data is not None:
                found.append(Observed(ts - epoch, side, data))
    return found


_LINK_HEADERS = {1: 14, 113: 16, 276: 20, 101: 0, 12: 0, 228: 0, 229: 0}  # Ethernet, SLL, SLL2, raw IP
_VLANS = (0x8100, 0x88A8, 0x9100)


def ip_of(frame: bytes, linktype: int) -> bytes | None:
    """The IP packet in a frame (Ethernet with VLAN tags, Linux cooked, raw IP), trimmed to its length; else None."""
    start = _LINK_HEADERS.get(linktype)
    if start is None:
        return None
    if linktype == 1:
        while len(frame) >= start and struct.unpack_from("!H", frame, start - 2)[0] in _VLANS:
            start += 4
        if len(frame) < start or struct.unpack_from("!H", frame, start - 2)[0] not in (0x0800, 0x86DD):
            return None
    packet = frame[start:]
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return packet[:struct.unpack_from("!H", packet, 2)[0]]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return packet[:40 + struct.unpack_from("!H", packet, 4)[0]]
    return None


def _markers(first: float, last: float) -> list[Observed]:
    """The capture's span, shown as the in-process driver shows it: a marker datagram on each side."""
    source, target = MARKERS
    out = []
    for when, text in ((first, b"lbspec: capture starts"), (last, b"lbspec: capture ends")):
        data = Segment("udp", source, target, 9, 9, payload=text).encode()
        out += [Observed(when, side, data) for side in ("client", "backend")]
    return out
