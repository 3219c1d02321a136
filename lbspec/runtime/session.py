"""One `lbspec monitor` run: inputs opened, monitor fed, verdicts streamed and witnesses written."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import TextIO

from lbspec import diagnostics as d
from lbspec.diagnostics import Diagnostic
from lbspec.render.json import write_line
from lbspec.runtime.capture import CaptureReader
from lbspec.runtime.health import read_events
from lbspec.runtime.monitor import Monitor, MonitorOptions, Report
from lbspec.runtime.sources import CaptureStream, Input, estimate_skew, merged
from lbspec.runtime.witness import witness_name, write_witness
from lbspec.semantics.model import Spec

GC_YOUNG = 50_000  # new objects between collections of the youngest generation, while monitoring (Python: 700)

__all__ = ["Outcome", "run", "options_from", "inputs_from", "open_readers", "open_streams", "skew_for", "feed"]


@dataclass
class Outcome:
    report: Report
    spec: Spec
    services: list[str]
    streamed: bool = False  # the verdicts were printed as they came (live, text)


def options_from(args) -> MonitorOptions:
    return MonitorOptions(tolerance=args.tolerance / 1e3, max_flows=args.max_flows, max_verdicts=args.max_verdicts,
                          witnesses=True)


def inputs_from(args) -> list[Input]:
    return ([Input(p, None) for p in args.captures] + [Input(p, "client") for p in args.client_side]
            + [Input(p, "backend") for p in args.backend_side])


def run(args, spec: Spec, stdout: TextIO, stderr: TextIO) -> Outcome:
    # What exists by now (modules, the spec) outlives the run: the collector need not go through it again
    # (two thirds of its time), nor -- with --jobs -- touch pages the reading processes share.  And what the
    # run makes lives long (connections in proxy mode: several objects each, for minutes): collecting after
    # every 700 new objects went through them again and again, a third of the time on a long proxy capture.
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG), *thresholds[1:])
    try:
        return _run(args, spec, stdout, stderr)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # for callers in the same process (tests): their garbage stays collectable


def _run(args, spec: Spec, stdout: TextIO, stderr: TextIO) -> Outcome:
    services = args.service or None
    if args.live:
        from lbspec.runtime import live

        report = live.run(args, spec, stdout, stderr)
        return Outcome(report, spec, args.service, streamed=args.format == "text")
    monitor = Monitor(spec, services, options_from(args))
    if args.events:
        monitor.health_events(read_events(args.events, monitor.compiled))
    stream = Stream(args, stdout)
    with contextlib.ExitStack() as stack:
        readers = open_readers(monitor, inputs_from(args))
        if args.jobs > 1:
            from lbspec.runtime import parallel

            for reader in readers:
                reader.check()  # a file that is no capture fails here, before any process starts
            streams = parallel.open_streams(monitor, readers, args.jobs, stack)
        else:
            streams = open_streams(monitor, readers)
        skew = skew_for(args, monitor, streams)
        readers = [s.reader for s in streams]
        feed(monitor, streams, skew, stream, Progress.make(args, stderr, readers))
    for note in capture_notes(readers):
        monitor.note(note)
    monitor.close()  # judges everything still pending
    stream.emit(monitor)  # witnesses (and JSON lines) of the last verdicts, and the closing notes
    return Outcome(monitor.close(), spec, args.service)  # the report, naming every witness file


def open_readers(monitor: Monitor, inputs: list[Input]) -> list[CaptureReader]:
    readers = []
    for item in inputs:
        index = monitor.add_source(item.path, item.side)
        readers.append(CaptureReader(item.path, index))
    return readers


def open_streams(monitor: Monitor, readers: list[CaptureReader]) -> list[CaptureStream]:
    return [CaptureStream(r, monitor.sources.sides[r.source], monitor.compiled) for r in readers]


def skew_for(args, monitor: Monitor, streams: list[CaptureStream]) -> float:
    client = [s for s in streams if s.side == 0]
    backend = [s for s in streams if s.side == 1]
    if not client or not backend:
        return 0.0
    if args.skew != "auto":
        value = float(args.skew)
        monitor.note(d.CLOCK_SKEW.at(None, what=f"clock offset of the backend-side capture: {value * 1e3:+.3f}ms "
                                     "(given with --skew)", data={"skew_s": value, "method": "given"}))
        return value
    estimate = estimate_skew(monitor.compiled, client, backend)
    monitor.note(d.CLOCK_SKEW.at(None, what=estimate.describe(),
                                 data={"skew_s": estimate.seconds, "method": estimate.method,
                                       "forward_pairs": estimate.forward_pairs,
                                       "reverse_pairs": estimate.reverse_pairs}))
    return estimate.seconds


def feed(monitor: Monitor, streams: list[CaptureStream], skew: float, stream, progress) -> None:
    with progress:
        for parts in merged([s.batches(skew) for s in streams], monitor.started, monitor.stopped):
            monitor.feed_parts(parts)
            stream.emit(monitor)
            progress.update(sum(s.reader.bytes_read for s in streams))


# Damage that loses frames in the midst of a capture (a damaged stretch stepped over, compressed data after
# damage) or leaves them judged out of their place: verdicts near it may be wrong.  A record cut off at the
# end (a capture stopped mid-write) and frames of a link type not read are notes.
_WARNS = ("skipped", "compressed", "order")


def capture_notes(readers: list[CaptureReader]) -> list[Diagnostic]:
    notes = []
    for reader in readers:
        for damage in reader.damage:
            size = f"; {damage.size} bytes" if damage.size else ""
            where = f" at byte {damage.offset} (before frame {damage.frame}{size})" if damage.offset >= 0 else ""
            note = d.UNDECODABLE.at(None, what=f"{reader.path}: {damage.detail}{where}",
                                    data={"file": reader.path, "damage": damage.what, "offset": damage.offset,
                                          "bytes": damage.size, "frame": damage.frame})
            notes.append(note.with_severity(d.Severity.WARNING) if damage.what in _WARNS else note)
        if reader.dropped:
            notes.append(d.CAPTURE_GAP.at(None, what=f"{reader.path}: the capturing interfaces report "
                                          f"{reader.dropped} dropped packets: missing packets are not LB drops",
                                          data={"file": reader.path, "dropped": reader.dropped}))
    return notes


class Stream:
    """Writes witnesses as verdicts appear and, with --format jsonl (or text, live), each verdict; with
    jsonl, the notes on the run (clock skew, damaged files, drops) too, as they are made."""

    def __init__(self, args, stdout: TextIO, live_text: bool = False):
        self.jsonl = args.format == "jsonl"
        self.text = live_text
        self.directory = args.witness_dir
        self.stdout = stdout
        self.noted = 0  # notes of the monitor written so far

    def emit(self, monitor: Monitor) -> None:
        for verdict in monitor.book.take_fresh():
            if self.directory and verdict.witness is not None and verdict.witness.packets:
                self._witness(monitor, verdict)
            if self.jsonl:
                write_line(verdict.diagnostic(), self.stdout)
            elif self.text:
                from lbspec.render import render_text

                render_text([verdict.diagnostic()], monitor.spec.sources, self.stdout)
                self.stdout.flush()
        if self.jsonl:
            for note in monitor.notes[self.noted:]:
                write_line(note, self.stdout)
            self.noted = len(monitor.notes)

    def _witness(self, monitor: Monitor, verdict) -> None:
        """Write the verdict's witness capture; once one cannot be written, note why (LB291) and write no more:
        the run goes on, its verdicts without their files."""
        name = witness_name(verdict.serial, verdict.kind.code, str(verdict.facts.get("property", "capture")))
        try:
            verdict.witness.file = write_witness(self.directory, name, verdict.witness)
        except OSError as error:
            directory, self.directory = self.directory, None
            reason = error.strerror or str(error)
            monitor.note(d.WITNESS_UNWRITTEN.at(
                None, what=f"cannot write witness captures to {directory}: {reason}; verdicts from number "
                f"{verdict.serial} on have no witness file",
                data={"directory": directory, "reason": reason, "from_verdict": verdict.serial}))


class Progress:
    """A rich progress bar on stderr, only when it is a terminal."""

    def __init__(self, bar=None, task=None):
        self.bar, self.task = bar, task

    @classmethod
    def make(cls, args, stderr: TextIO, readers: list[CaptureReader]) -> Progress:
        if args.no_progress or not (hasattr(stderr, "isatty") and stderr.isatty()):
            return cls()
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TimeRemainingColumn

        bar = Bar("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(file=stderr), transient=True)
        total = sum(r.size for r in readers) or None
        return cls(bar, bar.add_task("reading captures", total=total))

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
