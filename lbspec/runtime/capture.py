"""Reading capture files: pcap and pcapng, plain or gzip'd, as batches of raw frames.

Only record framing happens here; headers are decoded in bulk by
:mod:`lbspec.runtime.decode`.  A Python loop walks the record headers (the one
step that cannot be vectorised: each record says where the next begins), doing
nothing but one unpack and one add per record; the lengths it skipped over are
checked afterwards on all records at once.  Then one numpy gather copies the
first bytes of every record -- its header and the frame's own headers -- into
a small contiguous table (:func:`rows_at`), from which every field is read.
This reader is ours rather than scapy's ``RawPcapReader`` because that builds a
Python object per packet and tops out near half a million packets a second;
scapy still writes witness captures and does live capture.

Damage never stops a read silently: a record header that cannot be right makes
the reader search forward for the next plausible record (the bytes skipped are
counted), and a file that ends mid-record is reported.  Only a file that is not
a capture at all raises :class:`CaptureError`.
"""

from __future__ import annotations

import array
import gzip
import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lbspec.diagnostics import InputError

__all__ = [
    "CaptureError", "Frames", "Damage", "CaptureReader", "LINKTYPES", "PAD", "HEAD", "rows_at", "field",
    "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NULL", "LINKTYPE_LOOP", "LINKTYPE_IPV4", "LINKTYPE_IPV6",
]

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
LINKTYPE_RAW_OPENBSD = 12
LINKTYPES = {LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP",
             LINKTYPE_RAW_OPENBSD: "raw IP", LINKTYPE_LOOP: "OpenBSD loopback",
             LINKTYPE_LINUX_SLL: "Linux cooked (SLL)", LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6",
             LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)"}

PAD = 64  # zero bytes after in-memory batches (reads past a frame's end are clipped in any case)
HEAD = 64  # bytes of each frame copied out with its record: link, IPv4 and TCP headers fit
MAX_RECORD = 262_144 + 65_536  # the longest frame any common writer records
READ_SIZE = 32 << 20
BATCH_FRAMES = 1 << 15  # frames per batch: a batch's columns stay in cache; larger ones only cost memory
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"


class CaptureError(InputError):
    """A file that cannot be read as a capture at all (lbspec reports it as LB290)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read capture {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class Frames:
    """A batch of raw frames of one capture, in file order.

    ``buf`` holds the frames (bytes, or the mapped file); frame ``i`` is
    ``buf[offset[i]:offset[i] + caplen[i]]``.  ``direction`` is 0 unknown,
    1 received by the capturing host, 2 sent by it (from SLL headers or pcapng
    flags).  ``frame`` numbers start at 1 in each file, as Wireshark counts.
    """

    buf: bytes
    offset: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    ts: np.ndarray
    linktype: np.ndarray
    direction: np.ndarray
    frame: np.ndarray
    source: int = 0
    iface: np.ndarray | None = None  # pcapng interface id (None: all one interface)
    head: np.ndarray | None = None  # (n, HEAD) bytes from each frame's start, when the reader copied them

    def __len__(self) -> int:
        return len(self.offset)


def rows_at(buf, offsets: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each offset of ``buf``, as an (n, width) array: one gather, no Python loop.

    Bytes past the end of ``buf`` read as zero.  The table is small and contiguous, so the fields read
    from it afterwards cost little next to reads scattered over a mapped file.
    """
    u8 = np.frombuffer(buf, np.uint8)
    room = len(u8) - width
    if room >= 0 and (not len(offsets) or int(offsets.max()) <= room):
        return _gather(u8, offsets, width)
    out = np.zeros((len(offsets), width), np.uint8)
    inside = offsets <= room
    if inside.any():
        out[inside] = _gather(u8, offsets[inside], width)
    for row in np.nonzero(~inside)[0].tolist():
        piece = u8[int(offsets[row]):int(offsets[row]) + width]
        out[row, :len(piece)] = piece
    return out


