"""``--jobs N``: N processes, each judging the flows whose client end hashes to it.

Every process reads every capture (the record walk is sequential and cheap),
decodes and classifies every packet, takes the health evidence and the
capture-wide counts from all of them -- so every shard knows when a backend
died -- and then pairs and judges only its own flows.  A flow's packets on both
sides share its client end (address, port), so a flow never spans shards.  The
parent merges the verdicts, counts, latency histograms and balance groups and
runs the balance test once, on everything.

snat and proxy hide the client end on the backend side, so specs with such
services are judged in one process.  Verdicts come out when the shards finish
(``--format jsonl`` included).
"""

from __future__ import annotations

import multiprocessing
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

import numpy as np

from lbspec.diagnostics import Diagnostic, InternalError
from lbspec.runtime.capture import CaptureError
from lbspec.runtime.health import HealthEvent, apply, read_events
from lbspec.runtime.monitor import Monitor, Report, _Counts
from lbspec.runtime.sources import Input, merged
from lbspec.runtime.verdicts import Verdict
from lbspec.semantics.model import Spec

__all__ = ["run", "ShardResult", "shardable"]

_SUMMED = ("listened", "paired", "mutated_pairs", "unrelated", "probes", "unattributed", "replies", "new_flows",
           "copies", "transit", "unjudged", "icmp_errors")


@dataclass
class ShardResult:
    """What one shard found, to merge into the parent's monitor."""

    verdicts: list[tuple[tuple, Verdict]]
    overflow: dict[tuple[str, str], set]
    packets: dict[str, int]
    counts: _Counts
    latency: np.ndarray
    groups: dict[tuple, Any]
    backend_flows: np.ndarray
    backend_bytes: np.ndarray
    evicted: int
    events: list[HealthEvent]
    notes: list[Diagnostic] = field(default_factory=list)


def shardable(spec: Spec, services: list[str] | None) -> bool:
    chosen = [s for s in spec.services if not services or s.name in services]
    return all(s.mode.kind not in ("snat", "proxy") for s in chosen)


def extract(monitor: Monitor) -> ShardResult:
    """Judge what is pending and hand over the shard's findings (no balance test: it needs every shard)."""
    monitor.settle_all()
    book, traffic = monitor.book, monitor.traffic
    return ShardResult(list(book.verdicts.items()), book.overflow, book.packets, monitor.counts,
                       monitor.latency.counts.copy(), traffic.groups, traffic.backend_flows, traffic.backend_bytes,
                       monitor.evictions(), monitor.timeline.events(), monitor.notes)


def absorb(parent: Monitor, result: ShardResult, primary: bool) -> None:
    """Merge a shard into ``parent``; capture-wide counts and health come from the ``primary`` shard."""
    for key, verdict in sorted(result.verdicts, key=lambda kv: (kv[1].time, kv[1].serial)):
        name = str(verdict.facts.get("property", "capture"))
        if parent.book.full(verdict.kind.code, name):
            parent.book.overflowed(key, verdict.kind.code, name)
        else:
            parent.book.add(key, name, verdict)
    for key, keys in result.overflow.items():
        parent.book.overflow.setdefault(key, set()).update(keys)
    for code, extra in result.packets.items():  # packets of verdicts past the limit, counted but not kept
        listed = sum(v.count for _k, v in result.verdicts if v.kind.code == code)
        parent.book.packets[code] = parent.book.packets.get(code, 0) + extra - listed
    _counts(parent.counts, result.counts, primary)
    parent.latency.counts += result.latency
    parent.latency.total += int(result.latency.sum())
    _groups(parent, result)
    parent.evicted_in_shards += result.evicted
    if primary:
        apply(parent.timeline, result.events)
        parent.notes.extend(result.notes)


def _counts(mine: _Counts, theirs: _Counts, primary: bool) -> None:
    for name in _SUMMED:
        setattr(mine, name, getattr(mine, name) + getattr(theirs, name))
    if primary:
        for name in ("packets", "status", "roles", "undecodable", "per_source"):
            setattr(mine, name, getattr(theirs, name))


