"""Backend health over time, from what the capture shows and from an events file.

Evidence that a backend is down: it answers a SYN with a RST, an ICMP
unreachable names it, a SYN forwarded to it gets no answer at all (only in
modes whose replies pass the load balancer), or the LB's own HTTP probe gets a
5xx.  Evidence that it is up: a SYN-ACK, an echo reply, a good probe answer.
An events file (``--events``) adds timed changes, one JSON object per line::

    {"time": 1700000012.5, "backend": "app2", "state": "down"}
    {"time": "2023-11-14T22:13:40Z", "backend": "app2", "state": "up", "service": "web"}

A backend is *down since* the first evidence of a stretch of down evidence
and up again at the next up evidence.  That is the actual health the
evaluator's views are built from (``lbspec.semantics.evaluate.view_bounds``).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from lbspec.diagnostics import InputError, did_you_mean
from lbspec.runtime.compiled import Compiled
from lbspec.runtime.decode import distinct

__all__ = ["HealthTimeline", "HealthEvent", "read_events", "parse_time"]


@dataclass(frozen=True)
class HealthEvent:
    time: float
    gid: int
    up: bool
    source: str  # events | rst | icmp | silence | probe | synack | reply


@dataclass
class _Backend:
    times: list[float] = field(default_factory=list)
    ups: list[bool] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    starts: np.ndarray | None = None  # per event: start of its down stretch (nan when up)
    array: np.ndarray | None = None


class HealthTimeline:
    """Down and up evidence per backend (by gid), queried by time."""

    def __init__(self, compiled: Compiled):
        self.compiled = compiled
        self.backends = [_Backend() for _ in compiled.backends]
        self.version = 0  # bumps on every change: a cache key for derived sets

    def record(self, gid: int, time: float, up: bool, source: str) -> None:
        """Evidence that backend ``gid`` was up or down at ``time`` -- and so were its twins, the backends
        of other services at the same address and port: the same server."""
        for each in (gid, *self.compiled.twins.get(gid, ())):
            self._record(each, time, up, source)

    def _record(self, gid: int, time: float, up: bool, source: str) -> None:
        backend = self.backends[gid]
        at = bisect.bisect_right(backend.times, time)
        if at and backend.ups[at - 1] == up and (at == len(backend.times) or backend.ups[at] == up):
            return  # no change of state
        backend.times.insert(at, time)
        backend.ups.insert(at, up)
        backend.sources.insert(at, source)
        backend.starts = backend.array = None
        self.version += 1

    def record_many(self, gids: np.ndarray, times: np.ndarray, up: bool, source: str) -> None:
        """``record`` each (gid, time) in order; the many that change nothing are found in bulk."""
        for gid in distinct(gids):
            mine = times[gids == gid]
            backend = self.backends[gid]
            while len(mine):
                quiet = self._unchanged(backend, mine, up)
                if quiet.all():
                    break
                first = int(np.argmin(quiet))
                self.record(gid, float(mine[first]), up, source)
                mine = mine[first + 1:]

    @staticmethod
    def _unchanged(backend: _Backend, times: np.ndarray, up: bool) -> np.ndarray:
        """Which of these times would leave the state as it is (see ``record``)."""
        if not backend.times:
            return np.zeros(len(times), bool)
        known = np.array(backend.times, np.float64)
        ups = np.array(backend.ups, bool)
        at = np.searchsorted(known, times, side="right")
        before = (at > 0) & (ups[np.maximum(at - 1, 0)] == up)
        after = (at == len(known)) | (ups[np.minimum(at, len(known) - 1)] == up)
        return before & after

    def events(self) -> list[HealthEvent]:
        return sorted((HealthEvent(t, gid, u, s) for gid, b in enumerate(self.backends)
                       for t, u, s in zip(b.times, b.ups, b.sources)), key=lambda e: e.time)

    def _arrays(self, backend: _Backend) -> tuple[np.ndarray, np.ndarray]:
        if backend.starts is None:
            starts, start = [], math.nan
            for time, up in zip(backend.times, backend.ups):
                start = math.nan if up else (start if not math.isnan(start) else time)
                starts.append(start)
            backend.starts = np.array(starts, np.float64)
            backend.array = np.array(backend.times, np.float64)
        return backend.array, backend.starts

    def down_since(self, gids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """For each (backend, time): since when the backend has been down (nan: not down)."""
        out = np.full(len(gids), np.nan)
        for gid in distinct(gids[gids >= 0]):
            backend = self.backends[gid]
            if not backend.times:
                continue
            rows = np.nonzero(gids == gid)[0]
            times, starts = self._arrays(backend)
            at = np.searchsorted(times, ts[rows], side="right") - 1
            known = at >= 0
            out[rows[known]] = starts[at[known]]
        return out

    def down_at(self, gid: int, time: float) -> float | None:
        """Since when ``gid`` has been down at ``time``, or None."""
        value = self.down_since(np.array([gid]), np.array([time]))[0]
        return None if math.isnan(value) else float(value)

    def down_between(self, gid: int, start: float, end: float) -> bool:
        """Was there down evidence for ``gid`` at any time in [start, end]?"""
        backend = self.backends[gid]
        if self.down_at(gid, start) is not None:
            return True
        lo = bisect.bisect_left(backend.times, start)
        hi = bisect.bisect_right(backend.times, end)
        return any(not u for u in backend.ups[lo:hi])

    def recovered_within(self, gid: int, time: float, window: float) -> bool:
        """Did ``gid`` come back up less than ``window`` seconds before ``time``?"""
        backend = self.backends[gid]
        at = bisect.bisect_right(backend.times, time) - 1
        return at >= 0 and backend.ups[at] and at > 0 and time - backend.times[at] < window

    def seen_up(self, service: int, time: float) -> frozenset[str]:
        """Names of the service's backends with no down evidence at ``time``."""
        refs = self.compiled.services[service].backends
        return frozenset(r.name for r in refs if self.down_at(r.gid, time) is None)


