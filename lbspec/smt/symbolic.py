"""Symbolic packets and filters.

A packet is a handful of Z3 terms: the address family, 128-bit source and
destination (an IPv4 address lives in the low 32 bits, the rest zero),
protocol, 16-bit ports and 8-bit TCP flags.  ICMP packets have both ports 0
and no packet but TCP has flags, exactly as in :class:`lbspec.semantics.model.Packet`.
"""

from __future__ import annotations

import ipaddress

import z3

from lbspec.semantics.model import (
    FLAGS, PORTED_PROTOCOLS, Always, And, Filter, Network, Not, Or, Packet, PortRanges, Test,
)

__all__ = ["PROTO_CODES", "SymPacket", "filter_formula", "all_of", "any_of"]

PROTO_CODES = {"tcp": 0, "udp": 1, "icmp": 2}
PROTO_NAMES = {v: k for k, v in PROTO_CODES.items()}
FLAG_BITS = {name: 1 << i for i, name in enumerate(FLAGS)}


def _connect(maker, empty: bool, terms, ctx: z3.Context | None) -> z3.BoolRef:
    """And/Or straight through the C API.

    ``z3.And`` re-checks and coerces every argument, which costs more than
    solving these formulas; the terms here are always Booleans of one context.
    Terms drawn from a service's backends or rules can be none at all (a
    service with no pool, as the importers write for one without endpoints):
    with no term to take the context from, ``ctx`` gives true (And) or false (Or).
    """
    terms = list(terms)
    if len(terms) == 1:
        return terms[0]
    if not terms:
        if ctx is None:
            raise ValueError("all_of()/any_of() of no terms need ctx=")
        return z3.BoolVal(empty, ctx)
    ctx = terms[0].ctx
    array = (z3.Ast * len(terms))(*(t.as_ast() for t in terms))
    return z3.BoolRef(maker(ctx.ref(), len(terms), array), ctx)


def all_of(*terms: z3.BoolRef, ctx: z3.Context | None = None) -> z3.BoolRef:
    return _connect(z3.Z3_mk_and, True, terms, ctx)


def any_of(*terms: z3.BoolRef, ctx: z3.Context | None = None) -> z3.BoolRef:
    return _connect(z3.Z3_mk_or, False, terms, ctx)


