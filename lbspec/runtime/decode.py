"""Decoding frames in bulk: link layer, IP, tunnels and transport headers, as columns.

The common frame -- IPv4 without options carrying TCP or UDP, behind any link
header of fixed length -- is read from the first bytes of each frame, copied
into a small contiguous table by the reader (:func:`~lbspec.runtime.capture.rows_at`):
every field is then a strided view at a fixed position, with no gather over
the file.  Every other frame (VLAN tags, IPv6, options, tunnels, ICMP,
fragments, damage) takes the general path, where each header field is one
numpy gather over the buffer (big-endian strided views, so a 4-byte field is
one read) and each layer works on the rows that have it.  Both give the same
columns; tests hold them to it.  The result is a :class:`Packets` table: one
row per frame, one array per field.

Rows carry a ``status``: :data:`OK` (an IP packet with its transport header),
:data:`NOT_IP` (ARP and other link-layer traffic), :data:`UNDECODABLE` (with
the reason in ``why``) or :data:`FRAGMENT` (an IP fragment after the first,
which has no transport header: its payload is the IP payload, from ``poff``).
Nothing raises on bad bytes.  ``frag`` says where a fragment lies in its
datagram: its offset in bytes, times two, plus 1 if more fragments follow --
0 for a packet that is not fragmented, 1 for a first fragment; ``ipid`` is
the datagram's identification (IPv6: the fragment header's).

Addresses are 128-bit: ``*_hi`` and ``*_lo`` halves; IPv4 addresses are stored
IPv4-mapped (``::ffff:a.b.c.d``), so one comparison serves both families.
A tunnelled packet (IP-in-IP, GRE, GUE) is described by its *inner* header;
the outer one is kept in ``tun`` (the kind) and ``os_*``/``od_*``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from lbspec.runtime.capture import (
    HEAD, LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_LOOP,
    LINKTYPE_NULL, LINKTYPE_RAW, LINKTYPE_RAW_14, LINKTYPE_RAW_OPENBSD, Frames, field, rows_at,
)

__all__ = [
    "Packets", "decode", "distinct", "COLUMNS", "OK", "NOT_IP", "UNDECODABLE", "FRAGMENT", "ARP", "WHY",
    "TUN_NONE", "TUN_IPIP", "TUN_GRE", "TUN_GUE", "V4_MAPPED", "TCP", "UDP", "ICMP", "ICMP6",
]

OK, NOT_IP, UNDECODABLE, FRAGMENT, ARP = 0, 1, 2, 3, 4
TUN_NONE, TUN_IPIP, TUN_GRE, TUN_GUE = 0, 1, 2, 3
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
V4_MAPPED = 0xFFFF_0000_0000

WHY = {0: "", 1: "frame shorter than its link-layer header", 2: "unsupported link type",
       3: "IP header cut short", 4: "not IPv4 or IPv6", 5: "IPv4 header length below 20 bytes",
       6: "IP total length shorter than its headers", 7: "transport header cut short",
       8: "TCP header length below 20 bytes", 9: "tunnel header cut short", 10: "IPv6 extension header cut short"}
(_LINK_SHORT, _LINKTYPE, _IP_SHORT, _VERSION, _IHL, _LENGTH, _L4_SHORT, _DOFF, _TUNNEL, _EXT_SHORT) = range(1, 11)

COLUMNS: dict[str, str] = {
    "ts": "f8", "source": "i2", "frame": "i8", "side": "i1", "dirn": "i1", "iface": "i4", "status": "u1",
    "why": "u1",
    "fam": "u1", "proto": "u1", "sa_hi": "u8", "sa_lo": "u8", "da_hi": "u8", "da_lo": "u8",
    "sport": "i4", "dport": "i4", "flags": "u1", "seq": "u4", "ack": "u4", "ttl": "u1", "ipid": "u4",
    "icmp": "i4", "echo": "u4", "plen": "i4", "pcap": "i4", "poff": "i8", "frag": "i4",
    "tun": "u1", "os_hi": "u8", "os_lo": "u8", "od_hi": "u8", "od_lo": "u8", "mac_s": "u8", "mac_d": "u8",
    "roff": "i8", "rlen": "i4", "wlen": "i4", "lt": "u2", "buf": "i4", "digest": "u8",
}
_IPV6_EXT = np.array([0, 43, 44, 51, 60, 135, 139, 140])
_AH = 51
_IPV4_EXT = np.array([_AH])  # of IPv6's extension headers, the one IPv4 has
_VLAN = np.array([0x8100, 0x88A8, 0x9100])
_MAX_TAGS = 8  # VLAN tags read in a row; a frame with more is not IP to the monitor


class Packets:
    """A table of decoded packets: one numpy array per column of :data:`COLUMNS`.

    ``buffers`` hold the raw frames; row ``i`` is
    ``buffers[buf[i]][roff[i]:roff[i] + rlen[i]]`` and its transport payload
    starts at ``poff[i]`` in the same buffer.
    """

    __slots__ = ("cols", "buffers")

    def __init__(self, cols: dict[str, np.ndarray], buffers: list[bytes]):
        self.cols = cols
        self.buffers = buffers

    def __len__(self) -> int:
        return len(self.cols["ts"])

    def __getitem__(self, name: str) -> np.ndarray:
        column = self.cols[name]
        if type(column) is _Joined:
            column = self.cols[name] = column.array()
        return column

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.cols[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.cols

    @classmethod
    def empty(cls) -> Packets:
        return cls({k: np.zeros(0, v) for k, v in COLUMNS.items()}, [])

    def take(self, index: np.ndarray) -> Packets:
        ordered = len(index) < 2 or not (index[1:] < index[:-1]).any()
        splits: dict[tuple[int, ...], list] = {}  # unread columns of a joined table: copy only the rows taken
        return Packets({k: (v.take(index, splits) if type(v) is _Joined and ordered else self[k][index])
                        for k, v in self.cols.items()}, self.buffers)

    def row(self, index: int) -> Packets:
        """Row ``index`` as a table of its own: a copy, so that it keeps no other row's memory alive."""
        return Packets({k: self[k][index:index + 1].copy() for k in self.cols}, self.buffers)

    def slice(self, start: int, stop: int) -> Packets:
        """Rows ``start`` to ``stop`` as views (no copy)."""
        return Packets({k: self[k][start:stop] for k in self.cols}, self.buffers)

    def copy(self) -> Packets:
        return Packets({k: self[k].copy() for k in self.cols}, self.buffers)

    def own(self) -> Packets:
        """Put together the columns of a :meth:`joined` table not read yet: afterwards it refers to none
        of the tables it was joined from (whose memory may be reused)."""
        for name in self.cols:
            self[name]
        return self

    def frame_bytes(self, row: int) -> bytes:
        start = int(self["roff"][row])
        return bytes(self.buffers[int(self["buf"][row])][start:start + int(self["rlen"][row])])

    def payload(self, row: int) -> bytes:
        start = int(self["poff"][row])
        return bytes(self.buffers[int(self["buf"][row])][start:start + max(int(self["pcap"][row]), 0)])

    def compact(self) -> Packets:
        """Drop buffers no row refers to any more (so memory follows the rows kept)."""
        if not len(self):
            return Packets(self.cols, [])
        used, remap = np.unique(self["buf"], return_inverse=True)
        if len(used) == len(self.buffers):
            return self
        cols = dict(self.cols)
        cols["buf"] = remap.astype(np.int32)
        return Packets(cols, [self.buffers[i] for i in used.tolist()])

    @staticmethod
    def concat(tables: Sequence[Packets]) -> Packets:
        tables = [t for t in tables if len(t)]
        if not tables:
            return Packets.empty()
        if len(tables) == 1:
            return tables[0]
        buffers, shifted, names = _common(tables)
        cols = {k: np.concatenate([t[k] for t in tables]) for k in names if k != "buf"}
        cols["buf"] = np.concatenate(shifted)
        return Packets(cols, buffers)

    @staticmethod
    def joined(tables: Sequence[Packets]) -> Packets:
        """:meth:`concat`, but each column is put together (a copy) when it is first read: columns that
        are never read -- most of them, in most of the monitor's rounds -- are never copied."""
        tables = [t for t in tables if len(t)]
        if not tables:
            return Packets.empty()
        buffers, shifted, names = _common(tables)
        cols: dict = {k: _Joined([p for t in tables for p in _pieces(t.cols[k])]) for k in names if k != "buf"}
        cols["buf"] = _Joined(shifted)
        return Packets(cols, buffers)


