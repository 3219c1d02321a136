"""The resolved model: a spec after names, units, defaults and addresses are settled.

This is what the static checker compiles to Z3 and what the runtime monitor
compiles to packet predicates.  Everything here is plain, immutable data:
addresses are :mod:`ipaddress` objects, durations are seconds, percentages are
fractions, and every name has been checked to exist.

Defaults, where the spec is silent (docs/language.md lists them too):

* ``mode nat``, ``balance round_robin``, ``affinity flow timeout 300s``
* ``health none`` (nothing detects a dead backend) -- unless ``health`` is given,
  whose omitted settings are ``every 2s timeout 1s fall 3 rise 2``
* no ``otherwise``: listened traffic that no rule takes is not accounted for
* ``weight 1``; no ``max_conn`` limit; backups only serve through ``failover``
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Union

from lbspec.diagnostics import Diagnostic
from lbspec.ir import NO_SPAN, Span

__all__ = [
    "Address", "Network", "PortRanges", "ALL_PORTS", "PROTOCOLS", "PORTED_PROTOCOLS", "FLAGS",
    "Always", "Test", "Not", "And", "Or", "Filter", "Response", "Absence", "Stickiness",
    "Distribution", "Integrity", "ReversePath", "Pattern", "PropertyDef", "Waiver", "Check",
    "Listen", "Backend", "Pool", "Rule", "Mode", "Balance", "Affinity", "Health", "Failover",
    "Capacity", "Service", "Spec", "Packet", "MODE_REWRITES",
]

Address = Union[IPv4Address, IPv6Address]
Network = Union[IPv4Network, IPv6Network]
PortRanges = tuple[tuple[int, int], ...]  # sorted, merged, inclusive

ALL_PORTS: PortRanges = ((0, 65535),)
PROTOCOLS = ("tcp", "udp", "icmp")
PORTED_PROTOCOLS = ("tcp", "udp")
FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")

# Header fields each mode rewrites on the way to a backend; `integrity`
# ("preserve headers") holds every other field to its ingress value.
MODE_REWRITES: dict[str, frozenset[str]] = {
    "nat": frozenset({"dst", "dport"}),
    "snat": frozenset({"src", "sport", "dst", "dport"}),
    "dsr": frozenset(),
    "tunnel": frozenset(),  # the inner packet is untouched; the outer header is new
    "proxy": frozenset({"src", "sport", "dst", "dport", "ttl"}),  # a new connection
}


def merge_ranges(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> PortRanges:
    """Sort and merge inclusive ranges: [(80, 80), (79, 81), (90, 91)] -> ((79, 81), (90, 91))."""
    merged: list[list[int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return tuple((low, high) for low, high in merged)


def in_ranges(port: int, ranges: PortRanges) -> bool:
    return any(low <= port <= high for low, high in ranges)


def meet_ranges(one: PortRanges, other: PortRanges) -> PortRanges:
    """The ports in both: ((80, 90),) and ((85, 100), (50, 60)) -> ((85, 90),)."""
    return tuple((max(low, low2), min(high, high2)) for low, high in one for low2, high2 in other
                 if max(low, low2) <= min(high, high2))


# ------------------------------------------------------------------ packets --

@dataclass(frozen=True, slots=True)
class Packet:
    """A packet as the spec sees it.  ICMP packets have no ports (both are 0)."""

    proto: str
    src: Address
    dst: Address
    sport: int = 0
    dport: int = 0
    flags: frozenset[str] = frozenset()

    @property
    def family(self) -> int:
        return self.src.version

    def __str__(self) -> str:
        if self.proto in PORTED_PROTOCOLS:
            def end(a: Address, p: int) -> str:
                return f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"
            text = f"{self.proto.upper()} {end(self.src, self.sport)} -> {end(self.dst, self.dport)}"
        else:
            text = f"{self.proto.upper()} {self.src} -> {self.dst}"
        return text + (f" [{','.join(f for f in FLAGS if f in self.flags).upper()}]" if self.flags else "")


# ------------------------------------------------------------------ filters --

@dataclass(frozen=True, slots=True)
class Always:
    """A filter that is constantly true (`any`) or false."""

    value: bool = True


@dataclass(frozen=True, slots=True)
class Test:
    """``field`` has one of ``values``.

    * src, dst: a tuple of networks (an address is a /32 or /128)
    * sport, dport: PortRanges; false for packets without ports (ICMP)
    * proto: protocol names; family: 4 and/or 6
    * flags: flag names that must *all* be set (false for non-TCP packets)
    """

    field: str
    values: tuple


@dataclass(frozen=True, slots=True)
class Not:
    """True where ``item`` is false."""

    item: Filter


@dataclass(frozen=True, slots=True)
class And:
    """True where every item is."""

    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """True where any item is."""

    items: tuple[Filter, ...]


Filter = Union[Always, Test, Not, And, Or]
ANY: Filter = Always(True)


def matches(filter_: Filter, packet: Packet) -> bool:
    """The reference meaning of a filter on one packet."""
    if isinstance(filter_, Always):
        return filter_.value
    if isinstance(filter_, Not):
        return not matches(filter_.item, packet)
    if isinstance(filter_, And):
        return all(matches(f, packet) for f in filter_.items)
    if isinstance(filter_, Or):
        return any(matches(f, packet) for f in filter_.items)
    return _test(filter_, packet)


def _test(test: Test, packet: Packet) -> bool:
    name = test.field
    if name in ("src", "dst"):
        address = getattr(packet, name)
        return any(address.version == n.version and address in n for n in test.values)
    if name in ("sport", "dport"):
        return packet.proto in PORTED_PROTOCOLS and in_ranges(getattr(packet, name), test.values)
    if name == "proto":
        return packet.proto in test.values
    if name == "family":
        return packet.family in test.values
    if name == "flags":
        return packet.proto == "tcp" and set(test.values) <= packet.flags
    raise ValueError(f"unknown filter field {name!r}")


def conjoin(*filters: Filter) -> Filter:
    """And of the filters, dropping constant-true parts."""
    parts = tuple(f for f in filters if f != ANY)
    if not parts:
        return ANY
    return parts[0] if len(parts) == 1 else And(parts)


# ----------------------------------------------------------------- patterns --

@dataclass(frozen=True, slots=True)
class Response:
    """Every listened packet in scope reaches a backend within ``within`` seconds."""

    scope: Filter
    within: float
    unless_no_backend: bool


@dataclass(frozen=True, slots=True)
class Absence:
    """Packets in scope are never forwarded to what ``event`` names.

    event: "down" (a backend known to be down; with ``after_detection``, only
    once the health check could have noticed), "undeclared" (a destination that
    is no declared backend), "backends" (the named backends -- or, with
    ``complement``, any backend *but* them), "twice" (the same packet twice).
    """

    scope: Filter
    event: str
    after_detection: bool = False
    backends: frozenset[str] = frozenset()
    complement: bool = False


@dataclass(frozen=True, slots=True)
class Stickiness:
    """Packets with the same key (``flow``: 5-tuple, ``client``: source address) share a backend."""

    key: str
    scope: Filter
    while_healthy: bool


@dataclass(frozen=True, slots=True)
class Distribution:
    """Each backend's share of ``unit`` stays within ``tolerance`` of its weight share."""

    unit: str
    scope: Filter
    tolerance: float