class SymPacket:
    """One symbolic packet named ``name`` in a Z3 context."""

    def __init__(self, context: z3.Context, name: str):
        self.ctx = context
        self.name = name
        self.v6 = z3.Bool(f"{name}.v6", context)
        self.src = z3.BitVec(f"{name}.src", 128, context)
        self.dst = z3.BitVec(f"{name}.dst", 128, context)
        self.proto = z3.Int(f"{name}.proto", context)
        self.sport = z3.BitVec(f"{name}.sport", 16, context)
        self.dport = z3.BitVec(f"{name}.dport", 16, context)
        self.flags = z3.BitVec(f"{name}.flags", 8, context)

    def _bv(self, value: int, bits: int) -> z3.BitVecRef:
        return z3.BitVecVal(value, bits, self.ctx)

    def wellformed(self) -> z3.BoolRef:
        zero96 = self._bv(0, 96)
        return all_of(
            z3.Implies(z3.Not(self.v6), all_of(z3.Extract(127, 32, self.src) == zero96,
                                              z3.Extract(127, 32, self.dst) == zero96)),
            self.proto >= 0, self.proto <= 2,
            z3.Implies(self.proto == PROTO_CODES["icmp"],
                       all_of(self.sport == self._bv(0, 16), self.dport == self._bv(0, 16))),
            z3.Implies(self.proto != PROTO_CODES["tcp"], self.flags == self._bv(0, 8)),
        )

    # --- predicates
    def is_proto(self, name: str) -> z3.BoolRef:
        return self.proto == PROTO_CODES[name]

    def has_ports(self) -> z3.BoolRef:
        return self.proto != PROTO_CODES["icmp"]

    def family_is(self, version: int) -> z3.BoolRef:
        return self.v6 if version == 6 else z3.Not(self.v6)

    def address_is(self, field: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> z3.BoolRef:
        term = getattr(self, field)
        return all_of(self.family_is(address.version), term == self._bv(int(address), 128))

    def address_in(self, field: str, network: Network) -> z3.BoolRef:
        term = getattr(self, field)
        bits = network.max_prefixlen
        family = self.family_is(network.version)
        if network.prefixlen == 0:
            return family
        high = bits - 1
        low = bits - network.prefixlen
        value = int(network.network_address) >> low
        return all_of(family, z3.Extract(high, low, term) == self._bv(value, high - low + 1))

    def port_in(self, field: str, ranges: PortRanges) -> z3.BoolRef:
        term = getattr(self, field)
        parts = []
        for low, high in ranges:
            if low == high:
                parts.append(term == self._bv(low, 16))
            elif low == 0 and high == 65535:
                parts.append(z3.BoolVal(True, self.ctx))
            else:
                parts.append(all_of(z3.ULE(self._bv(low, 16), term), z3.ULE(term, self._bv(high, 16))))
        return any_of(*parts, ctx=self.ctx)

    def flags_set(self, names: tuple[str, ...]) -> z3.BoolRef:
        mask = sum(FLAG_BITS[n] for n in names)
        return all_of(self.is_proto("tcp"), self.flags & self._bv(mask, 8) == self._bv(mask, 8))

    def same_flow(self, other: SymPacket) -> z3.BoolRef:
        return all_of(self.v6 == other.v6, self.src == other.src, self.dst == other.dst,
                      self.proto == other.proto, self.sport == other.sport, self.dport == other.dport)

    def same_field(self, other: SymPacket, field: str) -> z3.BoolRef:
        if field in ("src", "dst"):
            return all_of(self.v6 == other.v6, getattr(self, field) == getattr(other, field))
        return getattr(self, field) == getattr(other, field)

    # --- concrete values
    def equals(self, packet: Packet) -> z3.BoolRef:
        """This symbolic packet is exactly ``packet``."""
        return all_of(self.family_is(packet.family), self.src == self._bv(int(packet.src), 128),
                      self.dst == self._bv(int(packet.dst), 128), self.proto == PROTO_CODES[packet.proto],
                      self.sport == self._bv(packet.sport, 16), self.dport == self._bv(packet.dport, 16),
                      self.flags == self._bv(sum(FLAG_BITS[f] for f in packet.flags), 8))

    def value(self, model: z3.ModelRef) -> Packet:
        def number(term) -> int:
            return model.eval(term, model_completion=True).as_long()

        v6 = z3.is_true(model.eval(self.v6, model_completion=True))
        make = ipaddress.IPv6Address if v6 else ipaddress.IPv4Address
        proto = PROTO_NAMES[number(self.proto)]
        flags = number(self.flags)
        ported = proto in PORTED_PROTOCOLS
        return Packet(proto, make(number(self.src)), make(number(self.dst)),
                      number(self.sport) if ported else 0, number(self.dport) if ported else 0,
                      frozenset(n for n, bit in FLAG_BITS.items() if flags & bit))


def filter_formula(filter_: Filter, packet: SymPacket) -> z3.BoolRef:
    """The meaning of a filter on a symbolic packet (see ``model.matches``)."""
    if isinstance(filter_, Always):
        return z3.BoolVal(filter_.value, packet.ctx)
    if isinstance(filter_, Not):
        return z3.Not(filter_formula(filter_.item, packet))
    if isinstance(filter_, And):
        return all_of(*(filter_formula(f, packet) for f in filter_.items))
    if isinstance(filter_, Or):
        return any_of(*(filter_formula(f, packet) for f in filter_.items))
    return _test(filter_, packet)


def _test(test: Test, packet: SymPacket) -> z3.BoolRef:
    name = test.field
    if name in ("src", "dst"):
        return any_of(*(packet.address_in(name, n) for n in test.values))
    if name in ("sport", "dport"):
        return all_of(packet.has_ports(), packet.port_in(name, test.values))
    if name == "proto":
        return any_of(*(packet.is_proto(p) for p in test.values))
    if name == "family":
        return any_of(*(packet.family_is(v) for v in test.values))
    if name == "flags":
        return packet.flags_set(tuple(test.values))
    raise ValueError(f"unknown filter field {name!r}")