def parse_time(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{where}: `time` must be seconds since the epoch or an ISO 8601 time, not {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too long for a float
            seconds = math.inf
        if not math.isfinite(seconds):  # JSON may say NaN or Infinity: Python's json reads both
            raise InputError(f"{where}: `time` must be a finite number of seconds, not {value!r:.40}")
        return seconds
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InputError(f"{where}: `time` {value!r} is not an ISO 8601 time "
                         "(e.g. 2024-05-01T12:00:00.5Z) or a number of seconds") from None


def read_events(path: str, compiled: Compiled) -> list[HealthEvent]:
    """Parse an events file (JSON lines); raises InputError naming the line at fault."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.readlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read events file {path}: {getattr(error, 'strerror', None) or error}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            events.append(_event(line, f"{path}:{number}", compiled))
    return events


def _event(line: str, where: str, compiled: Compiled) -> HealthEvent:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object like "
                         '{"time": 1700000000.0, "backend": "app1", "state": "down"}')
    missing = [k for k in ("time", "backend", "state") if k not in item]
    if missing:
        raise InputError(f"{where}: missing {', '.join(f'`{k}`' for k in missing)}")
    state = item["state"]
    if state not in ("up", "down"):
        raise InputError(f"{where}: `state` must be \"up\" or \"down\", not {state!r}")
    gid = _backend(item["backend"], item.get("service"), where, compiled)
    return HealthEvent(parse_time(item["time"], where), gid, state == "up", "events")


def _backend(name, service, where: str, compiled: Compiled) -> int:
    services = [plan.service.name for plan in compiled.services]
    if service is not None and service not in services:
        hint = did_you_mean(str(service), services)
        raise InputError(f"{where}: no service named {service!r} in the spec" + (f"; {hint}" if hint else ""))
    refs = [b for b in compiled.backends
            if b.name == name and (service is None or compiled.services[b.service].service.name == service)]
    if not refs:
        hint = did_you_mean(str(name), [b.name for b in compiled.backends])
        raise InputError(f"{where}: no backend named {name!r} in the spec" + (f"; {hint}" if hint else ""))
    if len(refs) > 1:
        raise InputError(f"{where}: backend {name!r} exists in several services; add \"service\"")
    return refs[0].gid


def apply(timeline: HealthTimeline, events: Iterable[HealthEvent]) -> None:
    for event in events:
        timeline.record(event.gid, event.time, event.up, event.source)
