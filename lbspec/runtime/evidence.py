"""Packets in words, and the witnesses verdicts carry."""

from __future__ import annotations

import numpy as np

from lbspec.runtime.classify import ROLE_NAMES
from lbspec.runtime.compiled import address_of
from lbspec.runtime.decode import ICMP, ICMP6, TCP, UDP, Packets
from lbspec.runtime.verdicts import PacketRef, Witness
from lbspec.semantics.model import FLAGS

__all__ = ["summary", "flow_text", "endpoint", "Sources", "witness_of"]

_TUNNELS = {1: "IP-in-IP", 2: "GRE", 3: "GUE"}
SIDE_NAMES = {0: "client", 1: "backend", -1: "combined"}


def endpoint(hi: int, lo: int, port: int | None) -> str:
    address = address_of(hi, lo)
    if port is None:
        return str(address)
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def flow_text(p: Packets, row: int) -> str:
    """``TCP 203.0.113.7:40000 -> 192.0.2.10:80``."""
    proto = int(p["proto"][row])
    name = {TCP: "TCP", UDP: "UDP", ICMP: "ICMP", ICMP6: "ICMPv6"}.get(proto, f"IP proto {proto}")
    ports = proto in (TCP, UDP)
    src = endpoint(int(p["sa_hi"][row]), int(p["sa_lo"][row]), int(p["sport"][row]) if ports else None)
    dst = endpoint(int(p["da_hi"][row]), int(p["da_lo"][row]), int(p["dport"][row]) if ports else None)
    return f"{name} {src} -> {dst}"


def summary(p: Packets, row: int) -> str:
    """A packet in one line, as tcpdump would say it (roughly)."""
    text = flow_text(p, row)
    proto = int(p["proto"][row])
    if proto == TCP:
        flags = int(p["flags"][row])
        names = ",".join(f.upper() for i, f in enumerate(FLAGS) if flags >> i & 1)
        text += f" [{names}] seq={int(p['seq'][row])} ack={int(p['ack'][row])}"
    elif proto in (ICMP, ICMP6) and int(p["icmp"][row]) >= 0:
        text += f" type={int(p['icmp'][row]) >> 8} code={int(p['icmp'][row]) & 255}"
    text += f" len={int(p['plen'][row])}"
    kind = int(p["tun"][row])
    if kind:
        outer = endpoint(int(p["os_hi"][row]), int(p["os_lo"][row]), None) + " -> " + \
            endpoint(int(p["od_hi"][row]), int(p["od_lo"][row]), None)
        text += f" (in {_TUNNELS[kind]} {outer})"
    return text


class Sources:
    """Names and sides of the captures (files or in-memory streams) rows come from."""

    def __init__(self):
        self.names: list[str] = []
        self.sides: list[int] = []

    def add(self, name: str, side: int) -> int:
        self.names.append(name)
        self.sides.append(side)
        return len(self.names) - 1


def packet_ref(p: Packets, row: int, sources: Sources, involved: bool) -> PacketRef:
    source = int(p["source"][row])
    role = int(p["role"][row]) if "role" in p else 0
    return PacketRef(sources.names[source] if source < len(sources.names) else f"source {source}",
                     int(p["frame"][row]), float(p["ts"][row]), SIDE_NAMES.get(int(p["side"][row]), "combined"),
                     ROLE_NAMES.get(role, "other"), summary(p, row), int(p["lt"][row]), p.frame_bytes(row), involved)


def witness_of(p: Packets, rows: list[int], sources: Sources, neighbours: int, keep_bytes: bool = True) -> Witness:
    """The packets ``rows`` of ``p`` and up to ``neighbours`` packets of the same flow around each."""
    chosen = dict.fromkeys(int(r) for r in rows)
    context: list[int] = []
    if neighbours and "ckey" in p and len(rows):
        keys = p["ckey"][np.asarray(rows)]
        same = np.nonzero(np.isin(p["ckey"], keys))[0]
        ts = p["ts"]
        for row in rows:
            near = same[np.argsort(np.abs(ts[same] - ts[row]), kind="stable")]
            context.extend(int(r) for r in near[:2 * neighbours + len(rows)] if int(r) not in chosen)
    context = sorted(dict.fromkeys(context), key=lambda r: (float(p["ts"][r]), r))[:2 * neighbours]
    refs = [packet_ref(p, r, sources, True) for r in chosen]
    refs += [packet_ref(p, r, sources, False) for r in context]
    if not keep_bytes:
        refs = [PacketRef(r.source, r.frame, r.time, r.side, r.role, r.summary, r.linktype, b"", r.involved)
                for r in refs]
    refs.sort(key=lambda r: (r.time, not r.involved))
    return Witness(refs)
