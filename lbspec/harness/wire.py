"""IP packets as bytes and back: what the harness sends and what load balancers emit.

A :class:`Segment` is one IPv4 or IPv6 packet carrying TCP, UDP or ICMP (and,
for tunnel modes, the outer header it travels in).  :meth:`Segment.encode`
writes it with correct lengths and checksums; :func:`decode` reads one back.
Written with :mod:`struct` alone, so an in-process load balancer and the
harness share one small, dependency-free codec::

    syn = Segment("tcp", ip_address("198.51.100.1"), ip_address("192.0.2.80"), 1024, 80,
                  frozenset({"syn"}), seq=1000)
    data = syn.encode()
    assert decode(data) == syn

ICMP packets have no ports: an echo's identifier is ``ident`` and its
sequence number ``seq``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address

from lbspec.semantics.model import FLAGS, PORTED_PROTOCOLS, Address, Packet

__all__ = ["Segment", "Outer", "decode", "destination", "checksum", "PROTO_NUMBERS", "GUE_PORT"]

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}
GUE_PORT = 6080
_ICMP6 = 58
_ECHO_TYPES = {0, 8, 128, 129}
_IPV6_EXTENSIONS = {0, 43, 60}  # hop-by-hop, routing, destination options (fragments are not followed)
_ENCAP_PROTO = {4: 4, 6: 41}  # the IP protocol number of an IPv4 / IPv6 inner packet


@dataclass(frozen=True, slots=True)
class Outer:
    """The outer header of a tunnelled packet: ``kind`` is ipip, gre or gue."""

    kind: str
    src: Address
    dst: Address
    sport: int = 0  # gue only: the UDP ports of the outer datagram
    dport: int = GUE_PORT
    ttl: int = 64


@dataclass(frozen=True, slots=True)
class Segment:
    """One IP packet: addresses, the transport header's fields that matter, and the payload."""

    proto: str
    src: Address
    dst: Address
    sport: int = 0
    dport: int = 0
    flags: frozenset[str] = frozenset()
    seq: int = 0
    ack: int = 0
    payload: bytes = b""
    ttl: int = 64
    icmp_type: int = 8
    icmp_code: int = 0
    ident: int = 0
    outer: Outer | None = field(default=None, compare=True)

    @property
    def family(self) -> int:
        return self.src.version

    @property
    def packet(self) -> Packet:
        """The packet as the spec sees it (lbspec.semantics.model.Packet)."""
        ported = self.proto in PORTED_PROTOCOLS
        flags = self.flags if self.proto == "tcp" else frozenset()
        return Packet(self.proto, self.src, self.dst, self.sport if ported else 0, self.dport if ported else 0, flags)

    def __str__(self) -> str:
        text = str(self.packet)
        if self.proto == "icmp":
            text += f" type {self.icmp_type}" + (f" id {self.ident} seq {self.seq}" if self.icmp_type in _ECHO_TYPES
                                                  else f" code {self.icmp_code}")
        if self.payload:
            text += f" {len(self.payload)}B"
        if self.outer is not None:
            text = f"{self.outer.kind.upper()} {self.outer.src} -> {self.outer.dst} ({text})"
        return text

    def reply(self, **changes) -> Segment:
        """The segment going the other way (addresses and ports swapped), with ``changes``."""
        base = replace(self, src=self.dst, dst=self.src, sport=self.dport, dport=self.sport, outer=None)
        return replace(base, **changes)

    def encode(self) -> bytes:
        """The packet as bytes: the outer header (if any), then the IP header, transport header and payload."""
        inner = _ip(self.src, self.dst, _proto_number(self), self.ttl, _transport(self))
        if self.outer is None:
            return inner
        return _encapsulate(self.outer, inner, self.family)


# ----------------------------------------------------------------- encode --

def _proto_number(segment: Segment) -> int:
    if segment.proto == "icmp" and segment.family == 6:
        return _ICMP6
    return PROTO_NUMBERS[segment.proto]


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: Address, dst: Address, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


def _transport(s: Segment) -> bytes:
    proto = _proto_number(s)
    if s.proto == "tcp":
        bits = sum(1 << i for i, name in enumerate(FLAGS) if name in s.flags)
        header = struct.pack("!HHIIBBHHH", s.sport, s.dport, s.seq & 0xFFFFFFFF, s.ack & 0xFFFFFFFF,
                             5 << 4, bits, 65535, 0, 0)
        body = header + s.payload
        return body[:16] + struct.pack("!H", checksum(_pseudo(s.src, s.dst, proto, len(body)) + body)) + body[18:]
    if s.proto == "udp":
        body = struct.pack("!HHHH", s.sport, s.dport, 8 + len(s.payload), 0) + s.payload
        sum_ = checksum(_pseudo(s.src, s.dst, proto, len(body)) + body) or 0xFFFF
        return body[:6] + struct.pack("!H", sum_) + body[8:]
    rest = struct.pack("!HH", s.ident, s.seq & 0xFFFF) if s.icmp_type in _ECHO_TYPES else b"\0\0\0\0"
    body = struct.pack("!BBH", s.icmp_type, s.icmp_code, 0) + rest + s.payload
    covered = (_pseudo(s.src, s.dst, proto, len(body)) if proto == _ICMP6 else b"") + body
    return body[:2] + struct.pack("!H", checksum(covered)) + body[4:]


