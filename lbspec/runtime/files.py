"""Feeding capture files to a :class:`~lbspec.runtime.monitor.Monitor` from Python."""

from __future__ import annotations

import os
from collections.abc import Iterable

from lbspec.runtime.monitor import Monitor, Report
from lbspec.runtime.session import Input, capture_notes, open_readers, open_streams
from lbspec.runtime.sources import estimate_skew, merged

__all__ = ["read_captures"]

Paths = Iterable[str | os.PathLike]


def read_captures(monitor: Monitor, client: Paths = (), backend: Paths = (), combined: Paths = (),
                  skew: float | None = None, close: bool = True) -> Report | None:
    """Feed captures through ``monitor`` (merged by time); close it and return the report if ``close``.

    ``skew`` is the backend side's clock offset in seconds; None estimates it
    when both sides are given separately.  Raises CaptureError for a file that
    is not a capture.
    """
    inputs = ([Input(os.fspath(p), "client") for p in client] + [Input(os.fspath(p), "backend") for p in backend]
              + [Input(os.fspath(p), None) for p in combined])
    readers = open_readers(monitor, inputs)
    streams = open_streams(monitor, readers)
    if skew is None:
        near = [s for s in streams if s.side == 0]
        far = [s for s in streams if s.side == 1]
        estimate = estimate_skew(monitor.compiled, near, far)
        skew = estimate.seconds if estimate is not None else 0.0
    for parts in merged([s.batches(skew) for s in streams], monitor.started, monitor.stopped):
        monitor.feed_parts(parts)
    for note in capture_notes(readers):
        monitor.note(note)
    return monitor.close() if close else None
