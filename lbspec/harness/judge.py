"""Judging a recording with the runtime monitor, in memory.

The monitor (:mod:`lbspec.runtime`) gets the recording's faults as health
events and its packets, each with the side it was seen on, at exactly the
times a capture file of the recording would give them -- so the verdicts of
``lbspec monitor`` on the written captures are the verdicts found here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lbspec.diagnostics import Diagnostic
from lbspec.harness.adapter import Recording
from lbspec.semantics.model import Spec

__all__ = ["Judgement", "judge", "stamp", "split_time"]


def split_time(epoch: int, time: float) -> tuple[int, int]:
    """Seconds and microseconds of ``epoch + time``, as a pcap record header holds them."""
    micros = round(time * 1e6)
    return epoch + micros // 1_000_000, micros % 1_000_000


def stamp(epoch: int, time: float) -> float:
    """``epoch + time`` exactly as a pcap reader computes it from the record header."""
    seconds, micros = split_time(epoch, time)
    return float(seconds) + float(micros) * 1e-6


@dataclass
class Judgement:
    """The monitor's report on a recording, and the verdicts that count."""

    report: Any  # lbspec.runtime.Report
    verdicts: list[Diagnostic]
    recording: Recording

    @property
    def failed(self) -> bool:
        return bool(self.verdicts)

    @property
    def codes(self) -> list[str]:
        return sorted({v.code for v in self.verdicts})

    @property
    def first(self) -> Diagnostic:
        return self.verdicts[0]


def judge(spec: Spec, recording: Recording, services: Iterable[str] | None = None,
          properties: Iterable[str] | None = None) -> Judgement:
    """Run the monitor over ``recording``; verdicts are the violations of ``properties`` (default: all)."""
    from lbspec.runtime import Monitor, MonitorOptions

    monitor = Monitor(spec, list(services) if services else None, MonitorOptions())
    for fault in recording.faults:
        monitor.health(fault.backend, up=fault.up, time=stamp(recording.epoch, fault.time), service=fault.service)
    for packet in sorted(recording.packets, key=lambda p: p.time):
        monitor.feed(packet.data, time=stamp(recording.epoch, packet.time), side=packet.side)
    report = monitor.close()
    wanted = None if properties is None else set(properties)
    verdicts = [v for v in report.violations
                if wanted is None or (v.data or {}).get("property") in wanted]
    return Judgement(report, verdicts, recording)
