"""Traces: what the harness does to a load balancer, in time order.

A :class:`Trace` is a tuple of events: a client sending a packet
(:class:`Send`) or a backend failing or coming back (:class:`Fault`).  Times
are seconds from the start of the trace.  The strategies in
:mod:`lbspec.strategies` generate traces; drivers play them; failures print
them, one event per line::

    t=0.000s  flow 1  TCP 198.51.100.1:1024 -> 192.0.2.80:80 [SYN]
    t=0.001s  web1 fails
    t=2.502s  flow 1  TCP 198.51.100.1:1024 -> 192.0.2.80:80 [PSH,ACK] 7B
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Union

from lbspec.harness.wire import Segment

__all__ = ["Send", "Fault", "Event", "Trace"]


@dataclass(frozen=True, slots=True)
class Send:
    """A client sends ``segment`` at ``time``; ``flow`` numbers the connection, for people."""

    time: float
    segment: Segment
    flow: int = 0

    def describe(self) -> str:
        return f"t={self.time:.3f}s  flow {self.flow}  {self.segment}"


@dataclass(frozen=True, slots=True)
class Fault:
    """Backend ``backend`` (of ``service``, when names repeat) fails (``up=False``) or recovers at ``time``."""

    time: float
    backend: str
    up: bool
    service: str | None = None

    def describe(self) -> str:
        return f"t={self.time:.3f}s  {self.backend} {'recovers' if self.up else 'fails'}"


Event = Union[Send, Fault]


@dataclass(frozen=True, slots=True)
class Trace:
    """Events in time order."""

    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        times = [e.time for e in self.events]
        if times != sorted(times):
            raise ValueError("trace events must be in time order")

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)

    @property
    def sends(self) -> tuple[Send, ...]:
        return tuple(e for e in self.events if isinstance(e, Send))

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(e for e in self.events if isinstance(e, Fault))

    @property
    def flows(self) -> int:
        return len({e.flow for e in self.sends})

    @property
    def duration(self) -> float:
        return self.events[-1].time if self.events else 0.0

    def starting_at(self, start: float) -> Trace:
        """The same events, moved in time so that the first comes at ``start``."""
        shift = start - (self.events[0].time if self.events else start)
        return Trace(tuple(replace(e, time=round(e.time + shift, 6)) for e in self.events))

    def summary(self) -> str:
        """"5 events: 4 packets in 2 flows, 1 fault, over 2.503s"."""
        n, sends, faults = len(self), len(self.sends), len(self.faults)
        return (f"{n} event{'s' * (n != 1)}: {sends} packet{'s' * (sends != 1)} in {self.flows} "
                f"flow{'s' * (self.flows != 1)}, {faults} fault{'s' * (faults != 1)}, over {self.duration:.3f}s")

    def __str__(self) -> str:
        return "\n".join(e.describe() for e in self.events)
