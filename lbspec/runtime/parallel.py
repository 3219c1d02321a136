"""``--jobs N``: captures read, decoded and classified by N worker processes; one process judges.

Each worker takes whole capture files (one per worker where possible): it walks
them, decodes every header, gives each packet its role and digests the
payloads that need one -- the per-packet work -- and hands the decoded columns
over in shared memory, a few batches ahead.  The judging process maps the same
files itself (for payloads and witnesses), merges the workers' streams by time
and runs the monitor as usual.  Verdicts are the same as with one process.

Work is split by file: a single capture is read by one worker (the judge still
runs beside it).
"""

from __future__ import annotations

import mmap
import multiprocessing
import signal
import sys
import traceback
from collections.abc import Iterator
from multiprocessing import shared_memory

import numpy as np

from lbspec.diagnostics import InputError
from lbspec.runtime.capture import CaptureError, CaptureReader, Damage
from lbspec.runtime.classify import MacTable, classify
from lbspec.runtime.decode import Packets
from lbspec.runtime.monitor import Monitor, Report
from lbspec.runtime.sources import Input, batches, merged
from lbspec.semantics.model import Spec

__all__ = ["run", "ColumnLayout"]

SLOTS = 3
SLOT_BYTES = 32 << 20


class ColumnLayout:
    """Where each column of a batch lies in a shared-memory slot."""

    def __init__(self, packets: Packets):
        self.columns = [(name, packets[name].dtype.str) for name in packets.cols]

    def size(self, rows: int) -> int:
        return sum(_aligned(rows * np.dtype(dtype).itemsize) for _name, dtype in self.columns)

    def write(self, packets: Packets, buffer) -> None:
        offset = 0
        for name, dtype in self.columns:
            column = np.ascontiguousarray(packets[name], dtype=dtype)
            target = np.ndarray(column.shape, dtype, buffer, offset)
            target[...] = column
            offset += _aligned(column.nbytes)

    def read(self, rows: int, buffer) -> dict[str, np.ndarray]:
        cols, offset = {}, 0
        for name, dtype in self.columns:
            cols[name] = np.ndarray((rows,), dtype, buffer, offset)
            offset += _aligned(rows * np.dtype(dtype).itemsize)
        return cols


def _aligned(size: int) -> int:
    return (size + 7) & ~7


# ------------------------------------------------------------------ worker --

def _worker(conn, inputs: list[tuple[str, int, int]], compiled, skew: float) -> None:
    """Read ``inputs`` ((path, source, side)), merged by time; send batches through shared-memory slots."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    slots = [shared_memory.SharedMemory(create=True, size=SLOT_BYTES) for _ in range(SLOTS)]
    try:
        conn.send(("slots", [s.name for s in slots]))
        readers = [CaptureReader(path, source) for path, source, _side in inputs]
        streams = [batches(r, side, compiled.gue_ports, skew) for r, (_p, _s, side) in zip(readers, inputs)]
        free = list(range(SLOTS))
        macs = MacTable()
        for batch in merged(streams):
            for part in _fitting(batch):
                macs.learn(part, compiled)
                classify(part, compiled, macs)
                slot = free.pop() if free else _freed(conn)
                layout = ColumnLayout(part)
                layout.write(part, slots[slot].buf)
                conn.send(("batch", slot, len(part), layout.columns, sum(r.bytes_read for r in readers)))
        conn.send(("end", [(r.source, [vars(d) for d in r.damage], r.dropped) for r in readers]))
    except CaptureError as error:
        conn.send(("capture-error", error.path, error.reason))
    except Exception:  # noqa: BLE001 - a bug: the judge reports it
        conn.send(("error", traceback.format_exc()))
    finally:
        _release(conn, slots)


def _freed(conn) -> int:
    message = conn.recv()
    if message[0] != "free":
        raise EOFError("the judge stopped")
    return message[1]


def _fitting(batch: Packets) -> Iterator[Packets]:
    """Pieces of a batch small enough for one slot (a batch usually fits whole)."""
    per_row = max(ColumnLayout(batch).size(1) + 200, 1)  # classification adds columns
    rows = max(SLOT_BYTES // per_row, 1)
    for start in range(0, len(batch), rows):
        yield batch.slice(start, min(start + rows, len(batch)))


def _release(conn, slots) -> None:
    try:
        while conn.recv()[0] != "done":  # the judge says when it no longer reads the slots
            pass
    except (EOFError, OSError):
        pass
    for slot in slots:
        slot.close()  # the judge unlinks them: it outlives this process
    conn.close()


# ------------------------------------------------------------------- judge --

class _Stream:
    """The judge's side of one worker: batches as Packets over the mapped files."""

    def __init__(self, process, conn, files: dict[int, object]):
        self.process, self.conn, self.files = process, conn, files
        kind, names = conn.recv()
        self.slots = [_attach(name) for name in names]
        self.finished = None
        self.progress = 0

    def __iter__(self) -> Iterator[Packets]:
        held: list[int] = []
        while True:
            message = self.conn.recv()
            if message[0] == "batch":
                _kind, slot, rows, columns, self.progress = message
                yield self._packets(slot, rows, columns)  # views of the slot
                held.append(slot)
                if len(held) > 1:  # the monitor has taken every piece of the batch before last
                    self.conn.send(("free", held.pop(0)))
            elif message[0] == "end":
                self.finished = message[1]
                return
            elif message[0] == "capture-error":
                raise CaptureError(message[1], message[2])
            else:
                raise RuntimeError(f"a reading process failed:\n{message[1]}")

    def _packets(self, slot: int, rows: int, columns) -> Packets:
        layout = ColumnLayout.__new__(ColumnLayout)
        layout.columns = columns
        cols = layout.read(rows, self.slots[slot].buf)
        sources = np.unique(cols["source"]).tolist()
        buffers = [self.files[s] for s in sources]
        cols["buf"] = np.searchsorted(np.array(sources), cols["source"]).astype(np.int32)
        return Packets(cols, buffers)

    def close(self, failed: bool = False) -> None:
        for slot in self.slots:
            slot.close()
            try:
                slot.unlink()
            except FileNotFoundError:
                pass
        try:
            self.conn.send(("done",))
        except (BrokenPipeError, OSError):
            pass
        self.conn.close()
        self.process.join(1 if failed else 10)
        if self.process.is_alive():
            self.process.terminate()  # its finally unlinks the slots
            self.process.join(5)


