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

Damage never stops a read silently: the walk is cut at the first record whose
header cannot be right (or, in pcapng, whose two length copies disagree), and
the reader searches forward byte by byte for the next plausible record, in bulk;
the bytes skipped are reported, one entry per damaged stretch.  A file that ends
mid-record is reported too.  Only a file that is not a capture at all raises
:class:`CaptureError`.
"""

from __future__ import annotations

import array
import gzip
import mmap
import os
import stat
import struct
import zlib
from abc import ABC, abstractmethod
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
LINKTYPE_RAW_14 = 14  # DLT_RAW's value on OpenBSD and BSD/OS, found in files written there (Wireshark reads it too)
LINKTYPES = {LINKTYPE_NULL: "BSD loopback", LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP",
             LINKTYPE_RAW_OPENBSD: "raw IP", LINKTYPE_RAW_14: "raw IP", LINKTYPE_LOOP: "OpenBSD loopback",
             LINKTYPE_LINUX_SLL: "Linux cooked (SLL)", LINKTYPE_IPV4: "raw IPv4", LINKTYPE_IPV6: "raw IPv6",
             LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)"}

PAD = 64  # zero bytes after in-memory batches (reads past a frame's end are clipped in any case)
HEAD = 64  # bytes of each frame copied out with its record: link, IPv4 and TCP headers fit
MAX_RECORD = 262_144 + 65_536  # the longest frame any common writer records
READ_SIZE = 32 << 20
BACKWARDS = 1 << 25  # seconds (about a year) a pcap record may be earlier than the one before it
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
    # "compressed" (gzip'd data cut short or damaged: the rest of the file is lost), "order" (frames
    # too far out of time order to put back)
    frame: int  # the frame number before which it happened (for "order", the first such frame)
    offset: int  # byte offset in the (decompressed) file; -1 where none is meaningful
    size: int  # bytes concerned
    detail: str = ""


@dataclass
class _Interface:
    linktype: int
    scale: float = 1e-6  # seconds per timestamp unit
    units: int = 1_000_000  # timestamp units in a second, when that is a power of ten (else 0)
    offset: float = 0.0  # if_tsoffset
    snaplen: int = 0
    name: str = ""



def open_stream(path: str):
    """A binary stream of the file's bytes, decompressed if it is gzip'd.

    Only a regular file: a capture is opened more than once (checked before reading processes start,
    then read), and each opening of a pipe (``/dev/stdin``, ``<(...)``) would take data the others
    never see -- so a pipe is refused before anything is read from it, never half read.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            handle = open(path, "rb")
    except FileNotFoundError:
        raise CaptureError(path, "no such file") from None
    except PermissionError:
        raise CaptureError(path, "permission denied") from None
    except OSError as error:
        raise CaptureError(path, error.strerror or str(error)) from None
    if stat.S_ISDIR(mode):
        raise CaptureError(path, "it is a directory")
    if not stat.S_ISREG(mode):
        raise CaptureError(path, "it is not a regular file (a pipe or a device): write the capture to a file "
                           "first, or capture with --live")
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
        at_end, stalled = False, True
        while True:
            if not at_end and (stalled or len(pending) < READ_SIZE):  # a walk that got nowhere needs more
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
            pending, position, stalled = pending[used:], position + used, not used
            if at_end and (stalled or not pending):
                break
        self._tail(len(pending), position)

    def skip(self, frame: int, offset: int, size: int, detail: str) -> None:
        """Report ``size`` bytes stepped over at ``offset``: one damaged stretch is one entry, however many
        reads its search took."""
        last = self.damage[-1] if self.damage else None
        if last is not None and last.what == "skipped" and last.offset + last.size == offset and last.frame == frame:
            last.size += size
        elif size:
            self.damage.append(Damage("skipped", frame, offset, size, detail))

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


def _search(buf, start: int, stop: int, candidates, plausible) -> int | None:
    """The first offset in [start, stop) that ``candidates`` lets through (a test of every offset of a
    window at once) and ``plausible`` confirms.  Windows start small and grow: damage a few bytes long
    costs little, and megabytes of garbage are crossed at numpy's pace rather than a Python loop's."""
    size = 1 << 12
    while start < stop:
        end = min(start + size, stop)
        for at in candidates(buf, start, end):
            if plausible(buf, at):
                return at
        start, size = end, min(2 * size, 1 << 20)
    return None


