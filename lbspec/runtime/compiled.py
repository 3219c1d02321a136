"""A spec compiled for traffic: address tables, rule and filter predicates over packet columns.

The resolved model (:mod:`lbspec.semantics.model`) says what a service is;
this module turns it into what the monitor needs at speed: sorted tables of
64-bit address keys (VIPs, backends), and filters, listeners and rules as
functions from packet columns to boolean arrays.  ``matches``/``Rule.matches``
stay the reference; ``tests/runtime`` checks the two agree packet by packet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import numpy as np

from lbspec.runtime.decode import ICMP, ICMP6, TCP, UDP, V4_MAPPED
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m

__all__ = [
    "Compiled", "ServicePlan", "CheckPlan", "BackendRef", "Predicate", "compile_spec", "compile_filter",
    "address_parts", "akey", "address_of", "model_packet", "PROTO_NUMBERS", "PROTO_NAMES",
]

Columns = Mapping[str, np.ndarray]
Predicate = Callable[[Columns], np.ndarray]
PROTO_NUMBERS = {"tcp": (TCP,), "udp": (UDP,), "icmp": (ICMP, ICMP6)}
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMP6: "icmp"}
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SMALL_TABLE = 16  # addresses (VIPs and backends) up to which comparing each beats a binary search
_MASK64 = (1 << 64) - 1


def address_parts(address: m.Address) -> tuple[int, int]:
    """The (hi, lo) halves the decoder uses: IPv4 addresses are IPv4-mapped."""
    if isinstance(address, IPv4Address):
        return 0, V4_MAPPED | int(address)
    value = int(address)
    return value >> 64, value & _MASK64


def address_of(hi: int, lo: int) -> m.Address:
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return IPv4Address(lo & 0xFFFFFFFF)
    return IPv6Address((hi << 64) | lo)


def akey(hi, lo):
    """One 64-bit key per address (arrays or ints); IPv4 keys are the mapped low half itself."""
    if isinstance(hi, np.ndarray):
        return lo ^ (hi * _GOLDEN)
    return (lo ^ (hi * int(_GOLDEN))) & _MASK64


def model_packet(cols: Columns, row: int) -> m.Packet:
    """Row ``row`` as the spec's :class:`~lbspec.semantics.model.Packet`."""
    proto = PROTO_NAMES.get(int(cols["proto"][row]), "other")
    ported = proto in m.PORTED_PROTOCOLS
    flags = int(cols["flags"][row]) if proto == "tcp" else 0
    return m.Packet(proto, address_of(int(cols["sa_hi"][row]), int(cols["sa_lo"][row])),
                    address_of(int(cols["da_hi"][row]), int(cols["da_lo"][row])),
                    int(cols["sport"][row]) if ported else 0, int(cols["dport"][row]) if ported else 0,
                    frozenset(f for i, f in enumerate(m.FLAGS) if flags >> i & 1))


# ------------------------------------------------------------------ filters --

def compile_filter(filter_: m.Filter) -> Predicate:
    """A predicate over packet columns with exactly the meaning of ``model.matches``."""
    if isinstance(filter_, m.Always):
        value = filter_.value
        return lambda c: np.full(len(c["proto"]), value)
    if isinstance(filter_, m.Not):
        inner = compile_filter(filter_.item)
        return lambda c: ~inner(c)
    if isinstance(filter_, (m.And, m.Or)):
        parts = [compile_filter(f) for f in filter_.items]
        combine = np.logical_and if isinstance(filter_, m.And) else np.logical_or
        return lambda c: combine.reduce([p(c) for p in parts]) if len(parts) > 1 else parts[0](c)
    return _test(filter_)


def _test(test: m.Test) -> Predicate:
    name, values = test.field, test.values
    if name in ("src", "dst"):
        return _in_networks("sa" if name == "src" else "da", values)
    if name in ("sport", "dport"):
        return lambda c: _ported(c) & _in_ranges(c[name], values)
    if name == "proto":
        numbers = [n for v in values for n in PROTO_NUMBERS[v]]
        return lambda c: np.isin(c["proto"], numbers)
    if name == "family":
        return lambda c: np.isin(c["fam"], list(values))
    if name == "flags":
        mask = sum(1 << m.FLAGS.index(f) for f in values)
        return lambda c: (c["proto"] == TCP) & ((c["flags"] & mask) == mask)
    raise ValueError(f"unknown filter field {name!r}")


