"""Capture files as one time-ordered stream of decoded packets, and the clock skew between sides.

Several files (a client-side and a backend-side capture, or one combined
capture, or many) are read batch by batch and merged by timestamp, so the
monitor sees traffic in the order it happened.  Backend-side timestamps are
corrected by the estimated skew first.

The skew is estimated from packets seen on both sides: forward latency (ingress
to egress) is the LB's latency plus the skew, reverse latency (backend reply
to client reply) the LB's latency minus it, so half their difference is the
skew (the NTP estimate, on low percentiles so queueing does not bias it).
With replies not passing the LB (dsr, tunnel), a negative forward latency is
all that can be corrected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from lbspec.runtime.capture import CaptureReader, Damage
from lbspec.runtime.classify import (
    BACKEND, BREPLY, COMBINED, CREPLY, EGRESS, INGRESS, classify_rows, pair_key, reply_key,
)
from lbspec.runtime.compiled import Compiled
from lbspec.runtime.decode import TCP, Packets, decode, fill_digests

__all__ = ["Input", "SkewEstimate", "CaptureStream", "batches", "in_time_order", "sort_by_time", "merged",
           "estimate_skew"]

SAMPLE = 8192  # packets per capture the clock skew is first estimated on: enough pairs, a fraction of the cost
ENOUGH_PAIRS = 100  # forward and reverse pairs each; with fewer, the whole first batch is looked at


@dataclass(frozen=True)
class Input:
    path: str
    side: str | None  # client | backend | None (both sides in one capture)


@dataclass(frozen=True)
class SkewEstimate:
    seconds: float  # backend clock minus client clock
    forward_pairs: int
    reverse_pairs: int
    method: str

    def describe(self) -> str:
        return (f"estimated clock offset of the backend-side capture: {self.seconds * 1e3:+.3f}ms "
                f"({self.method}; {self.forward_pairs} forward and {self.reverse_pairs} reverse pairs)")


class CaptureStream:
    """One capture, decoded batch by batch -- and classified right away where a row's own headers decide
    its role (a capture of one side); in a capture of both sides the monitor classifies what it takes
    together.  The first batch is kept once read: the clock skew is estimated on it."""

    def __init__(self, reader: CaptureReader, side: int, compiled: Compiled):
        self.reader, self.side, self.compiled = reader, side, compiled
        self.early = side != COMBINED
        self._read = self._decoded()
        self._first: list[Packets] = []

    def first(self) -> Packets | None:
        """The first batch (not corrected for skew), or None for a capture with no frames."""
        if not self._first:
            batch = next(self._read, None)
            if batch is None:
                return None
            self._first.append(batch)
        return self._first[0]

    def batches(self, skew: float = 0.0) -> Iterator[Packets]:
        """The batches, time-sorted, backend-side times corrected by ``skew``."""
        for packets in itertools.chain(self._first, self._read):
            yield sort_by_time(packets, skew if self.side == BACKEND else 0.0)
        self._first = []

    def _decoded(self) -> Iterator[Packets]:
        return in_time_order(self._each_decoded(), self.reader)

    def _each_decoded(self) -> Iterator[Packets]:
        for frames in self.reader.batches():
            packets = decode(frames, self.side, self.compiled.gue_ports, macs=self.compiled.wants_macs(self.side))
            if self.early:
                classify_rows(packets, self.compiled)
            yield packets


def in_time_order(batches: Iterator[Packets], reader: CaptureReader) -> Iterator[Packets]:
    """The batches, with every row later than the next batch's earliest moved into it: a capture written
    out of time order (a pcapng of several interfaces, written a buffer of each at a time) is put back in
    order across batches, where each batch is sorted on its own.  A row earlier than a batch already handed
    on is too late for that; such rows are counted and reported (``Damage("order")``), and judged where
    they stand."""
    held: Packets | None = None
    shown = -np.inf  # the latest time handed on
    late = 0
    first = 0  # the frame number of the first row too late
    for batch in batches:
        if len(batch):
            ts = batch["ts"]
            behind = ts < shown
            if behind.any():
                late += int(np.count_nonzero(behind))
                first = first or int(batch["frame"][int(np.argmax(behind))])
            if held is not None and len(held):
                after = held["ts"] > ts.min()
                if after.any():
                    batch = Packets.concat([held.take(np.nonzero(after)[0]), batch])
                    held = held.take(np.nonzero(~after)[0])
        if held is not None:
            if len(held):
                shown = max(shown, float(held["ts"].max()))
            yield held
        held = batch
    if held is not None:
        yield held
    if late:
        reader.damage.append(Damage("order", first, -1, 0,
                                    f"{late} frames more than a batch ({reader.batch_frames} frames) out of time "
                                    f"order, from frame {first} on, judged where they stand: verdicts near them "
                                    "may be wrong (reordercap sorts a capture)"))


def sort_by_time(packets: Packets, skew: float = 0.0) -> Packets:
    """The batch with ``skew`` taken off its times, in time order."""
    if skew:
        packets["ts"] = packets["ts"] - skew
    ts = packets["ts"]
    if len(ts) > 1 and (np.diff(ts) < 0).any():
        packets = packets.take(np.argsort(ts, kind="stable"))
    return packets


def batches(reader: CaptureReader, side: int, compiled: Compiled, skew: float = 0.0) -> Iterator[Packets]:
    """Decoded, time-sorted batches of one capture (classified if it holds one side)."""
    return CaptureStream(reader, side, compiled).batches(skew)


def merged(streams: list[Iterator[Packets]], first: Callable[[int, float], None] | None = None,
           last: Callable[[int, float], None] | None = None) -> Iterator[list[Packets]]:
    """Merge time-sorted batch streams into lists of time-sorted pieces covering the same span, left for
    the monitor to take together (no copy, no sort).  ``first(source, time)`` is told when each stream's
    first packet is, as soon as its first batch is read (before any piece is yielded); ``last(source,
    time)`` when its last is, as soon as the stream is found to end (pieces of it may follow): when each
    capture starts and stops is known before what is in it is judged.

    A span ends where the first stream's data read so far ends.  A stream cut short of its batch's end
    by another's has its next batch read too when what is left is under half a batch, so that spans
    stay about a batch long rather than alternating with slivers (each span is a round of judging,
    which has a cost of its own).  Batches are asked for only once the pieces handed out before are
    done with, and a stream holds pieces of two batches at most: a reading process (``--jobs``) reuses
    a batch's memory once the batch after next is asked for.
    """
    queues: list[list[Packets]] = [[] for _ in streams]
    sizes = [0] * len(streams)  # rows of each stream's latest batch
    ends: list[tuple[int, float] | None] = [None] * len(streams)  # its source and its latest time so far
    over = [False] * len(streams)
    while True:
        for index, queue in enumerate(queues):
            short = not queue or (len(queue) == 1 and 2 * len(queue[0]) < sizes[index])
            if over[index] or not short:
                continue
            batch = _next(streams[index])
            if batch is None:
                over[index] = True
                if last is not None and ends[index] is not None:
                    last(*ends[index])
                continue
            if first is not None or last is not None:
                source = int(batch["source"][0])
                if first is not None and ends[index] is None:
                    first(source, float(batch["ts"][0]))
                ends[index] = source, float(batch["ts"][-1])
            queue.append(batch)
            sizes[index] = len(batch)
        if not any(queues):
            return
        cut = min(float(q[-1]["ts"][-1]) for q in queues if q)
        pieces = []
        for queue in queues:
            while queue and float(queue[0]["ts"][-1]) <= cut:
                pieces.append(queue.pop(0))
            if queue:
                upto = int(np.searchsorted(queue[0]["ts"], cut, side="right"))
                if upto:
                    pieces.append(queue[0].slice(0, upto))
                    queue[0] = queue[0].slice(upto, len(queue[0]))
        yield pieces


def _next(stream: Iterator[Packets]) -> Packets | None:
    for batch in stream:
        if len(batch):
            return batch
    return None


def estimate_skew(compiled: Compiled, client: list[CaptureStream], backend: list[CaptureStream]) -> SkewEstimate | None:
    """The backend side's clock offset, from the first packets of each capture: the first
    :data:`SAMPLE` of each, or the whole first batch if so few show too few pairs."""
    if not client or not backend:
        return None
    forward, reverse = _pairs_seen(compiled, client, backend, SAMPLE)
    longer = any(s.first() is not None and len(s.first()) > SAMPLE for s in client + backend)
    if min(len(forward), len(reverse)) < ENOUGH_PAIRS and longer:
        forward, reverse = _pairs_seen(compiled, client, backend, None)
    if len(forward) >= 10 and len(reverse) >= 10:
        low_f, low_r = _percentile(forward, 10), _percentile(reverse, 10)
        return SkewEstimate(float((low_f - low_r) / 2), len(forward), len(reverse), "forward and reverse latency")
    if len(forward):
        low = float(np.min(forward))
        return SkewEstimate(min(low, 0.0), len(forward), len(reverse),
                            "forward latency only" + ("" if low < 0 else "; no correction needed"))
    return SkewEstimate(0.0, 0, len(reverse), "no packet seen on both sides; assumed 0")


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear between the nearest two), without the ``numpy.ma`` import that
    numpy's first call makes: a sixtieth of a second before judging can start."""
    ordered = np.sort(values)
    at = q / 100 * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (at - low))