class _Walker(ABC):
    """What both formats share: stepping over damage to where records make sense again.

    A subclass gives ``least`` (bytes a record's header takes), ``horizon`` (bytes after a candidate needed
    to judge it), ``damaged`` (what its damage notes say), :meth:`_candidates` and :meth:`_plausible`.
    """

    lost = False  # the last walk stopped in the middle of a search, for want of data: the next goes on with it
    reader: CaptureReader
    least: int
    horizon: int
    damaged: str

    def _step_over(self, buf, at: int, start: int, at_end: bool, base: int, frame: int,
                   bad: bool = True) -> int | None:
        """Step over damage at ``at``, searching for records from ``start``; report the bytes skipped and
        return where reading goes on.  None: the record at ``at`` looked right (``bad`` false) and the file
        ends inside it with nothing after it making sense -- a truncated file, which the reader reports."""
        to, found = self._resync(buf, start, at_end)
        if not (found or bad):
            return None
        self.lost = not (found or at_end)
        self.reader.skip(frame, base + at, to - at, self.damaged)
        return to

    def _resync(self, buf, start: int, at_end: bool) -> tuple[int, bool]:
        """Where records make sense again from ``start``, and True; or, none found, where the search
        stopped, and False: the end of the file, or -- short of it -- where what follows is too short to
        tell yet."""
        stop = len(buf) - (self.least - 1 if at_end else self.horizon)
        found = _search(buf, start, stop, self._candidates, lambda b, at: self._plausible(b, at, at_end))
        if found is not None:
            return found, True
        return (len(buf) if at_end else max(start, stop)), False

    @abstractmethod
    def _candidates(self, buf, lo: int, hi: int) -> list[int]:
        """The offsets in [lo, hi) where a record could start, found for all of them at once."""

    @abstractmethod
    def _plausible(self, buf, pos: int, at_end: bool) -> bool:
        """Do records really start at ``pos``?"""


