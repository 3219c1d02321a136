"""``--jobs N``: captures read, decoded and classified in up to N processes while this one judges.

Most of the work is reading: walking the records, copying headers out,
decoding and classifying them -- and each capture's share of it needs nothing
from the other captures.  So each capture file (up to N of them) gets a
process of its own, which hands its batches over in shared memory: the
columns are copied once into a slot, and this process reads them there
without a copy.  Judging stays here, in one process, on the batches merged by
time exactly as without ``--jobs``: health evidence, flow state and the order
in which verdicts are found depend on every packet in the order things
happened, and the output is the same as with one process, verdict for
verdict.

A gzip'd capture (whose frames are not in a file to map) and captures beyond
the N-th are read here, as without ``--jobs``.  Reading processes are forked,
so they start with the spec already compiled.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import multiprocessing
import os
import traceback
from collections.abc import Iterator

import numpy as np

from lbspec.diagnostics import InternalError
from lbspec.runtime.capture import CaptureError, CaptureReader, Damage, open_stream
from lbspec.runtime.decode import Packets
from lbspec.runtime.sources import CaptureStream

__all__ = ["open_streams", "RemoteReader", "RemoteStream"]

# Batches in flight per reading process: the judging one holds two, so a reader works one ahead.  A reader
# outpaces the judge, so when it ends, what it wrote ahead is judged on one core: with a fourth slot that tail
# was twice as long (about 40ms on the 1,000,000-packet bench), and the run took longer.
SLOTS = 3
ROW_BYTES = 512  # room per packet in a slot (the columns take about 230 bytes)


def open_streams(monitor, readers: list[CaptureReader], jobs: int, stack: contextlib.ExitStack
                 ) -> list[CaptureStream]:
    """A stream per reader: read in a process of its own for the first ``jobs`` mappable captures,
    here for the rest.  ``stack`` stops the processes when it closes."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return [CaptureStream(r, monitor.sources.sides[r.source], monitor.compiled) for r in readers]
    streams: list[CaptureStream] = []
    for reader in readers:
        side = monitor.sources.sides[reader.source]
        if jobs > 0 and _mappable(reader.path):
            jobs -= 1
            streams.append(stack.enter_context(RemoteStream(reader, side, monitor.compiled)))
        else:
            streams.append(CaptureStream(reader, side, monitor.compiled))
    return streams


def _mappable(path: str) -> bool:
    """Is this a plain (not gzip'd), non-empty file, which a reading process can map?"""
    try:
        stream = open_stream(path)
    except CaptureError:
        return False
    try:
        return hasattr(stream, "fileno") and not hasattr(stream, "fileobj") and os.fstat(stream.fileno()).st_size > 0
    finally:
        stream.close()


class RemoteReader:
    """What this process knows of a capture read elsewhere: what the progress bar and the notes need."""

    def __init__(self, reader: CaptureReader):
        self.path, self.source, self.size = reader.path, reader.source, reader.size
        self.batch_frames = reader.batch_frames
        self.bytes_read = 0
        self.frames = 0
        self.damage: list[Damage] = []
        self.dropped = 0
        self.format = ""