@dataclass(frozen=True, slots=True)
class Integrity:
    """The named fields reach the backend as the client sent them.

    ``headers`` stands for every header field the mode does not rewrite.
    """

    fields: frozenset[str]
    scope: Filter


@dataclass(frozen=True, slots=True)
class ReversePath:
    """Replies reach the client from the VIP and port it talked to."""

    scope: Filter


Pattern = Union[Response, Absence, Stickiness, Distribution, Integrity, ReversePath]
PATTERN_NAMES = {Response: "response", Absence: "absence", Stickiness: "stickiness",
                 Distribution: "distribution", Integrity: "integrity", ReversePath: "reverse path"}


@dataclass(frozen=True, slots=True)
class PropertyDef:
    """A named property: from the library (``monitors/``) or defined in a spec."""

    name: str
    title: str
    pattern: Pattern
    span: Span
    library: bool
    doc: str = ""  # the comment written above the definition
    definition: str = ""  # the pattern in canonical text


@dataclass(frozen=True, slots=True)
class Waiver:
    """`waive`: ``property`` does not hold the service where ``scope`` matches (None: anywhere)."""

    property: str
    reason: str
    scope: Filter | None
    span: Span


@dataclass(frozen=True, slots=True)
class Check:
    """A property one service is held to, as it applies there.

    ``scope`` already excludes what the service's waivers cover.  ``origin`` is
    "library" (implicit), "required" (a user property named by `require`) or
    "assert" (written in the service); ``span`` points at the definition or the
    assertion, ``source`` at the `require` that tightened or applied it.
    """

    name: str
    title: str
    pattern: Pattern
    origin: str
    span: Span
    source: Span | None = None
    waivers: tuple[Waiver, ...] = ()

    @property
    def scope(self) -> Filter:
        base = self.pattern.scope
        excluded = [Not(w.scope) for w in self.waivers if w.scope is not None]
        return conjoin(base, *excluded)


# ----------------------------------------------------------------- services --

@dataclass(frozen=True, slots=True)
class Listen:
    """One protocol the service listens on, and its ports."""

    protocol: str
    ports: PortRanges  # ALL_PORTS for icmp and for a protocol listed without ports
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend of ``pool``; ``port`` None: the rule's `port`, else the port the packet was sent to."""

    name: str
    pool: str
    address: Address
    port: int | None
    weight: int = 1
    backup: bool = False
    max_conn: int | None = None
    span: Span = field(default=NO_SPAN, compare=False)

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True, slots=True)
class Pool:
    """A named group of backends, primaries and backups in the order written."""

    name: str
    backends: tuple[Backend, ...]
    span: Span = field(default=NO_SPAN, compare=False)

    @property
    def primaries(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if not b.backup)

    @property
    def backups(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.backup)