class _PcapWalker(_Walker):
    """Classic pcap records: a 16-byte header (ts_sec, ts_frac, caplen, origlen), then the frame."""

    start = 24
    least = 16
    damaged = "corrupt record header"

    def __init__(self, reader: CaptureReader, head: bytes):
        if len(head) < 24:
            raise CaptureError(reader.path, "the pcap file header is cut short (24 bytes expected)")
        self.reader = reader
        self.order, self.scale = _PCAP_MAGIC[head[:4]]
        snaplen, network = struct.unpack(self.order + "II", head[16:24])
        self.linktype = network & 0x03FFFFFF  # libpcap's LT_LINKTYPE: the bits above tell of a frame check sequence
        if self.linktype not in LINKTYPES:
            raise CaptureError(reader.path, f"unsupported link type {self.linktype} (lbspec reads "
                               + ", ".join(sorted(set(LINKTYPES.values()))) + ")")
        self.fcs = 2 * (network >> 28) if network & 0x04000000 else 0  # LT_FCS_LENGTH, in 16-bit words
        self.limit = max(snaplen, MAX_RECORD) if 0 < snaplen < 1 << 24 else MAX_RECORD
        self.horizon = 4 * (16 + self.limit)
        self.ticks = round(1 / self.scale)  # timestamp fraction units in a second
        self.last: int | None = None  # ts_sec of the last record walked (None: none, or damage since)
        self.header = struct.Struct(self.order + "IIII")

    def walk(self, buf, pos: int, most: int, at_end: bool, base: int) -> tuple[Frames | None, int]:
        """Frames from ``pos`` on (``base``: where ``buf`` starts in the file); returns them and where they end."""
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        count = 0
        if self.lost:
            pos, self.last = self._step_over(buf, pos, pos, at_end, base, self.reader.frames + 1), None
        while not self.lost and count < most:
            starts, table, end, bad = self._records(buf, pos, most - count, at_end)
            pieces.append((starts, table))
            count += len(starts)
            pos = end
            if count == most or end == len(buf) or not (bad or at_end and len(buf) - end >= 16):
                break  # done, or more is to be read, or the file ends in a record header
            resume = self._step_over(buf, end, end + 1, at_end, base, self.reader.frames + count + 1, bad)
            if resume is None:
                break
            pos, self.last = resume, None
        return self._batch(buf, pieces), pos

    def _records(self, buf, pos: int, most: int, at_end: bool) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """The records from ``pos`` that can be right: their offsets, their :func:`rows_at` table, where they
        end, and whether the record there cannot be right (rather than not all there, or not asked for).

        The header where the walk stopped is checked with the rest, when it is all there.  When it is not
        and more is to be read, a last record captured longer than it was on the wire waits for it: that
        header decides whether the record stands (see :meth:`_sane`)."""
        bounds = self._walk(buf, pos, most)
        checked = bounds if len(buf) - int(bounds[-1]) >= 16 else bounds[:-1]
        table = rows_at(buf, checked, 16 + HEAD)  # the record header, then the frame's first bytes
        keep = self._sane(table)
        bad = keep < len(checked)
        keep = min(keep, len(bounds) - 1)
        if keep and keep == len(checked) and not at_end and self._longer(table[keep - 1]):
            keep -= 1
        if keep:
            self.last = int(field(table, 0, 4, self.order)[keep - 1])
        return bounds[:keep], table[:keep], int(bounds[keep]), bad

    def _walk(self, buf, pos: int, most: int) -> np.ndarray:
        """Where records start from ``pos``, then where the walk stopped: after ``most`` records, or at the
        first that is not all there.

        What it does not check -- a length that cannot be right -- is checked afterwards on every record at
        once, and the walk is cut before the first bad one.  A long walk goes by :func:`_lanes`, many
        stretches at once, after a few records one by one (:func:`_visit`) that tell how long records are
        here; a lane starts where the seconds start like those at ``pos`` and four records in a row
        :meth:`_fits`, none captured longer than it was on the wire.
        """
        n, order = len(buf), self.order
        pieces = [_visit(buf, pos, min(most, PROBE), order)]  # positions visited, each piece from where the last stopped
        most, pos = most - (len(pieces[0]) - 1), int(pieces[0][-1])
        if most >= 4 * LANES and len(pieces[0]) > PROBE and pos + 16 <= n and hasattr(buf, "find"):
            word, hi = _u32(buf, order), _span(pieces[0], most, n)
            high = 2 if order == "<" else 0  # where the seconds' high half is in a header
            found = _lane_starts(buf, pos, hi, buf[pos + high:pos + high + 2], high)
            chain = _lanes(word, pos, found, self._start_records(word, found), hi, most, 8, 16)
            pieces.append(_visit(buf, pos, most, order) if chain is None else chain)
            most, pos = most - (len(pieces[-1]) - 1), int(pieces[-1][-1])
        if most > 0 and pos + 16 <= n:  # the rest, if any: records longer than the first, or a lane's start wrong
            pieces.append(_visit(buf, pos, most, order))
        bounds = np.concatenate([piece[:-1] for piece in pieces] + [pieces[-1][-1:]])
        return bounds[:-1] if bounds[-1] > n else bounds  # the last record runs past the end: it stops the walk

    def _start_records(self, word: np.ndarray, at: np.ndarray) -> np.ndarray:
        """For each offset (negative: none) into a buffer read as ``word`` (:func:`_u32`), do four records that
        :meth:`_fits`, none captured longer than it was on the wire, start there (as :meth:`_plausible` asks
        of one offset)?"""
        end = len(word) + 3  # the buffer's length
        ok = at >= 0
        for _ in range(4):
            ok &= at + 16 <= end
            at = np.where(ok, at, 0)
            frac, caplen, wirelen = word[at + 4], word[at + 8], word[at + 12]
            ok &= self._fits(frac, caplen, wirelen) & (caplen <= wirelen)
            at = at + 16 + caplen
        return ok

    def _sane(self, table: np.ndarray) -> int:
        """How many records of a header table, from the first, can be right: fields in range (:meth:`_fits`),
        and seconds not far before the record before's -- a header read off its place, a few bytes early
        or late, takes another field (a length, microseconds) for its seconds.

        A record captured longer than it was on the wire is accepted (capture bugs write them: libpcap once
        added a VLAN tag to the one length only), but when the record after it cannot be right, it is taken
        for the cause: its length is what put the walk off, and the search starts at it."""
        word = lambda at: field(table, at, 4, self.order)  # noqa: E731
        caplen, wirelen = word(8), word(12)
        bad = ~self._fits(word(4), caplen, wirelen)
        sec = word(0).astype(np.int64)
        bad[1:] |= sec[1:] < sec[:-1] - BACKWARDS
        if self.last is not None and len(sec):
            bad[0] |= sec[0] < self.last - BACKWARDS
        if not bad.any():
            return len(bad)
        first = int(np.argmax(bad))
        return first - 1 if first and caplen[first - 1] > wirelen[first - 1] else first

    def _longer(self, header: np.ndarray) -> bool:
        """Was this record (a :func:`rows_at` row) captured longer than it was on the wire?"""
        return int(field(header[None], 8, 4, self.order)[0]) > int(field(header[None], 12, 4, self.order)[0])

    def _fits(self, frac, caplen, wirelen):
        """Could a writer have written these header fields (arrays, or single values)?  A fraction of a second
        under a second, lengths in bounds, and not both lengths 0 -- zero bytes (a file's unwritten tail) are
        no record."""
        return (frac < self.ticks) & (caplen <= self.limit) & (wirelen <= 4 * self.limit) & ((caplen | wirelen) != 0)

    def _candidates(self, buf, lo: int, hi: int) -> list[int]:
        """The offsets in [lo, hi) whose 16 bytes read as a header that :meth:`_fits`."""
        word = lambda at: np.ndarray((hi - lo,), np.dtype(self.order + "u4"), buf, lo + at, (1,))  # noqa: E731
        return (np.nonzero(self._fits(word(4), word(8), word(12)))[0] + lo).tolist()

    def _plausible(self, buf, pos: int, at_end: bool) -> bool:
        """Do four records in a row start at ``pos`` (or fewer, ending where the file does)?  None of them
        captured longer than it was on the wire, here: a header read 4 bytes late takes the length on the
        wire for the captured one and the frame's first bytes for the length on the wire."""
        for _ in range(4):
            if pos + 16 > len(buf):
                return at_end and pos == len(buf)
            _sec, frac, caplen, wirelen = self.header.unpack_from(buf, pos)
            if not self._fits(frac, caplen, wirelen) or caplen > wirelen:
                return False
            pos += 16 + caplen
        return pos <= len(buf)

    def _batch(self, buf: bytes, pieces: list[tuple[np.ndarray, np.ndarray]]) -> Frames | None:
        pieces = [p for p in pieces if len(p[0])]
        if not pieces:
            return None
        starts, table = pieces[0] if len(pieces) == 1 else (np.concatenate([p[i] for p in pieces]) for i in (0, 1))
        word = lambda at: field(table, at, 4, self.order)  # noqa: E731
        ts = word(0).astype(np.float64) + word(4).astype(np.float64) * self.scale
        caplen, wirelen = word(8).astype(np.int32), word(12).astype(np.int32)
        if self.fcs:  # each frame ends in its frame check sequence, which is no part of the packet
            wirelen = np.maximum(wirelen - self.fcs, 0)
            caplen = np.minimum(caplen, wirelen)
        n = len(starts)
        first = self.reader.frames + 1
        return Frames(buf, starts + 16, caplen, wirelen, ts, np.full(n, self.linktype, np.uint16), np.zeros(n, np.int8),
                      np.arange(first, first + n, dtype=np.int64), head=table[:, 16:])