class _Joined:
    """A column of :meth:`Packets.joined`: its pieces, one after another, until it is read."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def array(self) -> np.ndarray:
        return np.concatenate(self.parts)

    def take(self, index: np.ndarray, splits: dict[tuple[int, ...], list]) -> np.ndarray:
        """Rows ``index`` (in increasing order), copying those alone; ``splits`` keeps where the rows fall
        for columns cut into the same pieces."""
        lengths = tuple(len(p) for p in self.parts)
        pieces = splits.get(lengths)
        if pieces is None:
            ends = np.cumsum(lengths)
            starts = [0, *ends[:-1].tolist()]
            cuts = np.split(index, np.searchsorted(index, ends[:-1]).tolist())
            pieces = splits[lengths] = [(k, rows - starts[k]) for k, rows in enumerate(cuts) if len(rows)]
        if not pieces:
            return self.parts[0][:0].copy()
        return np.concatenate([self.parts[k][rows] for k, rows in pieces])


def _common(tables: Sequence[Packets]) -> tuple[list[bytes], list[np.ndarray], list[str]]:
    """What tables put one after another share: their buffers (each once: batches of a mapped file all
    hold the one mapping), each table's buffer numbers renumbered into that list, and the columns all of
    them have."""
    buffers: list[bytes] = []
    number: dict[int, int] = {}  # id of a buffer -> its place in buffers
    shifted = []
    for table in tables:
        places = []
        for buffer in table.buffers:
            if id(buffer) not in number:
                number[id(buffer)] = len(buffers)
                buffers.append(buffer)
            places.append(number[id(buffer)])
        shifted.append(np.array(places, np.int32)[table["buf"]] if places else table["buf"].astype(np.int32))
    return buffers, shifted, [k for k in tables[0].cols if all(k in t.cols for t in tables)]


def _pieces(column) -> list[np.ndarray]:
    return column.parts if type(column) is _Joined else [column]


class _Views:
    """Byte, 16-, 32- and 64-bit big-endian reads at any offsets of one buffer.

    Offsets past the end are clipped to the last full field: the value read is
    then wrong, but every field is checked against the frame's length anyway.
    """

    def __init__(self, buf):
        n = len(buf)
        if n < 8:
            buf = bytes(buf) + bytes(8 - n)
            n = 8
        self.u8 = np.frombuffer(buf, np.uint8)
        self.b16 = np.ndarray((n - 1,), ">u2", buf, 0, (1,))
        self.b32 = np.ndarray((n - 3,), ">u4", buf, 0, (1,))
        self.b64 = np.ndarray((n - 7,), ">u8", buf, 0, (1,))

    def byte(self, pos: np.ndarray) -> np.ndarray:
        return self.u8[np.minimum(pos, len(self.u8) - 1)]

    def be16(self, pos: np.ndarray) -> np.ndarray:
        return self.b16[np.minimum(pos, len(self.b16) - 1)].astype(np.int64)

    def be32(self, pos: np.ndarray) -> np.ndarray:
        return self.b32[np.minimum(pos, len(self.b32) - 1)].astype(np.uint64)

    def be64(self, pos: np.ndarray) -> np.ndarray:
        return self.b64[np.minimum(pos, len(self.b64) - 1)].astype(np.uint64)

    def mac(self, pos: np.ndarray) -> np.ndarray:
        return (self.be32(pos) << np.uint64(16)) | self.be16(pos + 4).astype(np.uint64)


def decode(frames: Frames, side: int = -1, gue_ports: Iterable[int] = (6080,), buf_index: int = 0,
           general: bool = False, macs: bool = True) -> Packets:
    """Decode a batch of frames.  ``side``: 0 client side, 1 backend side, -1 to infer.

    ``macs=False`` leaves the Ethernet addresses at 0 where the fast path decodes a frame (only dsr
    and captures of both sides look at them).

    Payload digests are left at 0: :func:`fill_digests` computes them for the
    rows that need one (reading every payload is the costliest step).
    ``general`` sends every frame down the general path (tests compare the two).
    """
    n = len(frames)
    given = dict(ts=frames.ts.astype(np.float64), source=np.full(n, frames.source, np.int16), frame=frames.frame,
                 side=np.full(n, side, np.int8), dirn=frames.direction.astype(np.int8), roff=frames.offset,
                 rlen=frames.caplen, wlen=frames.wirelen, lt=frames.linktype, buf=np.full(n, buf_index, np.int32),
                 icmp=np.full(n, -1, np.int32))
    cols = {k: given[k] if k in given else np.zeros(n, v) for k, v in COLUMNS.items()}
    if frames.iface is not None:
        cols["iface"] = frames.iface.astype(np.int32)
    if n == 0:
        return Packets(cols, [frames.buf])
    ports = np.asarray(list(gue_ports), np.int64)
    rest = np.arange(n) if general else _Fast(frames, cols, ports, macs).run()
    if len(rest):
        _general(frames, cols, ports, rest)
    return Packets(cols, [frames.buf])


def _general(frames: Frames, cols: dict[str, np.ndarray], ports: np.ndarray, rows: np.ndarray) -> None:
    """The general decoder, on ``rows`` (all of them, or those the fast path left)."""
    end = frames.offset + frames.caplen
    if len(rows) == len(end):
        _Decoder(frames.buf, cols, end, ports).run()
        return
    part = {k: v[rows] for k, v in cols.items()}
    _Decoder(frames.buf, part, end[rows], ports).run()
    for k, v in part.items():
        cols[k][rows] = v


# The link types read, by the bytes of link header before IP (each group read alike; see _Decoder.link).
_LINK_GROUPS = (((LINKTYPE_ETHERNET,), 14), ((LINKTYPE_LINUX_SLL,), 16), ((LINKTYPE_LINUX_SLL2,), 20),
                ((LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6), 0),
                ((LINKTYPE_NULL, LINKTYPE_LOOP), 4))
_LINK_HEADERS = {kind: header for kinds, header in _LINK_GROUPS for kind in kinds}


class _Fast:
    """IPv4 without options, carrying TCP or UDP (no tunnel, no later fragment), behind a fixed link header.

    Fields are read at fixed positions of each frame's first :data:`HEAD` bytes.  Rows that are anything
    else, or that any check of the general path would stop, are handed back for the general path.
    """

    def __init__(self, frames: Frames, cols: dict[str, np.ndarray], gue_ports: np.ndarray, macs: bool = True):
        self.frames, self.c, self.gue_ports, self.macs = frames, cols, gue_ports, macs

    def run(self) -> np.ndarray:
        """Decode what fits; return the rows left for the general path."""
        lt = self.frames.linktype
        kinds = distinct(lt)
        done = np.zeros(len(lt), bool)
        for kind in kinds:
            if kind not in _LINK_HEADERS:
                continue
            rows = None if len(kinds) == 1 else np.nonzero(lt == kind)[0]
            head = self._head(rows)
            taken = self._link(kind, head, rows)
            if rows is None:
                done = taken
            else:
                done[rows[taken]] = True
        return np.nonzero(~done)[0]

    def _head(self, rows: np.ndarray | None) -> np.ndarray:
        frames = self.frames
        if frames.head is not None:
            return frames.head if rows is None else frames.head[rows]
        offsets = frames.offset if rows is None else frames.offset[rows]
        return rows_at(frames.buf, offsets, HEAD)

    def _link(self, kind: int, head: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """Decode the rows of one link type; returns which of them were decoded."""
        l3 = _LINK_HEADERS[kind]
        frames = self.frames
        caplen = frames.caplen if rows is None else frames.caplen[rows]
        if kind == LINKTYPE_ETHERNET:
            ipv4 = field(head, 12, 2) == 0x0800
        elif kind == LINKTYPE_LINUX_SLL:
            ipv4 = field(head, 14, 2) == 0x0800
        elif kind == LINKTYPE_LINUX_SLL2:
            ipv4 = field(head, 0, 2) == 0x0800
        else:
            ipv4 = np.ones(len(head), bool)  # the version nibble says, below
        ok = ipv4 & (head[:, l3] == 0x45) & (caplen >= l3 + 28)
        proto = head[:, l3 + 9]
        total = field(head, l3 + 2, 2).astype(np.int64)
        ok &= ((field(head, l3 + 6, 2) & 0x1FFF) == 0) & ((total == 0) | (total >= 20))
        tcp, udp = proto == TCP, proto == UDP
        ok &= tcp | udp
        dport = field(head, l3 + 22, 2).astype(np.int32)
        for port in self.gue_ports.tolist():  # GUE is for the general path
            ok &= ~(udp & (dport == port))
        doff = (head[:, l3 + 32] >> 4).astype(np.int64) * 4
        ok &= ~tcp | ((caplen >= l3 + 40) & (doff >= 20))
        start = l3 + 20 + np.where(tcp, doff, 8)  # payload, from the frame's start
        ip_end = np.where(total == 0, caplen, l3 + total)
        if udp.any():  # a datagram shorter than its IP packet ends where UDP's length says (see _transport)
            datagram = l3 + 20 + field(head, l3 + 24, 2).astype(np.int64)
            ip_end = np.where(udp & (datagram >= start) & (datagram < ip_end), datagram, ip_end)
        ok &= ip_end >= start
        if not ok.all():
            picked = np.nonzero(ok)[0]
            head, caplen, tcp, total, dport, start, ip_end = (x[picked] for x in (head, caplen, tcp, total, dport,
                                                                                  start, ip_end))
            rows = picked if rows is None else rows[picked]
        self._store(kind, head, rows, l3, caplen, tcp, dport, start, ip_end)
        return ok

    def _store(self, kind, head, rows, l3, caplen, tcp, dport, start, ip_end) -> None:
        put = self._putter(rows)
        offset = self.frames.offset if rows is None else self.frames.offset[rows]
        mapped = np.uint64(V4_MAPPED)
        put("fam", 4)
        put("ipid", field(head, l3 + 4, 2))
        put("frag", (head[:, l3 + 6] >> 5) & 1)  # offset 0 here: a first fragment if more follow
        put("ttl", head[:, l3 + 8])
        put("proto", head[:, l3 + 9])
        put("sa_lo", field(head, l3 + 12, 4).astype(np.uint64) | mapped)
        put("da_lo", field(head, l3 + 16, 4).astype(np.uint64) | mapped)
        put("sport", field(head, l3 + 20, 2))
        put("dport", dport)
        zero = np.zeros(len(head), np.uint32)
        put("seq", np.where(tcp, field(head, l3 + 24, 4), zero))
        put("ack", np.where(tcp, field(head, l3 + 28, 4), zero))
        put("flags", np.where(tcp, head[:, l3 + 33], 0))
        put("poff", offset + start)
        put("plen", ip_end - start)
        put("pcap", np.maximum(np.minimum(ip_end, caplen) - start, 0))
        if kind == LINKTYPE_ETHERNET and self.macs:
            put("mac_d", (field(head, 0, 4).astype(np.uint64) << np.uint64(16)) | field(head, 4, 2))
            put("mac_s", (field(head, 6, 4).astype(np.uint64) << np.uint64(16)) | field(head, 10, 2))
        elif kind == LINKTYPE_LINUX_SLL:
            put("dirn", np.where(field(head, 0, 2) == 4, 2, 1))
        elif kind == LINKTYPE_LINUX_SLL2:
            put("dirn", np.where(head[:, 10] == 4, 2, 1))
            put("iface", field(head, 4, 4))

    def _putter(self, rows: np.ndarray | None):
        cols = self.c

        def put(name: str, values) -> None:
            if rows is None:
                cols[name][:] = values
            else:
                cols[name][rows] = values
        return put


def distinct(values: np.ndarray) -> list[int]:
    """The values, sorted, each once (at once when they are all the same, as is usual).

    Not ``np.unique(values)``: numpy 2 imports ``numpy.ma`` for that form, a sixtieth of a second of
    start-up that no monitor run needs otherwise."""
    if not len(values):
        return []
    if (values == values[0]).all():
        return [values[0].item()]
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]].tolist()


def fill_digests(p: Packets, rows: np.ndarray) -> None:
    """Set ``digest`` to the CRC-32 of the captured payload of ``rows`` (C speed; Python only steps).
    Rows that have one already keep it: a capture of both sides digests some rows twice over otherwise."""
    rows = rows[(p["pcap"][rows] > 0) & (p["status"][rows] == OK) & (p["digest"][rows] == 0)]
    if not len(rows):
        return
    crc = zlib.crc32
    for index in distinct(p["buf"][rows]) if len(p.buffers) > 1 else [0]:
        mine = rows[p["buf"][rows] == index] if len(p.buffers) > 1 else rows
        view = memoryview(p.buffers[index])
        starts = p["poff"][mine].tolist()
        ends = (p["poff"][mine] + p["pcap"][mine]).tolist()
        p["digest"][mine] = [crc(view[a:b]) for a, b in zip(starts, ends)]


class _Decoder:
    def __init__(self, buf: bytes, cols: dict[str, np.ndarray], end: np.ndarray, gue_ports: np.ndarray):
        self.v = _Views(buf)
        self.c = cols
        self.end = end
        self.gue_ports = gue_ports

    def fail(self, rows: np.ndarray, why: int) -> None:
        self.c["status"][rows] = UNDECODABLE
        self.c["why"][rows] = why

    def run(self) -> None:
        l3, etype = self.link()
        arp = np.nonzero(etype == 0x0806)[0]
        if len(arp):
            self.arp(arp, l3[arp])
        ip = np.nonzero((etype == 0x0800) | (etype == 0x86DD))[0]
        other = (etype != 0x0800) & (etype != 0x86DD) & (etype != 0x0806) & (self.c["status"] == OK)
        self.c["status"][other] = NOT_IP
        if len(ip):
            self.network(ip, l3[ip], etype[ip])
            self.tunnels(ip)

    # ------------------------------------------------------------ link --

    def link(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the IP header starts, and its ethertype (0 where there is none)."""
        c, v = self.c, self.v
        n = len(c["ts"])
        l3 = np.zeros(n, np.int64)
        etype = np.zeros(n, np.int64)
        lt = c["lt"]
        off = c["roff"]
        for kinds, header in _LINK_GROUPS:
            rows = np.nonzero(np.isin(lt, kinds, kind="table"))[0]
            if not len(rows):
                continue
            o = off[rows]
            l3[rows] = o + header
            etype[rows] = self._ethertype(kinds[0], rows, o)
        known = np.isin(lt, list(_LINK_HEADERS), kind="table")
        self.fail(np.nonzero(~known)[0], _LINKTYPE)
        typed = np.nonzero(np.isin(lt, [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2], kind="table"))[0]
        if len(typed):  # a cooked header names the ethertype too, and VLAN tags may follow it
            l3[typed], etype[typed] = self._vlans(l3[typed], etype[typed])
        short = known & (l3 > self.end)
        self.fail(np.nonzero(short)[0], _LINK_SHORT)
        etype[~known | short] = 0
        raw = np.nonzero(known & ~short & (etype == -1))[0]
        if len(raw):
            nibble = v.byte(l3[raw]) >> 4
            etype[raw] = np.where(nibble == 4, 0x0800, np.where(nibble == 6, 0x86DD, 0))
            bad = raw[(nibble != 4) & (nibble != 6)]
            self.fail(bad, _VERSION)
        return l3, etype

    def _ethertype(self, kind: int, rows: np.ndarray, o: np.ndarray) -> np.ndarray:
        c, v = self.c, self.v
        if kind == LINKTYPE_ETHERNET:
            c["mac_d"][rows] = v.mac(o)
            c["mac_s"][rows] = v.mac(o + 6)
            return v.be16(o + 12)
        if kind == LINKTYPE_LINUX_SLL:
            c["dirn"][rows] = np.where(v.be16(o) == 4, 2, 1)
            return v.be16(o + 14)
        if kind == LINKTYPE_LINUX_SLL2:
            c["dirn"][rows] = np.where(v.byte(o + 10) == 4, 2, 1)
            c["iface"][rows] = v.be32(o + 4).astype(np.int64)
            return v.be16(o)
        return np.full(len(rows), -1, np.int64)  # raw IP and loopback: the version nibble says

    def _vlans(self, l3: np.ndarray, etype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(_MAX_TAGS):  # 802.1Q, 802.1ad (QinQ) outside it, and stacks deeper still
            tagged = np.isin(etype, _VLAN, kind="table")
            if not tagged.any():
                break
            etype[tagged] = self.v.be16(l3[tagged] + 2)
            l3[tagged] += 4
        return l3, etype

    def arp(self, rows: np.ndarray, l3: np.ndarray) -> None:
        c, v = self.c, self.v
        c["status"][rows] = NOT_IP
        good = (l3 + 28 <= self.end[rows]) & (v.be16(l3 + 2) == 0x0800) & (v.byte(l3 + 4) == 6)
        rows, l3 = rows[good], l3[good]
        c["status"][rows] = ARP
        c["mac_s"][rows] = v.mac(l3 + 8)
        c["sa_lo"][rows] = v.be32(l3 + 14) | np.uint64(V4_MAPPED)
        c["mac_d"][rows] = v.mac(l3 + 18)
        c["da_lo"][rows] = v.be32(l3 + 24) | np.uint64(V4_MAPPED)
        c["fam"][rows] = 4

    # --------------------------------------------------------- network --

    def network(self, rows: np.ndarray, l3: np.ndarray, etype: np.ndarray) -> None:
        """IPv4 or IPv6, then the transport header, for these rows."""
        four = etype == 0x0800
        if four.any():
            self._ipv4(rows[four], l3[four])
        if (~four).any():
            self._ipv6(rows[~four], l3[~four])

    def _ipv4(self, rows: np.ndarray, l3: np.ndarray) -> None:
        c, v = self.c, self.v
        end = self.end[rows]
        first = v.byte(l3)
        ihl = (first & 15).astype(np.int64) * 4
        total = v.be16(l3 + 2)
        problems = ((l3 + 20 > end, _IP_SHORT), ((first >> 4) != 4, _VERSION), (ihl < 20, _IHL),
                    ((total < ihl) & (total != 0), _LENGTH))
        rows, l3, keep = self._screen(rows, l3, problems)
        ihl, total, end = ihl[keep], total[keep], end[keep]
        c["fam"][rows] = 4
        c["ipid"][rows] = v.be16(l3 + 4)
        frag = v.be16(l3 + 6)
        c["frag"][rows] = ((frag & 0x1FFF) << 4) | ((frag >> 13) & 1)
        c["ttl"][rows] = v.byte(l3 + 8)
        proto, l4 = v.byte(l3 + 9).astype(np.int64), l3 + ihl
        later = (frag & 0x1FFF) != 0
        ah = (proto == _AH) & ~later  # IPsec AH (transport mode): the transport header follows, as after IPv6's
        if ah.any():
            proto[ah], l4[ah], _first = self._extensions(rows[ah], proto[ah], l4[ah], end[ah], _IPV4_EXT)
        c["proto"][rows] = proto
        mapped = np.uint64(V4_MAPPED)
        c["sa_hi"][rows], c["sa_lo"][rows] = 0, v.be32(l3 + 12) | mapped
        c["da_hi"][rows], c["da_lo"][rows] = 0, v.be32(l3 + 16) | mapped
        ip_end = np.where(total == 0, end, l3 + total)  # 0: a segmentation-offloaded giant
        alive = c["status"][rows] == OK  # not an AH header cut short
        c["status"][rows[later]] = FRAGMENT
        self._transport(rows[alive], l4[alive], ip_end[alive], ~later[alive])

    def _ipv6(self, rows: np.ndarray, l3: np.ndarray) -> None:
        c, v = self.c, self.v
        end = self.end[rows]
        rows, l3, keep = self._screen(rows, l3, ((l3 + 40 > end, _IP_SHORT), ((v.byte(l3) >> 4) != 6, _VERSION)))
        end = end[keep]
        c["fam"][rows] = 6
        length = v.be16(l3 + 4)
        c["ttl"][rows] = v.byte(l3 + 7)
        c["sa_hi"][rows], c["sa_lo"][rows] = v.be64(l3 + 8), v.be64(l3 + 16)
        c["da_hi"][rows], c["da_lo"][rows] = v.be64(l3 + 24), v.be64(l3 + 32)
        ip_end = np.where(length == 0, end, l3 + 40 + length)
        proto, l4, first = self._extensions(rows, v.byte(l3 + 6).astype(np.int64), l3 + 40, end)
        c["proto"][rows] = proto
        alive = c["status"][rows] == OK
        c["status"][rows[~first & alive]] = FRAGMENT
        self._transport(rows[alive], l4[alive], ip_end[alive], first[alive])

    def _extensions(self, rows, proto, l4, end, kinds=None):
        """Walk extension headers (``kinds``: IPv6's): the transport protocol, where it starts, first fragment
        or not."""
        v = self.v
        first = np.ones(len(rows), bool)
        for _ in range(8):
            ext = np.nonzero(np.isin(proto, _IPV6_EXT if kinds is None else kinds) & (self.c["status"][rows] == OK))[0]
            if not len(ext):
                break
            at = l4[ext]
            short = at + 8 > end[ext]
            self.fail(rows[ext[short]], _EXT_SHORT)
            ext, at = ext[~short], at[~short]
            kind = proto[ext]
            size = np.where(kind == 51, (v.byte(at + 1).astype(np.int64) + 2) * 4,
                            (v.byte(at + 1).astype(np.int64) + 1) * 8)
            fragment = kind == 44
            field = v.be16(at + 2)
            first[ext[fragment]] = (field[fragment] & 0xFFF8) == 0
            self.c["ipid"][rows[ext[fragment]]] = v.be32(at[fragment] + 4)
            self.c["frag"][rows[ext[fragment]]] = ((field[fragment] & 0xFFF8) << 1) | (field[fragment] & 1)
            size[fragment] = 8
            proto[ext] = v.byte(at)
            l4[ext] = at + size
        return proto, l4, first

    def _screen(self, rows, l3, problems):
        """Mark the rows with any of ``problems`` undecodable; return the rest."""
        keep = np.ones(len(rows), bool)
        for bad, why in problems:
            hit = bad & keep
            self.fail(rows[hit], why)
            keep &= ~bad
        return rows[keep], l3[keep], keep

    # ------------------------------------------------------- transport --

    def _transport(self, rows, l4, ip_end, has_l4) -> None:
        c, v = self.c, self.v
        proto = c["proto"][rows].astype(np.int64)
        end = self.end[rows]
        poff = l4.copy()
        need = np.select([proto == TCP, proto == UDP, (proto == ICMP) | (proto == ICMP6)], [20, 8, 8], 0)
        need = np.where(has_l4, need, 0)
        short = l4 + need > end
        self.fail(rows[short & (c["status"][rows] == OK)], _L4_SHORT)
        ok = has_l4 & ~short
        ported = ok & ((proto == TCP) | (proto == UDP))
        c["sport"][rows[ported]] = v.be16(l4[ported])
        c["dport"][rows[ported]] = v.be16(l4[ported] + 2)
        tcp = ok & (proto == TCP)
        at = l4[tcp]
        c["seq"][rows[tcp]] = v.be32(at + 4)
        c["ack"][rows[tcp]] = v.be32(at + 8)
        doff = (v.byte(at + 12) >> 4).astype(np.int64) * 4
        c["flags"][rows[tcp]] = v.byte(at + 13)
        self.fail(rows[tcp][doff < 20], _DOFF)
        poff[tcp] = at + np.maximum(doff, 20)
        udp = ok & (proto == UDP)
        poff[udp] = l4[udp] + 8
        if udp.any():  # a datagram shorter than its IP packet ends where UDP's length says, as receivers trim it
            datagram = l4[udp] + v.be16(l4[udp] + 4)
            trim = (datagram >= l4[udp] + 8) & (datagram < ip_end[udp])
            ip_end = ip_end.copy()
            ip_end[np.nonzero(udp)[0][trim]] = datagram[trim]
        icmp = ok & ((proto == ICMP) | (proto == ICMP6))
        at = l4[icmp]
        c["icmp"][rows[icmp]] = (v.byte(at).astype(np.int64) << 8) | v.byte(at + 1)
        c["echo"][rows[icmp]] = v.be32(at + 4)
        poff[icmp] = at + 8
        c["poff"][rows] = poff
        wire = ip_end - poff
        bad = (wire < 0) & (c["status"][rows] == OK)
        self.fail(rows[bad], _LENGTH)
        c["plen"][rows] = np.maximum(wire, 0)
        c["pcap"][rows] = np.clip(np.minimum(ip_end, end) - poff, 0, None)

    # --------------------------------------------------------- tunnels --

    def tunnels(self, rows: np.ndarray) -> None:
        """Replace outer headers by the inner packet for IP-in-IP, GRE and GUE."""
        c = self.c
        rows = rows[c["status"][rows] == OK]
        proto = c["proto"][rows]
        ipip = rows[(proto == 4) | (proto == 41)]
        gre = rows[proto == 47]
        gue = rows[(proto == UDP) & np.isin(c["dport"][rows], self.gue_ports)]
        inner_rows, inner_l3, inner_etype, kinds = [], [], [], []
        for found, kind, locate in ((ipip, TUN_IPIP, self._ipip), (gre, TUN_GRE, self._gre), (gue, TUN_GUE, self._gue)):
            if len(found):
                r, l3, et = locate(found)
                inner_rows.append(r), inner_l3.append(l3), inner_etype.append(et)
                kinds.append(np.full(len(r), kind, np.uint8))
        if not inner_rows:
            return
        rows, l3, etype = np.concatenate(inner_rows), np.concatenate(inner_l3), np.concatenate(inner_etype)
        c["tun"][rows] = np.concatenate(kinds)
        for name in ("hi", "lo"):
            c["os_" + name][rows] = c["sa_" + name][rows]
            c["od_" + name][rows] = c["da_" + name][rows]
        for name in ("sport", "dport", "seq", "ack", "flags", "ipid", "echo", "frag"):
            c[name][rows] = 0
        c["icmp"][rows] = -1
        short = l3 + 20 > self.end[rows]
        self.fail(rows[short], _TUNNEL)
        keep = ~short & np.isin(etype, (0x0800, 0x86DD), kind="table")
        c["status"][rows[~short & ~keep]] = NOT_IP
        self.network(rows[keep], l3[keep], etype[keep])

    def _ipip(self, rows):
        return rows, self.c["poff"][rows], np.where(self.c["proto"][rows] == 4, 0x0800, 0x86DD)

    def _gre(self, rows):
        v = self.v
        at = self.c["poff"][rows]
        fits = at + 4 <= self.end[rows]
        self.fail(rows[~fits], _TUNNEL)
        rows, at = rows[fits], at[fits]
        flags = v.be16(at)
        size = 4 + 4 * (((flags & 0xC000) != 0).astype(np.int64) + ((flags & 0x2000) != 0) + ((flags & 0x1000) != 0))
        etype = v.be16(at + 2)
        l3 = at + size
        bridged = etype == 0x6558  # transparent Ethernet bridging: an Ethernet frame inside
        etype[bridged] = v.be16(l3[bridged] + 12)
        l3[bridged] += 14
        return rows, l3, etype

    def _gue(self, rows):
        v = self.v
        at = self.c["poff"][rows]
        fits = at + 4 <= self.end[rows]
        self.fail(rows[~fits], _TUNNEL)
        rows, at = rows[fits], at[fits]
        first = v.byte(at).astype(np.int64)
        version = first >> 6
        control = (first >> 5) & 1
        direct = version == 1  # GUE version 1: the IP header itself follows the UDP header
        l3 = np.where(direct, at, at + 4 + (first & 31) * 4)
        inner = v.byte(at + 1).astype(np.int64)
        nibble = first >> 4
        etype = np.where(direct, np.where(nibble == 4, 0x0800, np.where(nibble == 6, 0x86DD, 0)),
                         np.where(inner == 4, 0x0800, np.where(inner == 41, 0x86DD, 0)))
        etype[(version == 0) & (control == 1)] = 0
        return rows, l3, etype


def ipv4_of(lo: int) -> str:
    """The dotted form of an IPv4-mapped ``lo`` half."""
    x = lo & 0xFFFFFFFF
    return f"{x >> 24}.{(x >> 16) & 255}.{(x >> 8) & 255}.{x & 255}"