@dataclass(frozen=True, slots=True)
class Rule:
    """``forward``: first match wins.  Empty ``ports``/``sources`` match any; protocol None is `any`."""

    index: int
    protocol: str | None
    ports: PortRanges
    sources: tuple[Network, ...]
    pool: str
    target_port: int | None
    span: Span = field(default=NO_SPAN, compare=False)

    def matches(self, packet: Packet) -> bool:
        if self.protocol is not None and packet.proto != self.protocol:
            return False
        if self.ports and not (packet.proto in PORTED_PROTOCOLS and in_ranges(packet.dport, self.ports)):
            return False
        return not self.sources or any(
            packet.src.version == n.version and packet.src in n for n in self.sources)

    def disjoint(self, other: Rule) -> bool:
        """Whether no packet can match both, read off what each says: their protocols, ports or sources have
        nothing in common.  False where that does not settle it (the solver decides those)."""
        if self.protocol is not None and other.protocol is not None and self.protocol != other.protocol:
            return True
        if self.ports and other.ports and not meet_ranges(self.ports, other.ports):
            return True
        return bool(self.sources and other.sources) and not any(
            a.version == b.version and a.overlaps(b) for a in self.sources for b in other.sources)


@dataclass(frozen=True, slots=True)
class Mode:
    """How the LB passes packets on: nat, snat, dsr, proxy, or tunnel with ``encap`` (and its UDP port)."""

    kind: str = "nat"
    encap: str | None = None
    encap_port: int | None = None
    span: Span | None = field(default=None, compare=False)

    @property
    def rewrites(self) -> frozenset[str]:
        return MODE_REWRITES[self.kind]


@dataclass(frozen=True, slots=True)
class Balance:
    """The algorithm that picks a backend, and the fields a hash reads."""

    algorithm: str = "round_robin"
    fields: tuple[str, ...] = ()
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Affinity:
    """What keeps its backend (a flow, a client, or nothing) and for how many idle seconds."""

    kind: str = "flow"
    timeout: float = 300.0
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Health:
    """The LB's health check: its kind, HTTP path, interval and timeout (seconds), fall and rise."""

    kind: str = "none"
    path: str | None = None  # http: the path it asks for; tcp: the bytes it sends first (None: none)
    every: float = 2.0
    timeout: float = 1.0
    fall: int = 3
    rise: int = 2
    span: Span | None = field(default=None, compare=False)

    @property
    def detection_time(self) -> float:
        """Worst-case seconds from a backend's death until the LB marks it down.

        The backend may die just after a passing check; ``fall`` checks then
        have to fail, the last one only after its ``timeout``.
        """
        if self.kind == "none":
            return math.inf
        return self.fall * self.every + self.timeout


@dataclass(frozen=True, slots=True)
class Failover:
    """When fewer than ``below`` primaries of ``source`` are healthy, ``targets`` take traffic.

    A target is a backup backend of ``source`` or another pool (``to_pool``).
    """

    source: str
    targets: tuple[str, ...]
    to_pool: bool
    below: int
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Capacity:
    """`capacity N conns [with K down]`: the connections the service must carry with ``down`` backends lost."""

    conns: int
    down: int = 0
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True, slots=True)
class Service:
    """One service, resolved: defaults filled in, durations in seconds, checks it is held to."""

    name: str
    vips: tuple[Address, ...]
    listens: tuple[Listen, ...]
    pools: tuple[Pool, ...]
    rules: tuple[Rule, ...]
    otherwise: str | None = None
    otherwise_span: Span | None = field(default=None, compare=False)
    mode: Mode = Mode()
    balance: Balance = Balance()
    affinity: Affinity = Affinity()
    health: Health = Health()
    failovers: tuple[Failover, ...] = ()
    capacity: Capacity | None = None
    checks: tuple[Check, ...] = ()
    waivers: tuple[Waiver, ...] = ()
    span: Span = field(default=NO_SPAN, compare=False)

    @property
    def backends(self) -> tuple[Backend, ...]:
        return tuple(b for p in self.pools for b in p.backends)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)

    @property
    def families(self) -> frozenset[int]:
        return frozenset(v.version for v in self.vips)

    def listens_to(self, packet: Packet) -> bool:
        """Is this packet listened traffic: to a VIP, on a listened protocol and port?"""
        if packet.dst not in self.vips:
            return False
        return any(packet.proto == listen.protocol and (
            packet.proto not in PORTED_PROTOCOLS or in_ranges(packet.dport, listen.ports))
            for listen in self.listens)


@dataclass(frozen=True, slots=True)
class Spec:
    """A loaded spec: its services, every property it can name, and its sources."""

    services: tuple[Service, ...]
    properties: tuple[PropertyDef, ...]
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    diagnostics: tuple[Diagnostic, ...] = field(default=(), compare=False)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def property(self, name: str) -> PropertyDef:
        return next(p for p in self.properties if p.name == name)

    def __repr__(self) -> str:
        # the sources are whole files: a traceback showing a Spec would print pages of them
        library = {p.span.file for p in self.properties if p.library}
        files = [f for f in self.sources if f not in library]
        return f"Spec(files={files!r}, services={[s.name for s in self.services]!r})"