PROBE = 256  # records walked one by one before lanes, to size them
LANES = 256  # stretches walked at once


def _visit(buf, pos: int, most: int, order: str) -> np.ndarray:
    """Positions visited walking record by record from ``pos``: at most ``most`` records; the last is where
    the walk stopped (a record not walked, or one whose header is not all there).  An unpack and an add
    per record, nothing more."""
    unpack = struct.Struct(order + "8xI").unpack_from
    found = array.array("q", [pos])  # C integers: no Python object kept per record, and no copy into numpy
    append = found.append
    try:
        for _ in range(most):
            pos += 16 + unpack(buf, pos)[0]
            append(pos)
    except struct.error:  # the next record header is not all there
        pass
    return np.frombuffer(found, np.int64)


def _span(probe, most: int, n: int) -> int:
    """Where to walk lanes to: past where ``most`` more records end, if they are as long as the probe's."""
    return min(n, int(probe[-1]) + int((int(probe[-1]) - int(probe[0])) / (len(probe) - 1) * most * 1.25))


def _lane_starts(buf, pos: int, hi: int, mark: bytes, at: int) -> np.ndarray:
    """For each stretch of [pos, hi) but the first (up to :data:`LANES` of them, 4 KiB at least), the first
    offset in it where ``mark`` is found ``at`` bytes in (negative: none)."""
    lanes = max(1, min(LANES, (hi - pos) >> 12))
    width = (hi - pos) // lanes
    return np.array([buf.find(mark, lo + at, lo + width + at) - at
                     for lo in range(pos + width, pos + lanes * width, width)], np.int64)