def _ip(src: Address, dst: Address, proto: int, ttl: int, body: bytes) -> bytes:
    if src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are of different address families")
    if src.version == 6:
        return struct.pack("!IHBB", 6 << 28, len(body), proto, ttl) + src.packed + dst.packed + body
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 0, 0x4000, ttl, proto, 0) + src.packed + dst.packed
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + body


def _encapsulate(outer: Outer, inner: bytes, family: int) -> bytes:
    if outer.kind == "ipip":
        return _ip(outer.src, outer.dst, _ENCAP_PROTO[family], outer.ttl, inner)
    if outer.kind == "gre":
        ethertype = 0x0800 if family == 4 else 0x86DD
        return _ip(outer.src, outer.dst, 47, outer.ttl, struct.pack("!HH", 0, ethertype) + inner)
    if outer.kind == "gue":
        gue = struct.pack("!BBH", 0, _ENCAP_PROTO[family], 0) + inner
        body = struct.pack("!HHHH", outer.sport, outer.dport, 8 + len(gue), 0) + gue
        return _ip(outer.src, outer.dst, 17, outer.ttl, body)
    raise ValueError(f"unknown tunnel kind {outer.kind!r}: expected ipip, gre or gue")


# ----------------------------------------------------------------- decode --

def destination(data: bytes) -> Address | None:
    """The (outer) destination address of an IP packet, or None if it is not one."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        return IPv4Address(data[16:20])
    if len(data) >= 40 and data[0] >> 4 == 6:
        return IPv6Address(data[24:40])
    return None


def decode(data: bytes, gue_ports: tuple[int, ...] = (GUE_PORT,)) -> Segment | None:
    """The segment in ``data`` (an IP packet, possibly tunnelled), or None if it cannot be read."""
    header = _header(bytes(data))
    if header is None:
        return None
    src, dst, proto, ttl, body = header
    if proto in (4, 41) or proto == 47 or (proto == 17 and len(body) >= 8 and
                                           struct.unpack_from("!H", body, 2)[0] in gue_ports):
        found = _tunnelled(src, dst, proto, ttl, body)
        if found is not None:
            return found  # else a datagram to the GUE port that holds no packet: plain UDP
    return _segment(src, dst, proto, ttl, body)


def _header(data: bytes) -> tuple[Address, Address, int, int, bytes] | None:
    version = data[0] >> 4 if data else 0
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 15) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        if ihl < 20 or total < ihl or len(data) < total:
            return None
        return IPv4Address(data[12:16]), IPv4Address(data[16:20]), data[9], data[8], data[ihl:total]
    if version == 6 and len(data) >= 40:
        length, proto, ttl = struct.unpack_from("!HBB", data, 4)
        body = data[40:40 + length]
        while proto in _IPV6_EXTENSIONS and len(body) >= 8:
            proto, skip = body[0], (body[1] + 1) * 8
            body = body[skip:]
        return IPv6Address(data[8:24]), IPv6Address(data[24:40]), proto, ttl, body
    return None


def _tunnelled(src: Address, dst: Address, proto: int, ttl: int, body: bytes) -> Segment | None:
    if proto in (4, 41):
        kind, inner, sport, dport = "ipip", body, 0, 0
    elif proto == 47:
        kind, inner, sport, dport = "gre", body[4:], 0, 0
    else:
        kind, inner = "gue", body[12:]
        sport, dport = struct.unpack_from("!HH", body)
    found = decode(inner, ())
    if found is None:
        return None
    return replace(found, outer=Outer(kind, src, dst, sport, dport, ttl))


def _segment(src: Address, dst: Address, proto: int, ttl: int, body: bytes) -> Segment | None:
    if proto == 6 and len(body) >= 20:
        sport, dport, seq, ack, offset, bits = struct.unpack_from("!HHIIBB", body)
        flags = frozenset(name for i, name in enumerate(FLAGS) if bits >> i & 1)
        return Segment("tcp", src, dst, sport, dport, flags, seq, ack, body[(offset >> 4) * 4:], ttl)
    if proto == 17 and len(body) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", body)
        return Segment("udp", src, dst, sport, dport, payload=body[8:length], ttl=ttl)
    if proto in (1, _ICMP6) and len(body) >= 8:
        kind, code = body[0], body[1]
        ident, seq = struct.unpack_from("!HH", body, 4) if kind in _ECHO_TYPES else (0, 0)
        return Segment("icmp", src, dst, ttl=ttl, icmp_type=kind, icmp_code=code, ident=ident, seq=seq,
                       payload=body[8:])
    return None