def _attach(name: str) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(name=name)  # the worker made it; the judge unlinks it when done


def _map(path: str):
    with open(path, "rb") as handle:
        try:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            handle.seek(0)
            return handle.read()


def run(args, spec: Spec, stdout, stderr) -> Report | None:
    """Judge with ``args.jobs`` reading processes; None when the inputs cannot be split (compressed)."""
    from lbspec.runtime.session import Progress, Stream, capture_notes, inputs_from, options_from, skew_for
    from lbspec.runtime.health import read_events

    inputs = inputs_from(args)
    if any(_compressed(i.path) for i in inputs) or "fork" not in multiprocessing.get_all_start_methods():
        return None
    monitor = Monitor(spec, args.service or None, options_from(args))
    if args.events:
        monitor.health_events(read_events(args.events, monitor.compiled))
    readers = [CaptureReader(i.path, monitor.add_source(i.path, i.side)) for i in inputs]
    for reader in readers:
        reader.check()  # a file that is no capture fails here, in this process
    skew = skew_for(args, monitor, readers)
    files = {r.source: _map(r.path) for r in readers}
    streams = _start(monitor, inputs, readers, min(args.jobs, len(inputs)), skew, files)
    stream = Stream(args, stdout)
    failed = True
    try:
        with Progress.make(args, stderr, readers) as progress:
            for parts in merged([iter(s) for s in streams], parts=True):
                monitor.feed_parts(parts)
                stream.emit(monitor)
                progress.update(sum(s.progress for s in streams))
        _notes(monitor, streams, readers)
        failed = False
    finally:
        for s in streams:
            s.close(failed)
    for note in capture_notes(readers):
        monitor.note(note)
    monitor.close()
    stream.emit(monitor, final=True)
    return monitor.close()


def _start(monitor: Monitor, inputs: list[Input], readers, jobs: int, skew: float, files) -> list[_Stream]:
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # one tracker for all: the slots workers make, the judge unlinks
    context = multiprocessing.get_context("fork")
    shares: list[list[tuple[str, int, int]]] = [[] for _ in range(jobs)]
    for number, (item, reader) in enumerate(zip(inputs, readers)):
        shares[number % jobs].append((item.path, reader.source, monitor.sources.sides[reader.source]))
    streams = []
    for share in shares:
        mine, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs, share, monitor.compiled, skew), daemon=True)
        process.start()
        theirs.close()
        streams.append(_Stream(process, mine, files))
    return streams


def _notes(monitor: Monitor, streams: list[_Stream], readers: list[CaptureReader]) -> None:
    by_source = {r.source: r for r in readers}
    for stream in streams:
        for source, damage, dropped in stream.finished or []:
            reader = by_source[source]
            reader.damage = [Damage(**d) for d in damage]
            reader.dropped = dropped


def _compressed(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError as error:
        raise InputError(f"cannot read capture {path}: {error.strerror}") from None

