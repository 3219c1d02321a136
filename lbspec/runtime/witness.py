"""Witness captures: a small pcap per verdict, with the packets involved and their neighbours.

Written with scapy.  Packets keep their link layer when they all share one;
otherwise scapy dissects each and the file holds their IP packets (raw IP
link type), so tshark opens every witness.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from lbspec.runtime.verdicts import PacketRef, Witness

__all__ = ["write_witness", "witness_name", "removed_if_cut"]

LINKTYPE_RAW = 101


def witness_name(serial: int, code: str, prop: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", prop).strip("_") or "verdict"
    return f"{serial:04d}-{code}-{safe}.pcap"


def write_witness(directory: str | os.PathLike, name: str, witness: Witness) -> str:
    """Write the witness as ``directory/name``; returns the path.  Raises OSError (a full disk...), leaving
    no file cut short behind."""
    from scapy.utils import RawPcapWriter

    path = Path(directory) / name
    packets = [p for p in witness.packets if p.data]
    linktypes = {p.linktype for p in packets}
    same = len(linktypes) == 1
    linktype = linktypes.pop() if same else LINKTYPE_RAW
    writer = RawPcapWriter(str(path), linktype=linktype, sync=False)
    with removed_if_cut(path):
        try:
            writer._write_header(None)
            for packet in sorted(packets, key=lambda p: p.time):
                data = packet.data if same else _ip_bytes(packet)
                if data:
                    seconds, micros = _pcap_time(packet.time)
                    writer.write_packet(data, sec=seconds, usec=micros, caplen=len(data), wirelen=len(data))
        finally:
            writer.close()
    return str(path)


@contextlib.contextmanager
def removed_if_cut(path: str | os.PathLike) -> Iterator[None]:
    """Remove ``path``, opened for writing, if writing it fails: a capture cut short would look like evidence
    of less."""
    try:
        yield
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def _pcap_time(time: float) -> tuple[int, int]:
    """Seconds and microseconds as a pcap record holds them: a time it cannot hold (before 1970, after
    2106 -- a capture's clock can say anything) becomes the nearest one it can."""
    if not math.isfinite(time):
        return 0, 0
    seconds, micros = divmod(round(time * 1e6), 1_000_000)
    if seconds < 0:
        return 0, 0
    return (seconds, micros) if seconds < 1 << 32 else ((1 << 32) - 1, 999_999)


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
