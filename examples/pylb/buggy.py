"""Six load balancers with one realistic bug each, and the verdict lbspec gives them.

Each overrides the one method of ``MaglevLB`` it gets wrong; the first line of
its docstring is the bug.  ``VARIANTS`` maps a short name to each class, and
``EXPECTED`` to the verdict code the harness fails it with.
"""

from __future__ import annotations

from dataclasses import replace

from lbspec.harness import Segment
from lbspec.semantics.model import Backend, Rule

from .lb import FlowKey, MaglevLB
from .maglev import stable_hash

__all__ = ["NoTracking", "ModuloHash", "StaleFlows", "TableFull", "IPv4OnlyReplies", "RewritesSourcePort",
           "VARIANTS", "EXPECTED"]


class NoTracking(MaglevLB):
    """Looks every packet up in the Maglev table and tracks no flows, so flows move when a backend changes."""

    def pinned(self, key, rule, segment, view, time) -> str | None:
        return None


class ModuloHash(MaglevLB):
    """Picks hash % (number of healthy backends) with no flow table, so most flows move when one backend changes."""

    def pinned(self, key, rule, segment, view, time) -> str | None:
        return None

    def maglev(self, eligible):
        slots = [name for name, weight in eligible for _ in range(weight)]
        return _Modulo(slots)


class _Modulo:
    def __init__(self, slots: list[str]):
        self.slots = slots

    def lookup(self, key_hash: int) -> str:
        return self.slots[key_hash % len(self.slots)]


class StaleFlows(MaglevLB):
    """Keeps sending a tracked flow to its backend after health checks mark it down, until the entry expires."""

    def pinned(self, key, rule, segment, view, time) -> str | None:
        return self.flows.get(key, time) if key is not None else None


class TableFull(MaglevLB):
    """Sizes its flow table to the spec's capacity and drops new flows when it is full instead of evicting."""

    def __init__(self, service, table_size: int | None = None):
        super().__init__(service, table_size or (service.capacity.conns if service.capacity else 1024))

    def can_track(self, key: FlowKey, time: float) -> bool:
        self.flows.expire(time)
        return key is None or not self.flows.full()


class IPv4OnlyReplies(MaglevLB):
    """Translates replies back to the VIP only for IPv4: IPv6 clients get answers from the backend's address."""

    def translate_reply(self, segment: Segment) -> list[Segment]:
        if segment.family == 6:
            return [replace(segment, ttl=segment.ttl - 1)]
        return super().translate_reply(segment)


class RewritesSourcePort(MaglevLB):
    """Gives every flow a new source port, as SNAT would, though the service is in NAT mode."""

    def to_backend(self, segment: Segment, rule: Rule, backend: Backend) -> Segment:
        if segment.proto in ("tcp", "udp"):
            port = 20000 + stable_hash(repr((segment.src, segment.sport)).encode()) % 40000
            self.ports[(segment.proto, segment.src, port)] = segment.sport
            segment = replace(segment, sport=port)
        return super().to_backend(segment, rule, backend)

    def translate_reply(self, segment: Segment) -> list[Segment]:
        found = super().translate_reply(segment)
        original = self.ports.get((segment.proto, segment.dst, segment.dport))
        return [replace(s, dport=original) for s in found] if original is not None else found

    @property
    def ports(self) -> dict:
        return self.__dict__.setdefault("_ports", {})


VARIANTS = {
    "no-tracking": NoTracking,
    "modulo-hash": ModuloHash,
    "stale-flows": StaleFlows,
    "table-full": TableFull,
    "ipv6-replies": IPv4OnlyReplies,
    "source-port": RewritesSourcePort,
}

# The verdict each variant is failed with: the code of the first violation on its minimal trace.
EXPECTED = {
    "no-tracking": "LB201",  # affinity break: a flow moves although its backend stayed healthy
    "modulo-hash": "LB201",
    "stale-flows": "LB202",  # forwarded to a backend down for longer than the detection window
    "table-full": "LB200",  # a listened packet never forwarded while backends were healthy
    "ipv6-replies": "LB207",  # a reply reached the client from the backend's address
    # The SYN leaves with another source port: the monitor cannot pair it with what the client sent, so it
    # is an egress no client packet explains (and a drop); data segments, paired by payload, get LB204.
    "source-port": "LB208",
}