def _lanes(word: np.ndarray, pos: int, found: np.ndarray, ok: np.ndarray, hi: int, most: int, length_at: int,
           overhead: int) -> np.ndarray | None:
    """The positions a walk from the record at ``pos`` visits up to the first at ``hi`` or past it (at most
    ``most`` records, then where it stopped), each record ``overhead`` bytes longer than the length at
    ``length_at`` in it says; or None where too few lanes could start for them to pay.  ``word`` is the
    buffer's 32-bit word at every offset (:func:`_u32`).

    Lanes walk stretches of the buffer at once, one record of each per numpy step, where a Python loop
    takes a record at a time: the first from ``pos``, each other from the record ``found`` near its place
    (:func:`_lane_starts`) where its looks are ``ok``, else the lane before walks its stretch too.  A lane
    is taken only where the walk of the one before ends exactly on its start, so the walk is the very one
    record by record; where a start proves wrong, it stops where the lane before it went, and the caller
    goes on from there."""
    if np.count_nonzero(ok) < len(found) // 4:  # the seconds' high half changed (every 18 hours), or so
        return None
    begin = np.r_[pos, found[ok]]
    end = np.r_[begin[1:], hi]
    length = word[length_at:]
    top = len(length) - 1
    if overhead:
        step = lambda at: at + length[np.minimum(at, top)] + overhead  # noqa: E731
    else:  # a length of 0 (garbage, past a lane's end) must not hold its lane where it is
        step = lambda at: at + np.maximum(length[np.minimum(at, top)], 4)  # noqa: E731
    at, steps = begin, [begin]
    while True:  # lanes past their end walk on until the last is done: cheaper than setting them aside
        for _ in range(8):
            at = step(at)
            steps.append(at)
        if (at >= end).all():
            break
    visits = np.array(steps).T  # a row per lane: its positions, then those past its end
    inside = visits < end[:, None]
    stops = visits[np.arange(len(begin)), inside.sum(1)]  # where each lane's walk left its stretch
    wrong = np.nonzero(stops[:-1] != begin[1:])[0]
    good = int(wrong[0]) + 1 if len(wrong) else len(begin)
    chain = visits[:good][inside[:good]]
    return chain[:most + 1] if len(chain) > most else np.r_[chain, stops[good - 1]]


def _epb_length(blen):
    """Could an enhanced packet block be this long (an int, or an array of them)?"""
    return (blen >= 32) & (blen % 4 == 0) & (blen <= MAX_RECORD + 512)


