"""Witnesses of `lbspec check` as captures: what a client sent and what the LB passed on.

Each packet step becomes an Ethernet frame from the client to the VIP; each
forward decision adds the frame the LB sends toward the backend, shaped by the
mode (rewritten for nat and snat, a new MAC for dsr, encapsulated for
tunnels, a new connection for proxy).  `lbspec monitor` and tshark read them.
"""

from __future__ import annotations

import hashlib
import struct

from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet as ScapyPacket, Raw
from scapy.utils import PcapWriter

from lbspec.runtime.witness import removed_if_cut
from lbspec.semantics import evaluate as ev
from lbspec.semantics.model import Packet, Service

__all__ = ["write_witness", "witness_frames"]

EPOCH = 1_700_000_000.0  # witness times are relative; captures need absolute ones
CLIENT_MAC, LB_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
_FLAGS = {"fin": "F", "syn": "S", "rst": "R", "psh": "P", "ack": "A", "urg": "U", "ece": "E", "cwr": "C"}


def _mac(name: str) -> str:
    digest = hashlib.blake2b(name.encode(), digest_size=5).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest)


def _ip(packet: Packet, src=None, dst=None) -> ScapyPacket:
    src, dst = str(src or packet.src), str(dst or packet.dst)
    return IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)


def _l4(packet: Packet, sport=None, dport=None) -> ScapyPacket:
    if packet.proto == "tcp":
        flags = "".join(_FLAGS[f] for f in sorted(packet.flags)) or ""
        return TCP(sport=sport or packet.sport, dport=dport or packet.dport, flags=flags, seq=1000)
    if packet.proto == "udp":
        return UDP(sport=sport or packet.sport, dport=dport or packet.dport)
    return ICMP(type=8)


def _inner(packet: Packet) -> ScapyPacket:
    return _ip(packet) / _l4(packet)


def _egress(service: Service, packet: Packet, forward: ev.Forward) -> ScapyPacket:
    backend = service.backend(forward.backend)
    sent = forward.packet
    mac = Ether(src=LB_MAC, dst=_mac(backend.name))
    kind, vip = service.mode.kind, packet.dst
    if kind == "dsr":
        return mac / _inner(packet)
    if kind == "tunnel":
        layer = IPv6 if backend.family == 6 else IP
        outer = layer(src=str(vip), dst=str(backend.address)) if vip.version == backend.family \
            else layer(dst=str(backend.address))
        encap = service.mode.encap
        if encap == "ipip":
            return mac / outer / _inner(packet)
        if encap == "gre":
            return mac / outer / GRE(proto=0x86DD if packet.family == 6 else 0x0800) / _inner(packet)
        gue = struct.pack("!BBH", 0, 41 if packet.family == 6 else 4, 0)  # GUE version 0, no options
        return mac / outer / UDP(sport=49152, dport=service.mode.encap_port or 6080) / Raw(gue) / _inner(packet)
    if kind in ("snat", "proxy"):
        sport = 50000 if packet.proto != "icmp" else None
        return mac / _ip(sent, src=vip, dst=sent.dst) / _l4(sent, sport=sport)
    return mac / _ip(sent) / _l4(sent)


def witness_frames(service: Service, steps) -> list[ScapyPacket]:
    frames = []
    for step in steps:
        if step.packet is None:
            continue
        frame = Ether(src=CLIENT_MAC, dst=LB_MAC) / _inner(step.packet)
        frame.time = EPOCH + step.time
        frames.append(frame)
        if isinstance(step.choice, ev.Forward):
            out = _egress(service, step.packet, step.choice)
            out.time = EPOCH + step.time + 0.0001
            frames.append(out)
    return frames


def write_witness(path: str, service: Service, witness) -> None:
    """Write ``witness`` (a lbspec.check.Witness) as a pcap at ``path``.  Raises OSError (a full disk...),
    leaving no file cut short behind."""
    frames = witness_frames(service, witness.steps)
    writer = PcapWriter(path)
    with removed_if_cut(path), writer:
        writer.write(frames)
