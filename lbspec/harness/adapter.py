"""How the harness talks to a load balancer under test.

Two protocols, one seam:

* :class:`LoadBalancer` is what an **in-process** load balancer implements: it
  takes one IP packet and the time and returns the IP packets it emits.  Two
  hooks are optional: :meth:`HealthAware.backend_health` (a backend really
  failed or recovered: what the LB's health checks would probe) and
  :meth:`Clocked.advance` (time passes with no packet: expire flows, run
  timers).  :class:`lbspec.harness.InProcess` plays traces against one,
  simulating the clients and the backends around it.
* :class:`Driver` is what the harness calls: it plays a :class:`Trace` against
  a load balancer, however it reaches it, and returns a :class:`Recording` --
  every packet that crossed each side of the LB, and the faults it injected.
  ``InProcess`` is a driver; a network driver (real LBs in network namespaces)
  is another: it sends the trace's packets from a client namespace, injects
  faults by stopping backends, and returns what the captures saw.  The harness
  judges either recording the same way, with the runtime monitor.

Times are seconds.  An in-process LB sees the trace's own clock (0 at the
start); a recording's packet times are ``epoch + time``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, Union, runtime_checkable

from lbspec.harness.trace import Fault, Trace
from lbspec.semantics.model import Spec

__all__ = ["LoadBalancer", "HealthAware", "Clocked", "Driver", "Observed", "Recording", "Emitted", "SIDES"]

SIDES = ("client", "backend")

# What an in-process LB may hand back: raw IP packets, or anything bytes() turns into one (a scapy IP packet).
Emitted = Union[bytes, bytearray, memoryview, object]


@runtime_checkable
class LoadBalancer(Protocol):
    """An in-process load balancer: packets in, packets out.

    ``handle`` gets every IP packet that reaches the LB -- from clients (to a
    VIP) and from backends (their replies, in modes where replies return
    through the LB) -- with the time it arrives, and returns the IP packets
    the LB sends because of it, toward backends or clients.  It returns them
    at once: they are stamped with the same time.  An empty result is a drop.
    """

    def handle(self, packet: bytes, time: float) -> Iterable[Emitted]:
        ...


@runtime_checkable
class HealthAware(Protocol):
    """Optional: the LB is told when a backend really fails (``up=False``) or recovers.

    This stands for what the LB's own health checks would probe: the LB
    decides when its checks notice (``lbspec.harness.HealthChecks`` models
    that from the spec's ``health`` settings).  It is not told when to mark
    the backend down; the spec's detection window bounds how late it may.
    """

    def backend_health(self, backend: str, up: bool, time: float) -> Iterable[Emitted] | None:
        ...


@runtime_checkable
class Clocked(Protocol):
    """Optional: time passes with no packet (called before each event, and once at the end)."""

    def advance(self, time: float) -> Iterable[Emitted] | None:
        ...


@dataclass(frozen=True, slots=True)
class Observed:
    """One IP packet seen on one side of the LB: ``side`` is "client" or "backend"."""

    time: float
    side: str
    data: bytes


@dataclass
class Recording:
    """Everything that crossed the LB while a trace played, and the faults injected.

    ``epoch`` (whole seconds) is added to every time when the recording is
    judged and written as a capture, so that captures carry plausible dates.
    """

    packets: list[Observed] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    epoch: int = 0

    def on(self, side: str) -> list[Observed]:
        return [p for p in self.packets if p.side == side]


@runtime_checkable
class Driver(Protocol):
    """Plays a trace against a load balancer and records both sides of it."""

    def run(self, spec: Spec, trace: Trace, services: tuple[str, ...] | None = None) -> Recording:
        ...