def _ported(c: Columns) -> np.ndarray:
    return (c["proto"] == TCP) | (c["proto"] == UDP)


def _in_ranges(ports: np.ndarray, ranges: m.PortRanges) -> np.ndarray:
    out = np.zeros(len(ports), bool)
    for low, high in ranges:
        out |= (ports >= low) & (ports <= high)
    return out


def _prefix(network) -> tuple[int, int, int]:
    """A network as a 128-bit (hi, lo, length) prefix in the decoder's address space."""
    hi, lo = address_parts(network.network_address)
    length = network.prefixlen + (96 if isinstance(network, IPv4Network) else 0)
    return hi, lo, length


def _in_networks(prefix: str, networks: tuple) -> Predicate:
    prefixes = [_prefix(n) for n in networks]

    def test(c: Columns) -> np.ndarray:
        hi, lo = c[prefix + "_hi"], c[prefix + "_lo"]
        out = np.zeros(len(hi), bool)
        for net_hi, net_lo, length in prefixes:
            out |= _under(hi, lo, net_hi, net_lo, length)
        return out
    return test


def _under(hi: np.ndarray, lo: np.ndarray, net_hi: int, net_lo: int, length: int) -> np.ndarray:
    if length == 0:
        return np.ones(len(hi), bool)
    if length <= 64:
        shift = np.uint64(64 - length)
        return (hi >> shift) == np.uint64(net_hi >> (64 - length))
    shift = np.uint64(128 - length)
    return (hi == np.uint64(net_hi)) & ((lo >> shift) == np.uint64(net_lo >> (128 - length)))


# ------------------------------------------------------------------- plans --

@dataclass(frozen=True)
class BackendRef:
    """A declared backend, numbered across the whole spec (``gid``)."""

    gid: int
    service: int
    backend: m.Backend

    @property
    def name(self) -> str:
        return self.backend.name


@dataclass
class CheckPlan:
    """One check of one service, as the monitor runs it."""

    index: int
    service: int
    check: m.Check
    kind: str  # response | down | undeclared | backends | twice | stick | balance | integrity | reverse
    scope: Predicate
    forbidden: frozenset[int] = frozenset()  # gids, for kind "backends"

    @property
    def name(self) -> str:
        return self.check.name

    @property
    def pattern(self) -> m.Pattern:
        return self.check.pattern


@dataclass
class ServicePlan:
    index: int
    service: m.Service
    vips: np.ndarray  # sorted address keys
    backends: list[BackendRef]
    listened: Predicate
    rules: list[tuple[m.Rule, Predicate]]
    checks: list[CheckPlan] = field(default_factory=list)
    # backends of other services that are one of this service's (the same address and port): a packet to that
    # server, found by address as the first of them, is this service's when its traffic is
    alias: dict[int, int] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.service.mode.kind

    def rule_index(self, c: Columns) -> np.ndarray:
        """The first matching rule per row (-1: none)."""
        out = np.full(len(c["proto"]), -1, np.int32)
        for index in range(len(self.rules) - 1, -1, -1):
            out[self.rules[index][1](c)] = index
        return out

    def of_kind(self, kind: str) -> list[CheckPlan]:
        return [p for p in self.checks if p.kind == kind]