class RemoteStream(CaptureStream):
    """A capture read, decoded and classified by a forked process; its batches are views of shared memory.

    A batch's slot is handed back when the batch after next is asked for: by then the monitor has
    copied what it keeps of it (see ``sources.merged``).
    """

    def __init__(self, reader: CaptureReader, side: int, compiled):
        context = multiprocessing.get_context("fork")
        self.slot_bytes = reader.batch_frames * ROW_BYTES
        self.memory = mmap.mmap(-1, self.slot_bytes * SLOTS)
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_read, args=(theirs, reader, side, compiled, self.memory,
                                                           self.slot_bytes), daemon=True)
        self.process.start()
        theirs.close()
        super().__init__(RemoteReader(reader), side, compiled)
        self.frames = _map(reader.path)

    def __enter__(self) -> RemoteStream:
        return self

    def __exit__(self, *exc) -> None:
        self.conn.close()
        self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def _decoded(self) -> Iterator[Packets]:
        held: collections.deque[tuple[int, int]] = collections.deque()
        released = 0
        while True:
            if len(held) >= 2:
                slot, start = held.popleft()
                with contextlib.suppress(BrokenPipeError):  # the process may be done already
                    self.conn.send(("free", slot))
                released = _release(self.frames, released, start)
            message = self._receive()
            if message[0] == "done":
                return
            _kind, slot, rows, layout, start = message
            held.append((slot, start))
            yield self._batch(slot, rows, layout)

    def _receive(self) -> tuple:
        try:
            message = self.conn.recv()
        except EOFError:
            raise InternalError(f"the process reading {self.reader.path} ended without finishing") from None
        kind = message[0]
        if kind in ("batch", "done"):
            self.reader.bytes_read, self.reader.frames = message[-2], message[-1]
            if kind == "done":
                self.reader.damage, self.reader.dropped, self.reader.format = message[1:4]
            return message[:-2]
        if kind == "capture-error":
            raise CaptureError(message[1], message[2])
        raise InternalError(f"the process reading {self.reader.path} failed:\n{message[1]}")

    def _batch(self, slot: int, rows: int, layout: list[tuple[str, str, int]]) -> Packets:
        base = slot * self.slot_bytes
        cols = {name: np.frombuffer(self.memory, np.dtype(dtype), rows, base + at) for name, dtype, at in layout}
        return Packets(cols, [self.frames])


def _map(path: str) -> mmap.mmap:
    with open(path, "rb") as handle:
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


def _release(frames: mmap.mmap, released: int, upto: int) -> int:
    """Hand back this process's pages of the capture before ``upto`` (less a margin): a page touched
    again (for a witness) is read back from the file."""
    keep = 16 << 20
    end = (upto - keep) // mmap.PAGESIZE * mmap.PAGESIZE
    if end - released < keep:
        return released
    with contextlib.suppress(OSError, ValueError):
        frames.madvise(mmap.MADV_DONTNEED, released, end - released)
        return end
    return released


# ------------------------------------------------------------ reading processes --

def _read(conn, reader: CaptureReader, side: int, compiled, memory: mmap.mmap, slot_bytes: int) -> None:
    """A reading process: batches into free slots, until the capture ends."""
    try:
        stream = CaptureStream(reader, side, compiled)
        free = list(range(SLOTS))
        for packets in stream._decoded():
            while not free:
                free.append(conn.recv()[1])
            slot = free.pop(0)
            layout = _write(packets, memory, slot * slot_bytes, slot_bytes)
            start = int(packets["roff"].min()) if len(packets) else 0
            conn.send(("batch", slot, len(packets), layout, start, reader.bytes_read, reader.frames))
        conn.send(("done", reader.damage, reader.dropped, reader.format, reader.bytes_read, reader.frames))
    except CaptureError as error:
        conn.send(("capture-error", error.path, error.reason))
    except (BrokenPipeError, EOFError):  # the judging process stopped early
        pass
    except Exception:  # noqa: BLE001 - a bug: the judging process reports it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _write(packets: Packets, memory: mmap.mmap, base: int, room: int) -> list[tuple[str, str, int]]:
    """Copy every column into the slot at ``base``; returns where each went."""
    layout, at = [], 0
    for name, column in packets.cols.items():
        size = column.nbytes
        if at + size > room:
            raise InternalError(f"a batch of {len(packets)} packets does not fit a slot of {room} bytes")
        if size:
            np.frombuffer(memory, np.uint8, size, base + at)[:] = np.ascontiguousarray(column).view(np.uint8).reshape(-1)
        layout.append((name, column.dtype.str, at))
        at += (size + 7) // 8 * 8
    return layout
