"""The PROXY protocol (versions 1 and 2): the header a proxy sends its backend ahead of a client's bytes to
say whose connection it is -- HAProxy's ``send-proxy``, nginx's ``proxy_protocol on``.  The monitor reads it
as the LB's word, not as the client's bytes (see docs/monitor.md)."""

from __future__ import annotations

import ipaddress
import zlib

import numpy as np

from lbspec.runtime.compiled import address_parts
from lbspec.runtime.decode import Packets

__all__ = ["Ends", "proxy_header", "unframe_datagrams"]

_V2 = b"\r\n\r\n\x00\r\nQUIT\n"  # a version 2 header's signature


Ends = tuple[int, int, int, int, int, int]  # source hi, lo, port, destination hi, lo, port, as the decoder has them


def proxy_header(data: bytes) -> tuple[int, Ends | None] | None:
    """The PROXY protocol header (version 1 or 2) ``data`` starts with: its length and the connection it names
    (:data:`Ends`), or None where it names none (v1 ``UNKNOWN``, v2 ``LOCAL``: a health check's).  None if
    ``data`` does not start with a whole header: it is then the relayed bytes.  (HAProxy's ``send-proxy``,
    nginx's ``proxy_protocol on``; the LB writes the header in one piece ahead of the client's bytes.)"""
    if data.startswith(b"PROXY "):
        end = data.find(b"\r\n", 0, 107)  # a v1 header is at most 107 bytes
        words = data[6:end].split(b" ") if end > 0 else []
        if words[:1] == [b"UNKNOWN"]:
            return end + 2, None
        if len(words) != 5 or words[0] not in (b"TCP4", b"TCP6"):
            return None
        try:
            source, destination = (ipaddress.ip_address(w.decode("ascii")) for w in words[1:3])
            sport, dport = int(words[3]), int(words[4])
        except (ValueError, UnicodeDecodeError):
            return None
        if {source.version, destination.version} != {4 if words[0] == b"TCP4" else 6} or max(sport, dport) > 65535:
            return None
        return end + 2, (*address_parts(source), sport, *address_parts(destination), dport)
    if not data.startswith(_V2) or len(data) < 16 or data[12] >> 4 != 2:
        return None
    length = 16 + int.from_bytes(data[14:16], "big")
    if len(data) < length:
        return None
    command, family, body = data[12] & 0xF, data[13] >> 4, data[16:length]
    size = {1: 4, 2: 16}.get(family)
    if command == 0 or size is None or len(body) < 2 * size + 4:  # LOCAL, or not TCP/UDP over IP
        return length, None
    source, destination = ipaddress.ip_address(body[:size]), ipaddress.ip_address(body[size:2 * size])
    ports = body[2 * size:2 * size + 4]
    return length, (*address_parts(source), int.from_bytes(ports[:2], "big"),
                    *address_parts(destination), int.from_bytes(ports[2:], "big"))


def unframe_datagrams(p: Packets, rows: np.ndarray) -> None:
    """Datagrams of ``rows`` (UDP a proxy sent its backends) that start with a PROXY protocol header -- nginx
    puts one ahead of the first datagram of each client's session -- are described from after it: their
    payload offset and lengths, and its digest (the datagram pairs with the client's on it)."""
    rows = rows[p["pcap"][rows] >= 15]  # the shortest header: "PROXY UNKNOWN\r\n"
    for index in np.unique(p["buf"][rows]).tolist():
        mine = rows[p["buf"][rows] == index]
        buffer = p.buffers[index]
        first = np.frombuffer(buffer, np.uint8)[p["poff"][mine]]
        for row in mine[(first == ord("P")) | (first == ord("\r"))].tolist():
            start = int(p["poff"][row])
            data = bytes(buffer[start:start + int(p["pcap"][row])])
            found = proxy_header(data)
            if found is not None:
                length = found[0]
                p["poff"][row] += length
                p["pcap"][row] -= length
                p["plen"][row] -= length
                p["digest"][row] = zlib.crc32(data[length:])