class Compiled:
    """Everything the monitor needs from a spec, as tables."""

    def __init__(self, spec: m.Spec, services: list[m.Service] | None = None):
        self.spec = spec
        self.services: list[ServicePlan] = []
        self.backends: list[BackendRef] = []
        self._numbered = 0
        for index, service in enumerate(services if services is not None else spec.services):
            self.services.append(self._service(index, service))
        self.checks = [c for s in self.services for c in s.checks]
        self.vip_keys, self.vip_service = self._table([(akey(*address_parts(v)), s.index)
                                                       for s in self.services for v in s.service.vips])
        self.backend_keys, self.backend_gid = self._table([(akey(*address_parts(b.backend.address)), b.gid)
                                                           for b in self.backends])
        self.weights = np.array([b.backend.weight for b in self.backends], np.float64)
        self.address_table = self._addresses()
        self.shared_vips = self._shared_vips()
        self.shared = self._shared()
        self.twins = self._twins()
        self.gue_ports = sorted({s.service.mode.encap_port or 6080 for s in self.services
                                 if s.service.mode.encap == "gue"})  # none: UDP to 6080 is no tunnel then
        self.modes = sorted({s.mode for s in self.services})
        self.dsr = "dsr" in self.modes
        # by backend (and -1, none): its service; a proxy's, whose datagrams may carry a PROXY protocol header
        self.backend_service = np.array([b.service for b in self.backends] + [-1])
        self.proxied = np.array([self.services[b.service].mode == "proxy" for b in self.backends] + [False])
        self._eligible: dict[tuple, tuple[int, ...]] = {}

    def _service(self, index: int, service: m.Service) -> ServicePlan:
        refs = []
        for backend in service.backends:
            refs.append(BackendRef(len(self.backends), index, backend))
            self.backends.append(refs[-1])
        vips = np.array(sorted(akey(*address_parts(v)) for v in service.vips), np.uint64)
        plan = ServicePlan(index, service, vips, refs, _listened(service),
                           [(r, _rule(r)) for r in service.rules])
        for check in service.checks:
            plan.checks.append(self._check(self._numbered, index, check, refs))
            self._numbered += 1
        return plan

    def _check(self, number: int, service: int, check: m.Check, refs: list[BackendRef]) -> CheckPlan:
        kind = _kind(check.pattern)
        forbidden: frozenset[int] = frozenset()
        if kind == "backends":
            named = check.pattern.backends
            chosen = {r.gid for r in refs if (r.name in named) != check.pattern.complement}
            forbidden = frozenset(chosen)
        return CheckPlan(number, service, check, kind, compile_filter(check.scope), forbidden)

    @staticmethod
    def _table(items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        first: dict[int, int] = {}
        for key, value in items:
            first.setdefault(key, value)
        keys = np.array(sorted(first), np.uint64)
        return keys, np.array([first[k] for k in sorted(first)], np.int32)

    # ---------------------------------------------------------- lookups --

    def lookup(self, keys: np.ndarray, table: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The value for each key in a sorted table (-1 where absent)."""
        if not len(table):
            return np.full(len(keys), -1, np.int32)
        at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where(table[at] == keys, values[at], -1).astype(np.int32)

    def _addresses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """VIPs and backends in one sorted table that ends with the largest key (so every search lands in
        it): per entry, and one more for "none", the service whose VIP it is and the gid of the backend."""
        # not np.union1d: it makes numpy import numpy.ma (see decode.distinct)
        keys = np.array(sorted(set(self.vip_keys.tolist()) | set(self.backend_keys.tolist())), np.uint64)
        top = np.iinfo(np.uint64).max
        if not len(keys) or keys[-1] != top:
            keys = np.append(keys, np.uint64(top))
        vips = np.append(self.lookup(keys, self.vip_keys, self.vip_service), -1).astype(np.int32)
        gids = np.append(self.lookup(keys, self.backend_keys, self.backend_gid), -1).astype(np.int32)
        return keys, vips, gids

    def _shared_vips(self) -> dict[int, list[int]]:
        """VIPs more than one service has (each on its own protocols and ports): per address key, the services."""
        by_key: dict[int, list[int]] = {}
        for plan in self.services:
            for key in plan.vips.tolist():
                by_key.setdefault(key, []).append(plan.index)
        return {key: services for key, services in by_key.items() if len(services) > 1}

    def service_at(self, hi: np.ndarray, lo: np.ndarray, proto: np.ndarray, ports: np.ndarray,
                   services: np.ndarray) -> np.ndarray:
        """The service of each packet to (or, the address and ports being its source's, from) a VIP:
        ``services`` (the first service with that VIP, as :meth:`vip_of` says), except where services share
        the VIP -- there, the one that listens on the packet's protocol and port (the first, if none does)."""
        if not self.shared_vips or not len(hi):
            return services
        keys = akey(hi, lo)
        out = services.copy()
        for key, sharing in self.shared_vips.items():
            rows = np.nonzero(keys == np.uint64(key))[0]
            if not len(rows):
                continue
            chosen = out[rows]
            listening = {"proto": proto[rows], "dport": ports[rows], "da_hi": hi[rows], "da_lo": lo[rows]}
            for index in reversed(sharing):  # the first service that listens wins
                chosen[self.services[index].listened(listening)] = index
            out[rows] = chosen
        return out

    def _shared(self) -> dict[int, tuple[int, list[tuple[int, int]]]]:
        """Addresses that more than one backend has (one server behind several pools, services or ports): per
        address key, the gid for a port no backend there names (one that names none, else the first), and
        (port, gid) for each port one names -- the first backend with it."""
        by_key: dict[int, list[BackendRef]] = {}
        for ref in self.backends:
            by_key.setdefault(akey(*address_parts(ref.backend.address)), []).append(ref)
        shared = {}
        for key, refs in by_key.items():
            if len(refs) > 1:
                ports: dict[int, int] = {}
                for ref in refs:
                    if ref.backend.port is not None:
                        ports.setdefault(ref.backend.port, ref.gid)
                other = next((r.gid for r in refs if r.backend.port is None), refs[0].gid)
                shared[key] = (other, sorted(ports.items()))
        return shared

    def _twins(self) -> dict[int, tuple[int, ...]]:
        """For each backend declared more than once (the same address and port: one server, in several pools
        or services), the other gids; and each service's ``alias`` of the others' for its own."""
        servers: dict[tuple, list[BackendRef]] = {}
        for ref in self.backends:
            servers.setdefault((ref.backend.address, ref.backend.port), []).append(ref)
        twins = {}
        for refs in (refs for refs in servers.values() if len(refs) > 1):
            for ref in refs:
                twins[ref.gid] = tuple(r.gid for r in refs if r is not ref)
                alias = self.services[ref.service].alias
                for other in refs:
                    if other.service != ref.service:
                        alias.setdefault(other.gid, ref.gid)
        return twins

    def backend_at(self, keys: np.ndarray, ports: np.ndarray) -> np.ndarray:
        """The backend (gid, -1: none) at each address key and port on the backend's side."""
        return self.by_port(keys, ports, self.backend_of(keys))

    def by_port(self, keys: np.ndarray, ports: np.ndarray, gids: np.ndarray) -> np.ndarray:
        """``gids`` (backends found by address ``keys``) with each address several backends have told apart by
        the port on the backend's side (``ports``): the backend there that names that port, else one that
        names none (it takes the rule's or the packet's port)."""
        if not self.shared or not len(keys):
            return gids
        gids = gids.copy()
        for key, (other, named) in self.shared.items():
            here = keys == np.uint64(key)
            if here.any():
                gids[here] = other
                for port, gid in named:
                    gids[here & (ports == port)] = gid
        return gids

    def wants_macs(self, side: int) -> bool:
        """Does classifying a capture of ``side`` (-1: both sides) look at Ethernet addresses?"""
        return self.dsr or side == -1

    def address_of(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each address key: the service whose VIP it is and the gid of the backend it is (-1: none);
        what :meth:`vip_of` and :meth:`backend_of` say, with one search."""
        table, vips, gids = self.address_table
        if len(table) > SMALL_TABLE:
            at = np.searchsorted(table, keys)
            at[table[at] != keys] = len(table)
            return vips[at], gids[at]
        by_vip, by_backend = np.full(len(keys), -1, np.int32), np.full(len(keys), -1, np.int32)
        for key, vip, gid in zip(table.tolist(), vips.tolist(), gids.tolist()):  # a few addresses: compare
            hit = keys == key
            if vip >= 0:
                np.putmask(by_vip, hit, vip)
            if gid >= 0:
                np.putmask(by_backend, hit, gid)
        return by_vip, by_backend

    def vip_of(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys, self.vip_keys, self.vip_service)

    def backend_of(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys, self.backend_keys, self.backend_gid)

    def eligible(self, service: int, rule: int, family: int, up: frozenset[str]) -> tuple[int, ...]:
        """Backends (gids) the evaluator lets this rule's traffic use, given the backends seen up."""
        key = (service, rule, family, up)
        if key not in self._eligible:
            plan = self.services[service]
            probe = _probe_packet(family)
            names = ev.eligible(plan.service, plan.rules[rule][0], probe, up)
            gids = {r.name: r.gid for r in plan.backends}
            self._eligible[key] = tuple(gids[n] for n in names)
        return self._eligible[key]

    def candidates(self, service: int, rule: int) -> frozenset[int]:
        """Backends (gids) that ever serve this rule: its pool and its failover targets."""
        plan = self.services[service]
        names = ev.candidates(plan.service, plan.rules[rule][0] if rule >= 0 else None)
        return frozenset(r.gid for r in plan.backends if r.name in names)

    def ever_eligible(self, service: int, rule: int) -> frozenset[int]:
        """Backends (gids) the rule's traffic may go to under some health: the pool's primaries and
        the targets of its failovers (a backup outside any failover never takes traffic)."""
        plan = self.services[service]
        pool = plan.rules[rule][0].pool
        names = {b.name for b in plan.service.pool(pool).primaries}
        for failover in plan.service.failovers:
            if failover.source == pool and failover.to_pool:
                names.update(b.name for target in failover.targets for b in plan.service.pool(target).primaries)
            elif failover.source == pool:
                names.update(failover.targets)
        return frozenset(r.gid for r in plan.backends if r.name in names)

    def detection(self, service: int) -> tuple[float, float]:
        return ev.detection_bounds(self.services[service].service.health)


def _probe_packet(family: int) -> m.Packet:
    """A packet of the family: eligibility depends on nothing else about the packet."""
    address = ip_address("192.0.2.1") if family == 4 else ip_address("2001:db8::1")
    return m.Packet("tcp", address, address)


def _kind(pattern: m.Pattern) -> str:
    if isinstance(pattern, m.Response):
        return "response"
    if isinstance(pattern, m.Absence):
        return {"down": "down", "undeclared": "undeclared", "backends": "backends", "twice": "twice"}[pattern.event]
    return {m.Stickiness: "stick", m.Distribution: "balance", m.Integrity: "integrity",
            m.ReversePath: "reverse"}[type(pattern)]


def _listened(service: m.Service) -> Predicate:
    vips = np.array(sorted(akey(*address_parts(v)) for v in service.vips), np.uint64)
    listens = [(PROTO_NUMBERS[item.protocol], item.ports) for item in service.listens]

    def test(c: Columns) -> np.ndarray:
        to_vip = np.isin(akey(c["da_hi"], c["da_lo"]), vips)
        out = np.zeros(len(to_vip), bool)
        for numbers, ports in listens:
            hit = np.isin(c["proto"], numbers)
            if numbers[0] in (TCP, UDP):
                hit &= _in_ranges(c["dport"], ports)
            out |= hit
        return to_vip & out
    return test


def _rule(rule: m.Rule) -> Predicate:
    numbers = PROTO_NUMBERS[rule.protocol] if rule.protocol else None
    sources = _in_networks("sa", rule.sources) if rule.sources else None

    def test(c: Columns) -> np.ndarray:
        out = np.isin(c["proto"], numbers) if numbers else np.ones(len(c["proto"]), bool)
        if rule.ports:
            out &= _ported(c) & _in_ranges(c["dport"], rule.ports)
        if sources is not None:
            out &= sources(c)
        return out
    return test


def compile_spec(spec: m.Spec, services: list[str] | None = None) -> Compiled:
    chosen = None if services is None else [spec.service(n) for n in services]
    return Compiled(spec, chosen)

