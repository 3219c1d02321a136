"""Verdicts: violations found in traffic, aggregated per flow, with the packets that show them.

A :class:`Verdict` is mutable while the monitor runs (more packets of the same
flow break the same property: its ``count`` grows); :meth:`Verdict.diagnostic`
turns it into the immutable :class:`~lbspec.diagnostics.Diagnostic` every
renderer prints.  The diagnostic's span is the violated check's (the property
definition or the assertion), so the text renderer shows the spec line; the
facts are in ``data`` (JSON) and the packets in ``witness``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lbspec.diagnostics import Diagnostic, Kind, Note
from lbspec.ir import Span

__all__ = ["PacketRef", "Witness", "Verdict", "VerdictBook", "timestamp"]


_YEAR_10000 = 253_402_300_800  # seconds since 1970: what datetime can still show


def timestamp(ts: float) -> str:
    """An ISO 8601 UTC time with microseconds (or the number, for times before 1971 or after 9999: a
    capture's clock can say anything)."""
    if not math.isfinite(ts) or not 365 * 86400 <= ts < _YEAR_10000:
        return f"{ts:.6f}s"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PacketRef:
    """One captured packet, as a witness shows it."""

    source: str  # the capture file (or stream) it came from
    frame: int  # its number in that file, from 1
    time: float
    side: str  # client | backend | combined
    role: str  # ingress | egress | backend-reply | client-reply | other
    summary: str
    linktype: int
    data: bytes = field(repr=False, default=b"")
    involved: bool = True  # False: a neighbour shown for context

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "frame": self.frame, "time": self.time, "side": self.side,
                "role": self.role, "packet": self.summary, "involved": self.involved}

    def describe(self) -> str:
        return f"{self.source}#{self.frame} {timestamp(self.time)} {self.role}: {self.summary}"


@dataclass
class Witness:
    """The packets that show a violation (``involved``) and their neighbours; ``file``: the pcap they were
    written to (``--witness-dir``), if they were."""

    packets: list[PacketRef]
    file: str | None = None

    def involved(self) -> list[PacketRef]:
        return [p for p in self.packets if p.involved]

    def joined(self, other: Witness) -> Witness:
        """Both witnesses' packets, each once (involved if either says so), in time order."""
        packets: dict[tuple[str, int], PacketRef] = {}
        for ref in self.packets + other.packets:
            seen = packets.get((ref.source, ref.frame))
            if seen is None or (ref.involved and not seen.involved):
                packets[ref.source, ref.frame] = ref
        return Witness(sorted(packets.values(), key=lambda r: (r.time, not r.involved)))

    def describe(self) -> list[str]:
        lines = [p.describe() for p in self.involved()]
        context = len(self.packets) - len(lines)
        neighbours = f"{context} neighbouring packet{'s' if context > 1 else ''}"
        if self.file:
            lines.append(f"(written{' with ' + neighbours if context else ''} to {self.file})")
        elif context:
            lines.append(f"(and {neighbours})")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"packets": [p.to_dict() for p in self.packets]}

    def frames(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for packet in self.involved():
            out.setdefault(packet.source, []).append(packet.frame)
        return out


@dataclass
class Verdict:
    """One violation of one check, for one flow (or group), with how often it recurred."""

    kind: Kind
    span: Span | None
    what: str
    facts: dict[str, Any]
    witness: Witness | None
    time: float
    source_span: Span | None = None
    count: int = 1
    serial: int = 0

    def diagnostic(self) -> Diagnostic:
        data = {**self.facts, "time": self.time, "time_utc": timestamp(self.time), "count": self.count}
        if self.witness is not None:
            data["frames"] = self.witness.frames()
            if self.witness.file:
                data["witness_file"] = self.witness.file
        notes = [Note("tightened or applied by `require` here", self.source_span)] if self.source_span else []
        more = f" (and {self.count - 1} more packet{'s' if self.count > 2 else ''} of this flow)" \
            if self.count > 1 else ""
        return self.kind.at(self.span, what=self.what + more, data=data, witness=self.witness, notes=notes)


class VerdictBook:
    """Collects verdicts: one per (check, code, flow), up to ``limit`` per check and code."""

    def __init__(self, limit: int = 1000):
        self.limit = limit
        self.verdicts: dict[tuple, Verdict] = {}
        self.fresh: list[Verdict] = []
        self.per_check: dict[tuple[str, str], int] = {}
        self.overflow: dict[tuple[str, str], set] = {}  # keys of verdicts past the limit
        self.packets: dict[str, int] = {}  # packets involved, per code

    def seen(self, key: tuple) -> bool:
        return key in self.verdicts

    def unlisted(self) -> int:
        return sum(len(keys) for keys in self.overflow.values())

    def bump(self, key: tuple) -> bool:
        """Count one more packet for an existing verdict; False if there is none."""
        verdict = self.verdicts.get(key)
        if verdict is None:
            return False
        verdict.count += 1
        self.packets[verdict.kind.code] = self.packets.get(verdict.kind.code, 0) + 1
        return True

    def full(self, code: str, check: str) -> bool:
        return self.per_check.get((code, check), 0) >= self.limit

    def overflowed(self, key: tuple, code: str, check: str) -> None:
        """A verdict past the limit: counted, not kept."""
        self.overflow.setdefault((code, check), set()).add(key)
        self.packets[code] = self.packets.get(code, 0) + 1

    def add(self, key: tuple, check: str, verdict: Verdict) -> None:
        code = verdict.kind.code
        verdict.serial = len(self.verdicts) + 1
        self.verdicts[key] = verdict
        self.fresh.append(verdict)
        self.per_check[(code, check)] = self.per_check.get((code, check), 0) + 1
        self.packets[code] = self.packets.get(code, 0) + verdict.count

    def take_fresh(self) -> list[Verdict]:
        fresh, self.fresh = self.fresh, []
        return fresh

    def all(self) -> list[Verdict]:
        return sorted(self.verdicts.values(), key=lambda v: (v.time, v.serial))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for verdict in self.verdicts.values():
            out[verdict.kind.code] = out.get(verdict.kind.code, 0) + 1
        for (code, _check), extra in self.overflow.items():
            out[code] = out.get(code, 0) + len(extra)
        return dict(sorted(out.items()))


def frames_of(refs: Iterable[PacketRef]) -> dict[str, list[int]]:
    return Witness(list(refs)).frames()
