"""Witnesses: concrete counterexamples in the spec's own terms, confirmed before they are shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lbspec.semantics import evaluate as ev
from lbspec.semantics.model import Packet

__all__ = ["Witness", "packet_to_dict", "step_to_dict"]


@dataclass(frozen=True, slots=True)
class Witness:
    """A trace that shows how a property breaks: backend failures and packets with the LB's choices."""

    property: str | None  # the property the trace breaks; None for a structural finding (LB102)
    summary: str
    steps: tuple[ev.Step, ...]
    service: str = ""

    def describe(self) -> list[str]:
        return [self.summary, *(f"  {step.describe()}" for step in self.steps)]

    def to_dict(self) -> dict[str, Any]:
        return {"property": self.property, "service": self.service, "summary": self.summary,
                "steps": [step_to_dict(s) for s in self.steps]}

    @property
    def packets(self) -> list[Packet]:
        return [s.packet for s in self.steps if s.packet is not None]


def packet_to_dict(packet: Packet) -> dict[str, Any]:
    return {"proto": packet.proto, "src": str(packet.src), "dst": str(packet.dst), "sport": packet.sport,
            "dport": packet.dport, "flags": sorted(packet.flags)}


def _decision_to_dict(decision: ev.Decision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    if isinstance(decision, ev.Forward):
        return {"action": "forward", "backend": decision.backend, "packet": packet_to_dict(decision.packet),
                "rewritten": sorted(decision.rewritten)}
    if isinstance(decision, ev.Drop):
        return {"action": "drop", "reason": decision.reason}
    return {"action": "reject"}


def step_to_dict(step: ev.Step) -> dict[str, Any]:
    out: dict[str, Any] = {"time": step.time}
    if step.fail:
        out["fail"] = list(step.fail)
    if step.recover:
        out["recover"] = list(step.recover)
    if step.packet is not None:
        out["packet"] = packet_to_dict(step.packet)
        out["decision"] = _decision_to_dict(step.choice)
        if step.view is not None:
            out["seen_up"] = sorted(step.view)
    return out