def _groups(parent: Monitor, result: ShardResult) -> None:
    traffic = parent.traffic
    traffic.backend_flows += result.backend_flows
    traffic.backend_bytes += result.backend_bytes
    for key, group in result.groups.items():
        mine = traffic.groups.get(key)
        if mine is None:
            traffic.groups[key] = group
            continue
        for unit, totals in group.totals.items():
            for gid, amount in totals.items():
                mine.totals[unit][gid] = mine.totals[unit].get(gid, 0.0) + amount
            mine.squares[unit] += group.squares[unit]
        mine.first, mine.last = min(mine.first, group.first), max(mine.last, group.last)


# ------------------------------------------------------------------ shards --

def _shard(conn, index: int, count: int, spec: Spec, services, options, inputs: list[Input], skew: float,
           events: list[HealthEvent]) -> None:
    from lbspec.runtime.session import capture_notes, open_readers, open_streams

    try:
        monitor = Monitor(spec, services, options, shard=(index, count))
        monitor.health_events(events)
        readers = open_readers(monitor, inputs)
        streams = open_streams(monitor, readers)
        for number, parts in enumerate(merged([s.batches(skew) for s in streams], parts=True)):
            monitor.feed_parts(parts)
            if index == 0 and number % 8 == 0:
                conn.send(("progress", sum(r.bytes_read for r in readers)))
        if index == 0:
            for note in capture_notes(readers):
                monitor.note(note)
        conn.send(("done", extract(monitor)))
    except CaptureError as error:
        conn.send(("capture-error", error.path, error.reason))
    except Exception:  # noqa: BLE001 - a bug: the parent reports it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run(args, spec: Spec, stdout, stderr) -> Report | None:
    """Judge with ``args.jobs`` shards; None (judge in one process) when the spec cannot be sharded."""
    from lbspec.runtime.session import Progress, Stream, inputs_from, open_readers, open_streams, options_from, skew_for

    services = args.service or None
    if not shardable(spec, services) or "fork" not in multiprocessing.get_all_start_methods():
        stderr.write("lbspec monitor: --jobs: snat and proxy services are judged in one process\n")
        return None
    parent = Monitor(spec, services, options_from(args))
    events = read_events(args.events, parent.compiled) if args.events else []
    inputs = inputs_from(args)
    readers = open_readers(parent, inputs)
    for reader in readers:
        reader.check()  # a file that is no capture fails here, once
    skew = skew_for(args, parent, open_streams(parent, readers))
    with Progress.make(args, stderr, readers) as progress:
        results = _run_shards(args.jobs, spec, services, parent.options, inputs, skew, events, progress)
    for number, result in enumerate(results):
        absorb(parent, result, primary=number == 0)
    parent.close()
    Stream(args, stdout).emit(parent, final=True)
    return parent.close()


def _run_shards(count: int, spec, services, options, inputs, skew, events, progress) -> list[ShardResult]:
    context = multiprocessing.get_context("fork")
    shards = []
    for index in range(count):
        mine, theirs = context.Pipe(duplex=False)
        process = context.Process(target=_shard, args=(theirs, index, count, spec, services, options, inputs, skew,
                                                       events), daemon=True)
        process.start()
        theirs.close()
        shards.append((process, mine))
    try:
        return _collect(shards, progress)
    finally:
        for process, conn in shards:
            conn.close()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def _collect(shards, progress) -> list[ShardResult]:
    results: dict[int, ShardResult] = {}
    waiting = {conn: index for index, (_process, conn) in enumerate(shards)}
    while waiting:
        for conn in wait(list(waiting)):
            try:
                message = conn.recv()
            except EOFError:
                raise InternalError(f"judging process {waiting[conn]} ended without a result") from None
            if message[0] == "progress":
                progress.update(message[1])
            elif message[0] == "done":
                results[waiting.pop(conn)] = message[1]
            elif message[0] == "capture-error":
                raise CaptureError(message[1], message[2])
            else:
                raise InternalError(f"a judging process failed:\n{message[1]}")
    return [results[i] for i in range(len(shards))]