class _PcapngWalker(_Walker):
    """pcapng blocks: sections (each with its byte order), interfaces, packets, statistics."""

    start = 0
    least = 12
    horizon = 4 * (MAX_RECORD + 512)
    damaged = "corrupt block"
    SHB, IDB, OPB, SPB, ISB, EPB = 0x0A0D0D0A, 1, 2, 3, 5, 6
    KINDS = (IDB, OPB, SPB, ISB, EPB)  # what a search for blocks after damage looks for
    # Blocks holding no packet that Wireshark still lists as frames: custom blocks (copiable or not), systemd
    # journal entries and sysdig events.  Each takes a frame number, so that ours stay Wireshark's.
    NUMBERED = (0x00000BAD, 0x40000BAD, 0x00000009, 0x00000204, 0x00000216, 0x00000221)

    def __init__(self, reader: CaptureReader):
        self.reader = reader
        self.order = "<"
        self.interfaces: list[_Interface] = []

    def walk(self, buf, pos: int, most: int, at_end: bool, base: int) -> tuple[Frames | None, int]:
        """Frames from ``pos`` on (``base``: where ``buf`` starts in the file); returns them and where they end."""
        parts: list[tuple] = []
        count = numbered = 0  # packets, and frame numbers given: packets and the blocks Wireshark numbers besides
        if self.lost:
            pos = self._step_over(buf, pos, pos, at_end, base, self.reader.frames + 1)
        while not self.lost and count < most:
            epbs, pos, stop = self._walk(buf, pos, most - count)
            if epbs:
                part, whole = self._gather(buf, epbs)
                if whole < len(epbs):
                    pos, stop = epbs[whole], "damage"
                if whole:
                    parts.append((*part, numbered + np.arange(whole)))
                    count += whole
                    numbered += whole
            if stop == "block":
                packets, numbers = self._other(buf, pos, parts, numbered)
                count += packets
                numbered += numbers
                pos += struct.unpack_from(self.order + "I", buf, pos + 4)[0]  # in the section's order
                continue
            if not (stop == "damage" or stop == "more" and at_end and len(buf) - pos >= 12):
                break  # done, or more is to be read, or the file ends in a block header
            resume = self._step_over(buf, pos, pos + 1, at_end, base, self.reader.frames + numbered + 1,
                                     stop == "damage")
            if resume is None:
                break
            pos = resume
        frames = self._batch(buf, parts, pos)
        self.reader.frames += numbered - count  # the reader counts the packets as it hands them on
        return frames, pos

    def _walk(self, buf: bytes, pos: int, most: int) -> tuple[list[int], int, str]:
        """Enhanced packet blocks from ``pos`` until another kind of block ("block"), damage, the end of
        ``buf`` ("more") or ``most`` of them ("full").  An EPB's length copy at its end is checked later, on
        all of them at once.  A long walk goes by lanes (see :func:`_lanes`) after a few blocks one by one."""
        out, pos, stop = self._each(buf, pos, min(most, PROBE))
        if stop == "full" and most - len(out) >= 4 * LANES and hasattr(buf, "find"):
            more, pos = self._by_lanes(buf, out, pos, most - len(out))
            out += more
        if stop == "full" and len(out) < most:
            more, pos, stop = self._each(buf, pos, most - len(out))
            out += more
        return out, pos, stop

    def _by_lanes(self, buf, probe: list[int], pos: int, most: int) -> tuple[list[int], int]:
        """EPBs from ``pos`` walked by lanes, up to the first block :meth:`_each` would stop at (left to it)."""
        n, word = len(buf), _u32(buf, self.order)
        hi = _span(np.array(probe + [pos]), most, n)
        found = _lane_starts(buf, pos, hi, struct.pack(self.order + "I", self.EPB), 0)
        chain = _lanes(word, pos, found, self._could_be_blocks(word, found), hi, most, 4, 0)
        if chain is None:
            return [], pos
        blocks = chain[:-1]
        ok = self._could_be_blocks(word, blocks, 1, copies=False)  # what _each checks
        whole = len(blocks) if ok.all() else int(np.argmin(ok))
        return blocks[:whole].tolist(), int(chain[whole])

    def _could_be_blocks(self, word: np.ndarray, at: np.ndarray, count: int = 4, copies: bool = True
                         ) -> np.ndarray:
        """For each offset (negative: none) into a buffer read as ``word`` (:func:`_u32`), does it start
        ``count`` EPBs in a row that the walk reads whole (and, with ``copies``, whose length copies at
        their ends agree)?"""
        end = len(word) + 3  # the buffer's length
        ok = at >= 0
        for _ in range(count):
            ok &= at + 12 <= end
            at = np.where(ok, at, 0)
            blen = word[at + 4].astype(np.int64)
            ok &= (word[at] == self.EPB) & _epb_length(blen)
            ok &= at + blen <= end
            at = np.where(ok, at + blen, 4)
            if copies:
                ok &= word[at - 4] == blen
        return ok

    def _each(self, buf: bytes, pos: int, most: int) -> tuple[list[int], int, str]:
        """As :meth:`_walk`, a block at a time."""
        unpack = struct.Struct(self.order + "II").unpack_from
        n = len(buf)
        out: list[int] = []
        append = out.append
        while pos + 12 <= n and len(out) < most:
            btype, blen = unpack(buf, pos)
            if btype != self.EPB:
                return out, pos, self._kind(buf, pos, btype, blen)
            if not _epb_length(blen):
                return out, pos, "damage"
            if pos + blen > n:
                return out, pos, "more"
            append(pos)
            pos += blen
        return out, pos, "more" if len(out) < most else "full"

    def _kind(self, buf: bytes, pos: int, btype: int, blen: int) -> str:
        """What a block other than an EPB stops the walk with: "block" (read it), "more" or "damage".  Its
        length is trusted only where the copy at its end agrees; a section header's is in its own byte order."""
        order, least = self.order, 12
        if btype == self.SHB:
            order = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            blen, least = struct.unpack_from(order + "I", buf, pos + 4)[0], 28
        if blen < least or blen % 4 or blen > 1 << 26:
            return "damage"
        if pos + blen > len(buf):
            return "more"
        return "block" if struct.unpack_from(order + "I", buf, pos + blen - 4)[0] == blen else "damage"

    def _candidates(self, buf, lo: int, hi: int) -> list[int]:
        """The offsets in [lo, hi) where a block of a known type and a possible length could start."""
        words = _u32(buf, self.order)
        kind, blen = words[lo:hi], words[lo + 4:hi + 4]
        return (np.nonzero(np.isin(kind, self.KINDS) & (blen % 4 == 0) & (blen >= 12))[0] + lo).tolist()

    def _plausible(self, buf, pos: int, at_end: bool) -> bool:
        """Does a block the walk reads start at ``pos``, its two length copies agreeing?"""
        btype, blen = struct.unpack_from(self.order + "II", buf, pos)
        if btype not in self.KINDS or blen < (32 if btype == self.EPB else 12) or blen % 4:
            return False
        return pos + blen <= len(buf) and struct.unpack_from(self.order + "I", buf, pos + blen - 4)[0] == blen

    def _gather(self, buf: bytes, epbs: list[int]) -> tuple[tuple, int]:
        """Enhanced packet blocks in bulk: offset, caplen, wirelen, ts, linktype, direction, interface -- of
        those, from the first, that are whole (the length copy at the end agrees, the packet fits); and how
        many those are."""
        words = _u32(buf, self.order)
        offs = np.asarray(epbs, dtype=np.int64)
        blen = words[offs + 4].astype(np.int64)
        caplen = words[offs + 20].astype(np.int64)
        good = (words[offs + blen - 4] == blen) & (caplen <= blen - 32)
        whole = len(offs) if good.all() else int(np.argmin(good))
        offs, blen, caplen = offs[:whole], blen[:whole], caplen[:whole]
        iface = words[offs + 8].astype(np.int64)
        ticks = (words[offs + 12].astype(np.uint64) << np.uint64(32)) | words[offs + 16].astype(np.uint64)
        direction = np.zeros(len(offs), np.int8)
        padded = 28 + ((caplen + 3) & ~3)
        for i in np.nonzero(padded + 4 < blen)[0].tolist():
            direction[i] = _epb_direction(buf, int(offs[i] + padded[i]), int(offs[i] + blen[i] - 4), self.order)
        linktype, scale, shift, units = self._lookup(iface)
        return (offs + 28, caplen, words[offs + 24].astype(np.int64), _seconds(ticks, scale, shift, units), linktype,
                direction, iface), whole

    def _lookup(self, iface: np.ndarray):
        table = self.interfaces or [_Interface(0xFFFF)]
        known = iface < len(table)
        index = np.where(known, iface, 0)
        linktype = np.array([i.linktype for i in table], np.uint16)[index]
        linktype[~known] = 0xFFFF
        return (linktype, np.array([i.scale for i in table])[index], np.array([i.offset for i in table])[index],
                np.array([i.units for i in table], np.uint64)[index])

    def _other(self, buf: bytes, pos: int, parts: list, numbered: int) -> tuple[int, int]:
        """A block other than an EPB (``numbered``: frame numbers given so far in this walk); returns the
        packets it adds and the frame numbers it takes (0 or 1 each)."""
        btype = struct.unpack_from(self.order + "I", buf, pos)[0]
        if btype == self.SHB:
            self._section(buf, pos)
            return 0, 0
        blen = struct.unpack_from(self.order + "I", buf, pos + 4)[0]
        body = buf[pos + 8:pos + blen - 4]
        if btype == self.IDB:
            self._interface(body, numbered)
        elif btype == self.ISB:
            self._statistics(body)
        elif btype in (self.SPB, self.OPB):
            packets = self._simple(pos, btype, body, parts, numbered)
            return packets, packets
        elif btype in self.NUMBERED:
            return 0, 1
        return 0, 0

    def _section(self, buf: bytes, pos: int) -> None:
        self.order = "<" if buf[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        self.interfaces = []

    def _interface(self, body: bytes, numbered: int) -> None:
        if len(body) < 8:
            return
        linktype, _reserved, snaplen = struct.unpack_from(self.order + "HHI", body, 0)
        iface = _Interface(linktype, snaplen=snaplen)
        for code, value in _options(body[8:], self.order):
            if code == 9 and value:
                raw = value[0]
                iface.scale = 2.0 ** -(raw & 0x7F) if raw & 0x80 else 10.0 ** -raw
                iface.units = 10 ** raw if not raw & 0x80 and raw <= 19 else 0  # 10 ** 19 still fits 64 bits
            elif code == 14 and len(value) == 8:
                iface.offset = float(struct.unpack(self.order + "q", value)[0])
            elif code == 2:
                iface.name = value.decode("utf-8", "replace")
        self.interfaces.append(iface)
        if linktype not in LINKTYPES:
            self.reader.damage.append(Damage("linktype", self.reader.frames + numbered + 1, 0, 0,
                                             f"interface {len(self.interfaces) - 1} has unsupported link type "
                                             f"{linktype}"))

    def _statistics(self, body: bytes) -> None:
        for code, value in _options(body[12:], self.order):
            if code in (5, 7) and len(value) == 8:  # isb_ifdrop, isb_osdrop
                self.reader.dropped += struct.unpack(self.order + "Q", value)[0]

    def _simple(self, pos: int, btype: int, body: bytes, parts: list, numbered: int) -> int:
        if btype == self.SPB and len(body) >= 4:
            origlen = struct.unpack_from(self.order + "I", body, 0)[0]
            snap = self.interfaces[0].snaplen if self.interfaces else 0
            caplen = min(origlen, len(body) - 4, snap or origlen)
            iface, ticks, start = 0, None, pos + 12
        elif btype == self.OPB and len(body) >= 20:
            iface, _drops, tsh, tsl, caplen, origlen = struct.unpack_from(self.order + "HHIIII", body, 0)
            if 20 + caplen > len(body):
                return 0
            ticks, start = tsh << 32 | tsl, pos + 28
        else:
            return 0
        linktype, scale, shift, units = self._lookup(np.array([iface]))
        ts = np.array([np.nan]) if ticks is None else _seconds(np.array([ticks], np.uint64), scale, shift, units)
        parts.append((np.array([start]), np.array([caplen]), np.array([origlen]), ts, linktype,
                      np.zeros(1, np.int8), np.array([iface], np.int64), np.array([numbered])))
        return 1

    def _batch(self, buf: bytes, parts: list[tuple], end: int) -> Frames | None:
        if not parts or not sum(len(p[0]) for p in parts):
            return None
        offs, caplen, wirelen, ts, linktype, direction, iface, index = (np.concatenate([p[i] for p in parts])
                                                                        for i in range(8))
        return Frames(buf, offs.astype(np.int64), caplen.astype(np.int32), wirelen.astype(np.int32),
                      _fill_missing(ts), linktype.astype(np.uint16), direction,
                      (self.reader.frames + 1 + index).astype(np.int64), iface=iface.astype(np.int32))


def _epb_direction(buf: bytes, pos: int, end: int, order: str) -> int:
    """The inbound/outbound bits of an EPB's epb_flags option: 1 in, 2 out, 0 unknown."""
    for code, value in _options(buf[pos:end], order):
        if code == 2 and len(value) == 4:
            bits = struct.unpack(order + "I", value)[0] & 3
            return bits if bits in (1, 2) else 0
    return 0


def _seconds(ticks: np.ndarray, scale: np.ndarray, shift: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Timestamps in seconds from 64-bit tick counts (``units`` a second, or 0 where the resolution is not
    decimal).  Decimal ones are split into whole seconds and a fraction first, as a pcap record holds them:
    ``ticks * scale`` would round twice (the tick count itself is past what a float holds exactly), and a
    packet would get another time than the same packet read from a pcap, or than the one tshark shows."""
    decimal = units > 0
    whole, fraction = np.divmod(ticks, np.where(decimal, units, np.uint64(1)))
    split = (whole.astype(np.float64) + shift) + fraction.astype(np.float64) * scale
    if decimal.all():
        return split
    return np.where(decimal, split, ticks.astype(np.float64) * scale + shift)


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
