"""Witness captures: a small pcap per verdict, with the packets involved and their neighbours.

Written with scapy.  Packets keep their link layer when they all share one;
otherwise scapy dissects each and the file holds their IP packets (raw IP
link type), so tshark opens every witness.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lbspec.runtime.verdicts import PacketRef, Witness

__all__ = ["write_witness", "witness_name"]

LINKTYPE_RAW = 101


def witness_name(serial: int, code: str, prop: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", prop).strip("_") or "verdict"
    return f"{serial:04d}-{code}-{safe}.pcap"


def write_witness(directory: str | os.PathLike, name: str, witness: Witness) -> str:
    """Write the witness as ``directory/name``; returns the path."""
    from scapy.utils import RawPcapWriter

    path = Path(directory) / name
    packets = [p for p in witness.packets if p.data]
    linktypes = {p.linktype for p in packets}
    same = len(linktypes) == 1
    linktype = linktypes.pop() if same else LINKTYPE_RAW
    writer = RawPcapWriter(str(path), linktype=linktype, sync=False)
    try:
        writer._write_header(None)
        for packet in sorted(packets, key=lambda p: p.time):
            data = packet.data if same else _ip_bytes(packet)
            if data:
                seconds = int(packet.time)
                writer.write_packet(data, sec=seconds, usec=int(round((packet.time - seconds) * 1e6)),
                                    caplen=len(data), wirelen=len(data))
    finally:
        writer.close()
    return str(path)


def _ip_bytes(packet: PacketRef) -> bytes:
    """The IP packet inside a frame, dissected by scapy."""
    from scapy.config import conf
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6

    layer = conf.l2types.num2layer.get(packet.linktype)
    if layer is None:
        return b""
    frame = layer(packet.data)
    for kind in (IP, IPv6):
        if kind in frame:
            return bytes(frame[kind])
    return b""