def _pairs_seen(compiled: Compiled, client: list[CaptureStream], backend: list[CaptureStream],
                most: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Forward and reverse latencies of the packets seen on both sides among the first ``most`` of each
    capture (None: its whole first batch)."""
    near = _sample(client, compiled, most)
    far = _sample(backend, compiled, most)
    return (_latencies(near, far, INGRESS, EGRESS, lambda p, r: pair_key(p, "snat", r)),
            _latencies(far, near, BREPLY, CREPLY, reply_key))


def _sample(streams: list[CaptureStream], compiled: Compiled, most: int | None) -> Packets:
    """The first ``most`` packets (None: the first batch) of one side's captures, with the payload digests
    of replies other than TCP too (in a copy of that column: the monitor's own rows keep theirs as
    classification left them).  TCP replies are told apart by their sequence numbers."""
    firsts = [s.first() for s in streams]
    sample = Packets.concat([Packets({k: v[:most] for k, v in f.cols.items()}, f.buffers)
                             for f in firsts if f is not None])
    if "role" not in sample:
        classify_rows(sample, compiled)
    sample["digest"] = sample["digest"].copy()
    replies = (sample["role"] == BREPLY) | (sample["role"] == CREPLY)
    fill_digests(sample, np.nonzero(replies & (sample["proto"] != TCP))[0])
    return sample


def _latencies(first: Packets, second: Packets, role_a: int, role_b: int, key) -> np.ndarray:
    """Time from a packet in ``first`` to the same packet in ``second``, for keys seen once on each side."""
    a = np.nonzero(first["role"] == role_a)[0]
    b = np.nonzero(second["role"] == role_b)[0]
    if not len(a) or not len(b):
        return np.zeros(0)
    ka, kb = key(first, a), key(second, b)
    ua, ia, ca = np.unique(ka, return_index=True, return_counts=True)
    ub, ib, cb = np.unique(kb, return_index=True, return_counts=True)
    common, ja, jb = np.intersect1d(ua[ca == 1], ub[cb == 1], return_indices=True)
    ta = first["ts"][a[ia[ca == 1][ja]]]
    tb = second["ts"][b[ib[cb == 1][jb]]]
    return tb - ta