def _gather(u8: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The rows, each read as one ``width``-byte item: twice as fast as gathering (n, width) bytes."""
    items = np.ndarray((len(u8) - width + 1,), np.dtype((np.void, width)), u8, 0, (1,))
    return items[offsets].view(np.uint8).reshape(len(offsets), width)


def field(table: np.ndarray, at: int, size: int, order: str = ">") -> np.ndarray:
    """The ``size``-byte unsigned integer at byte ``at`` of every row of a :func:`rows_at` table (a view)."""
    return table[:, at:at + size].view(f"{order}u{size}")[:, 0]


@dataclass
class Damage:
    """Something wrong in a file that the reader stepped over: counted, never fatal."""

    what: str  # "skipped" (corrupt record headers), "truncated" (file ends mid-record), "linktype",
    # "compressed" (gzip'd data cut short or damaged: the rest of the file is lost)
    frame: int  # the frame number before which it happened
    offset: int  # byte offset in the (decompressed) file
    size: int  # bytes concerned
    detail: str = ""


@dataclass
class _Interface:
    linktype: int
    scale: float = 1e-6  # seconds per timestamp unit
    offset: float = 0.0  # if_tsoffset
    snaplen: int = 0
    name: str = ""



def open_stream(path: str):
    """A binary stream of the file's bytes, decompressed if it is gzip'd."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise CaptureError(path, "no such file") from None
    except IsADirectoryError:
        raise CaptureError(path, "it is a directory") from None
    except PermissionError:
        raise CaptureError(path, "permission denied") from None
    except OSError as error:
        raise CaptureError(path, error.strerror or str(error)) from None
    if handle.read(2) == _GZIP_MAGIC:
        handle.close()
        return gzip.open(path, "rb")
    handle.seek(0)
    return handle


class CaptureReader:
    """Reads one capture file in batches of frames.

    After (or during) a read, ``damage`` lists what was stepped over and
    ``dropped`` the packets the capturing interfaces say they dropped (pcapng
    interface statistics).
    """

    def __init__(self, path: str | os.PathLike, source: int = 0, batch_frames: int = BATCH_FRAMES):
        self.path = os.fspath(path)
        self.source = source
        self.batch_frames = batch_frames
        self.damage: list[Damage] = []
        self.dropped = 0
        self.frames = 0
        self.bytes_read = 0
        self.size = _size(self.path)
        self.format = ""

    def batches(self) -> Iterator[Frames]:
        """The file's frames, a batch at a time; raises CaptureError if it is no capture."""
        stream = open_stream(self.path)
        try:
            head = _read(stream, 24, self.path)
            walker = self._walker(head)
            mapped = _map(stream)
            if mapped is not None:
                yield from self._mapped(mapped, walker)
            else:
                yield from self._chunked(stream, walker, head)
        finally:
            stream.close()

    def check(self) -> None:
        """Raise CaptureError unless the file starts like a capture lbspec reads."""
        stream = open_stream(self.path)
        try:
            self._walker(_read(stream, 24, self.path))
        finally:
            stream.close()

    def _walker(self, head: bytes):
        if head[:4] in _PCAP_MAGIC:
            self.format = "pcap"
            return _PcapWalker(self, head)
        if head[:4] == _PCAPNG_MAGIC:
            self.format = "pcapng"
            return _PcapngWalker(self)
        raise CaptureError(self.path, _not_a_capture(head))

    def _mapped(self, mapped: mmap.mmap, walker) -> Iterator[Frames]:
        """A plain file, mapped: no copies; pages behind the reader are handed back as it goes."""
        pos, released = walker.start, 0
        while True:  # the mapping closes itself once no batch refers to it
            frames, end = walker.walk(mapped, pos, self.batch_frames, True, 0)
            if frames is not None:
                yield self._count(frames)
            self.bytes_read = end
            if end == pos:
                break
            released = _release(mapped, released, pos)
            pos = end
        self._tail(len(mapped) - pos, pos)

    def _chunked(self, stream, walker, head: bytes) -> Iterator[Frames]:
        """A compressed file: decompress in large pieces and cut them into batches.  Compressed data cut
        short or damaged ends the read there, with every frame before it kept and the damage reported."""
        pending, position = head[walker.start:], walker.start
        at_end = False
        while True:
            if not at_end and len(pending) < READ_SIZE:
                data, broken = _read_upto(stream, READ_SIZE)
                at_end = not data or bool(broken)
                if broken:
                    self.damage.append(Damage("compressed", 0, position + len(pending) + len(data), 0,
                                              f"the compressed data ends early or is damaged ({broken}); "
                                              "what follows is lost"))
                pending += data
                self.bytes_read = _position(stream)
            frames, used = walker.walk(pending, 0, self.batch_frames, at_end, position)
            if frames is not None:
                yield self._count(frames)
            pending, position = pending[used:], position + used
            if at_end and (used == 0 or not pending):
                break
        self._tail(len(pending), position)

    def _count(self, frames: Frames) -> Frames:
        frames.source = self.source
        self.frames += len(frames)
        return frames

    def _tail(self, left: int, position: int) -> None:
        for damage in self.damage:
            if damage.what == "compressed":
                damage.frame = self.frames + 1  # after every frame read before it
        if left:
            self.damage.append(Damage("truncated", self.frames + 1, position, left,
                                      "the file ends in the middle of a record"))


def _map(stream) -> mmap.mmap | None:
    """The file mapped in memory, or None (compressed, empty, or not mappable)."""
    if isinstance(stream, gzip.GzipFile):
        return None
    try:
        return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None


def _release(mapped: mmap.mmap, released: int, upto: int) -> int:
    """Tell the kernel the pages before ``upto`` (less a margin) are not needed any more.

    Only memory accounting changes: a page touched again (a witness) is read back from the file.
    """
    keep = 4 << 20  # a margin before the batch just read (which stays mapped): what lies further back is done with
    end = (upto - keep) // mmap.PAGESIZE * mmap.PAGESIZE
    if end - released < keep or not hasattr(mapped, "madvise"):
        return released
    try:
        mapped.madvise(mmap.MADV_DONTNEED, released, end - released)
    except (OSError, ValueError):
        return released
    return end


def _position(stream) -> int:
    """How far into the file on disk a stream is (compressed bytes, for gzip)."""
    try:
        return (stream.fileobj if hasattr(stream, "fileobj") else stream).tell()
    except (OSError, ValueError, AttributeError):
        return 0


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_upto(stream, size: int) -> tuple[bytes, str]:
    """Up to ``size`` bytes of a stream (fewer only where it ends), and why it ended early ('' if it did
    not): one read at a time, so that the bytes decompressed before damage are not thrown away with it."""
    parts, got = [], 0
    try:
        while got < size:
            piece = stream.read1(size - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
    except (OSError, EOFError, zlib.error) as error:
        return b"".join(parts), str(error)
    return b"".join(parts), ""


def _read(stream, size: int, path: str) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as error:  # damaged gzip data
        raise CaptureError(path, f"the compressed data is damaged ({error})") from None


def _not_a_capture(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if len(head) < 4:
        return "the file is too short to be a capture"
    return (f"not a pcap or pcapng file (it starts with bytes {head[:4].hex(' ')}); "
            "convert it with `editcap -F pcap` or `tshark -F pcapng`")


def _u32(buf: bytes, order: str) -> np.ndarray:
    """Every 4-byte word of ``buf`` at every byte offset (a strided view, no copy)."""
    return np.ndarray((max(len(buf) - 3, 0),), np.dtype(order + "u4"), buf, 0, (1,))


class _PcapWalker:
    """Classic pcap records: a 16-byte header (ts_sec, ts_frac, caplen, origlen), then the frame."""

    start = 24

    def __init__(self, reader: CaptureReader, head: bytes):
        if len(head) < 24:
            raise CaptureError(reader.path, "the pcap file header is cut short (24 bytes expected)")
        self.reader = reader
        self.order, self.scale = _PCAP_MAGIC[head[:4]]
        snaplen, network = struct.unpack(self.order + "II", head[16:24])
        self.linktype = network & 0x0FFFFFFF
        if self.linktype not in LINKTYPES:
            raise CaptureError(reader.path, f"unsupported link type {self.linktype} (lbspec reads "
                               + ", ".join(sorted(set(LINKTYPES.values()))) + ")")
        self.limit = max(snaplen, MAX_RECORD) if 0 < snaplen < 1 << 24 else MAX_RECORD
        self.header = struct.Struct(self.order + "IIII")

    def walk(self, buf, pos: int, most: int, at_end: bool, base: int) -> tuple[Frames | None, int]:
        """Frames from ``pos`` on (``base``: where ``buf`` starts in the file); returns them and where they end."""
        starts, end = _walk_pcap(buf, pos, most, self.limit, self.order)
        while len(starts) < most and self._impossible(buf, end):
            skip = self._resync(buf, end, at_end)
            if skip is None:
                break
            self.reader.damage.append(Damage("skipped", self.reader.frames + len(starts) + 1, base + end,
                                             skip, "corrupt record header"))
            more, end = _walk_pcap(buf, end + skip, most - len(starts), self.limit, self.order)
            starts = np.concatenate([starts, more])
        return self._batch(buf, starts, end), end

    def _impossible(self, buf: bytes, pos: int) -> bool:
        """Is the record at ``pos`` one no writer makes (rather than merely incomplete)?"""
        if pos + 16 > len(buf):
            return False
        _sec, frac, caplen, _wirelen = self.header.unpack_from(buf, pos)
        return caplen > self.limit or frac * self.scale >= 1.0

    def _plausible(self, buf: bytes, pos: int, at_end: bool) -> bool:
        """Do four records in a row start at ``pos``?"""
        for _ in range(4):
            if pos + 16 > len(buf):
                return at_end and pos == len(buf)
            _sec, frac, caplen, wirelen = self.header.unpack_from(buf, pos)
            if caplen > self.limit or caplen > wirelen or wirelen > 4 * self.limit or frac * self.scale >= 1.0:
                return False
            pos += 16 + caplen
        return pos <= len(buf)

    def _resync(self, buf: bytes, pos: int, at_end: bool) -> int | None:
        """Bytes to skip before records make sense again; None: read more first."""
        stop = len(buf) if at_end else len(buf) - 4 * (16 + self.limit)
        for candidate in range(pos + 1, stop):
            if self._plausible(buf, candidate, at_end):
                return candidate - pos
        return len(buf) - pos if at_end else None

    def _batch(self, buf: bytes, starts: np.ndarray, end: int) -> Frames | None:
        if not len(starts):
            return None
        table = rows_at(buf, starts, 16 + HEAD)  # the record header, then the frame's first bytes
        word = lambda at: field(table, at, 4, self.order)  # noqa: E731
        ts = word(0).astype(np.float64) + word(4).astype(np.float64) * self.scale
        n = len(starts)
        first = self.reader.frames + 1
        return Frames(buf, starts + 16, word(8).astype(np.int32), word(12).astype(np.int32), ts,
                      np.full(n, self.linktype, np.uint16), np.zeros(n, np.int8),
                      np.arange(first, first + n, dtype=np.int64), head=table[:, 16:])


def _walk_pcap(buf, pos: int, most: int, limit: int, order: str) -> tuple[np.ndarray, int]:
    """Record offsets from ``pos``, and where the last whole record ends.

    The one per-record Python loop: an unpack and an add, nothing more.  What it does not check -- a
    length past ``limit``, a record running past the end -- is checked afterwards on every record at
    once, and the walk is cut before the first bad one.
    """
    unpack = struct.Struct(order + "8xI").unpack_from
    found = array.array("q", [pos])  # C integers: no Python object kept per record, and no copy into numpy
    append = found.append
    try:
        for _ in range(most):
            pos += 16 + unpack(buf, pos)[0]
            append(pos)
    except struct.error:  # the next record header is not all there
        pass
    bounds = np.frombuffer(found, np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    bad = (ends - starts - 16 > limit) | (ends > len(buf))
    cut = int(np.argmax(bad)) if bad.any() else len(starts)
    return starts[:cut], int(bounds[cut])


class _PcapngWalker:
    """pcapng blocks: sections (each with its byte order), interfaces, packets, statistics."""

    start = 0
    SHB, IDB, OPB, SPB, ISB, EPB = 0x0A0D0D0A, 1, 2, 3, 5, 6

    def __init__(self, reader: CaptureReader):
        self.reader = reader
        self.order = "<"
        self.interfaces: list[_Interface] = []

    def walk(self, buf, pos: int, most: int, at_end: bool, base: int) -> tuple[Frames | None, int]:
        """Frames from ``pos`` on (``base``: where ``buf`` starts in the file); returns them and where they end."""
        parts: list[tuple] = []
        count = 0
        while count < most:
            epbs, pos, stop = self._walk(buf, pos, most - count)
            if epbs:
                parts.append(self._gather(buf, epbs))
                count += len(parts[-1][0])
            if stop == "block":
                count += self._other(buf, pos, parts)
                pos += struct.unpack_from(self.order + "I", buf, pos + 4)[0]  # in the section's order
                continue
            if stop != "damage":
                break
            skip = self._resync(buf, pos, at_end)
            if skip is None:
                break
            self.reader.damage.append(Damage("skipped", self.reader.frames + count + 1, base + pos, skip,
                                             "corrupt block"))
            pos += skip
        return self._batch(buf, parts, pos), pos

    def _walk(self, buf: bytes, pos: int, most: int) -> tuple[list[int], int, str]:
        """Enhanced packet blocks from ``pos`` until another kind of block, damage, or the end."""
        unpack = struct.Struct(self.order + "II").unpack_from
        n = len(buf)
        out: list[int] = []
        append = out.append
        while pos + 12 <= n and len(out) < most:
            btype, blen = unpack(buf, pos)
            if btype == self.SHB:
                return out, pos, self._section_length(buf, pos)
            if blen < 12 or blen % 4 or blen > (MAX_RECORD + 512 if btype == self.EPB else 1 << 26):
                return out, pos, "damage"
            if pos + blen > n:
                return out, pos, "more"
            if btype != self.EPB:
                return out, pos, "block"
            append(pos)
            pos += blen
        return out, pos, "more" if len(out) < most else "full"

    def _section_length(self, buf: bytes, pos: int) -> str:
        """A section header may switch byte order, so its length is read in its own order."""
        if pos + 12 > len(buf):
            return "more"
        order = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        blen = struct.unpack_from(order + "I", buf, pos + 4)[0]
        if blen < 28 or blen % 4 or blen > 1 << 26:
            return "damage"
        return "more" if pos + blen > len(buf) else "block"

    def _resync(self, buf: bytes, pos: int, at_end: bool) -> int | None:
        stop = len(buf) if at_end else len(buf) - 4 * (MAX_RECORD + 512)
        for candidate in range(pos + 4, stop, 4):
            if self._plausible(buf, candidate):
                return candidate - pos
        return len(buf) - pos if at_end else None

    def _plausible(self, buf: bytes, pos: int) -> bool:
        if pos + 12 > len(buf):
            return False
        btype, blen = struct.unpack_from(self.order + "II", buf, pos)
        if btype not in (self.IDB, self.OPB, self.SPB, self.ISB, self.EPB) or blen < 12 or blen % 4:
            return False
        return pos + blen <= len(buf) and struct.unpack_from(self.order + "I", buf, pos + blen - 4)[0] == blen

    def _gather(self, buf: bytes, epbs: list[int]) -> tuple:
        """Enhanced packet blocks in bulk: offset, caplen, wirelen, ts, linktype, direction."""
        words = _u32(buf, self.order)
        offs = np.asarray(epbs, dtype=np.int64)
        blen = words[offs + 4].astype(np.int64)
        caplen = words[offs + 20].astype(np.int64)
        good = (words[offs + blen - 4] == blen) & (28 + caplen <= blen - 4)
        if not good.all():
            bad = offs[~good]
            self.reader.damage.append(Damage("skipped", self.reader.frames + 1, int(bad[0]), int(len(bad)),
                                             f"{len(bad)} packet block(s) with inconsistent lengths"))
            offs, blen, caplen = offs[good], blen[good], caplen[good]
        iface = words[offs + 8].astype(np.int64)
        ticks = words[offs + 12].astype(np.float64) * 4294967296.0 + words[offs + 16].astype(np.float64)
        direction = np.zeros(len(offs), np.int8)
        padded = 28 + ((caplen + 3) & ~3)
        for i in np.nonzero(padded + 4 < blen)[0].tolist():
            direction[i] = _epb_direction(buf, int(offs[i] + padded[i]), int(offs[i] + blen[i] - 4), self.order)
        linktype, scale, shift = self._lookup(iface)
        return (offs + 28, caplen, words[offs + 24].astype(np.int64), ticks * scale + shift, linktype, direction,
                iface)

    def _lookup(self, iface: np.ndarray):
        table = self.interfaces or [_Interface(0xFFFF)]
        known = iface < len(table)
        index = np.where(known, iface, 0)
        linktype = np.array([i.linktype for i in table], np.uint16)[index]
        linktype[~known] = 0xFFFF
        return (linktype, np.array([i.scale for i in table])[index], np.array([i.offset for i in table])[index])

    def _other(self, buf: bytes, pos: int, parts: list) -> int:
        """A block other than an EPB; returns the packets it adds (0 or 1)."""
        btype = struct.unpack_from(self.order + "I", buf, pos)[0]
        if btype == self.SHB:
            self._section(buf, pos)
            return 0
        blen = struct.unpack_from(self.order + "I", buf, pos + 4)[0]
        body = buf[pos + 8:pos + blen - 4]
        if btype == self.IDB:
            self._interface(body)
        elif btype == self.ISB:
            self._statistics(body)
        elif btype in (self.SPB, self.OPB):
            return self._simple(pos, btype, body, parts)
        return 0

    def _section(self, buf: bytes, pos: int) -> None:
        self.order = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        self.interfaces = []

    def _interface(self, body: bytes) -> None:
        if len(body) < 8:
            return
        linktype, _reserved, snaplen = struct.unpack_from(self.order + "HHI", body, 0)
        iface = _Interface(linktype, snaplen=snaplen)
        for code, value in _options(body[8:], self.order):
            if code == 9 and value:
                raw = value[0]
                iface.scale = 2.0 ** -(raw & 0x7F) if raw & 0x80 else 10.0 ** -raw
            elif code == 14 and len(value) == 8:
                iface.offset = float(struct.unpack(self.order + "q", value)[0])
            elif code == 2:
                iface.name = value.decode("utf-8", "replace")
        self.interfaces.append(iface)
        if linktype not in LINKTYPES:
            self.reader.damage.append(Damage("linktype", self.reader.frames + 1, 0, 0,
                                             f"interface {len(self.interfaces) - 1} has unsupported link type "
                                             f"{linktype}"))

    def _statistics(self, body: bytes) -> None:
        for code, value in _options(body[12:], self.order):
            if code in (5, 7) and len(value) == 8:  # isb_ifdrop, isb_osdrop
                self.reader.dropped += struct.unpack(self.order + "Q", value)[0]

    def _simple(self, pos: int, btype: int, body: bytes, parts: list) -> int:
        if btype == self.SPB and len(body) >= 4:
            origlen = struct.unpack_from(self.order + "I", body, 0)[0]
            snap = self.interfaces[0].snaplen if self.interfaces else 0
            caplen = min(origlen, len(body) - 4, snap or origlen)
            iface, ticks, start = 0, None, pos + 12
        elif btype == self.OPB and len(body) >= 20:
            iface, _drops, tsh, tsl, caplen, origlen = struct.unpack_from(self.order + "HHIIII", body, 0)
            if 20 + caplen > len(body):
                return 0
            ticks, start = tsh * 4294967296.0 + tsl, pos + 28
        else:
            return 0
        linktype, scale, shift = self._lookup(np.array([iface]))
        ts = np.array([np.nan if ticks is None else ticks * scale[0] + shift[0]])
        parts.append((np.array([start]), np.array([caplen]), np.array([origlen]), ts, linktype,
                      np.zeros(1, np.int8), np.array([iface], np.int64)))
        return 1

    def _batch(self, buf: bytes, parts: list[tuple], end: int) -> Frames | None:
        if not parts or not sum(len(p[0]) for p in parts):
            return None
        offs, caplen, wirelen, ts, linktype, direction, iface = (np.concatenate([p[i] for p in parts])
                                                                 for i in range(7))
        first = self.reader.frames + 1
        return Frames(buf, offs.astype(np.int64), caplen.astype(np.int32), wirelen.astype(np.int32),
                      _fill_missing(ts), linktype.astype(np.uint16), direction,
                      np.arange(first, first + len(offs), dtype=np.int64), iface=iface.astype(np.int32))


def _epb_direction(buf: bytes, pos: int, end: int, order: str) -> int:
    """The inbound/outbound bits of an EPB's epb_flags option: 1 in, 2 out, 0 unknown."""
    for code, value in _options(buf[pos:end], order):
        if code == 2 and len(value) == 4:
            bits = struct.unpack(order + "I", value)[0] & 3
            return bits if bits in (1, 2) else 0
    return 0


def _fill_missing(ts: np.ndarray) -> np.ndarray:
    """Simple packet blocks carry no timestamp: give each the one before it (0 at the start)."""
    missing = np.isnan(ts)
    if not missing.any():
        return ts
    index = np.where(missing, 0, np.arange(len(ts)))
    np.maximum.accumulate(index, out=index)
    filled = ts[index]
    filled[np.isnan(filled)] = 0.0
    return filled


def _options(data: bytes, order: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        code, length = struct.unpack_from(order + "HH", data, pos)
        if code == 0:
            return
        yield code, data[pos + 4:pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)
