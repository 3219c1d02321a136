"""A small pcapng writer for tests: several interfaces, timestamp resolutions, direction flags, statistics.

scapy writes one interface; the reader must handle what tcpdump and dumpcap write.
"""

from __future__ import annotations

import struct


def _block(kind: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)


def section() -> bytes:
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def interface(linktype: int, resolution: int | None = None, name: str | None = None) -> bytes:
    options = b""
    if resolution is not None:
        options += _option(9, bytes([resolution]))
    if name:
        options += _option(2, name.encode())
    if options:
        options += _option(0, b"")
    return _block(1, struct.pack("<HHI", linktype, 0, 65535) + options)


def packet(iface: int, time: float, frame: bytes, units: float = 1e6, direction: int = 0,
           caplen: int | None = None) -> bytes:
    ticks = int(round(time * units))
    data = frame[:caplen] if caplen is not None else frame
    options = _option(2, struct.pack("<I", direction)) + _option(0, b"") if direction else b""
    return _block(6, struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(frame))
                  + data + b"\x00" * (-len(data) % 4) + options)


def simple(frame: bytes) -> bytes:
    return _block(3, struct.pack("<I", len(frame)) + frame)


def statistics(iface: int, dropped: int) -> bytes:
    return _block(5, struct.pack("<III", iface, 0, 0) + _option(5, struct.pack("<Q", dropped)) + _option(0, b""))
