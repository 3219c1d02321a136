"""Trace reduction after hypothesis: drop whole flows, faults and packets while the same verdict stands.

Hypothesis shrinks the *choices* that generated a trace; a flow removed there
renumbers the flows after it, which may move their client ports and so their
hash -- and the shrinker stops in a local minimum with flows that only keep
another flow's port in place.  Here the trace itself is reduced (delta
debugging, one event group at a time): a flow, a fault or a packet is dropped
when the trace without it still gets a verdict with the same code for the
same property, and nothing else of the trace changes.  TCP flows keep their
SYN while any of their packets remain.
"""

from __future__ import annotations

from collections.abc import Callable

from lbspec.harness.trace import Event, Fault, Send, Trace

__all__ = ["reduce_trace", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 400  # traces judged at most; each is one run of the LB and the monitor


def _without(trace: Trace, drop: set[int]) -> Trace:
    return Trace(tuple(e for i, e in enumerate(trace.events) if i not in drop))


def _groups(trace: Trace) -> list[set[int]]:
    """Candidate removals, biggest first: each flow whole, each fault, then each packet but a TCP SYN."""
    flows: dict[int, set[int]] = {}
    for i, event in enumerate(trace.events):
        if isinstance(event, Send):
            flows.setdefault(event.flow, set()).add(i)
    groups = sorted(flows.values(), key=len, reverse=True)
    groups += [{i} for i, e in enumerate(trace.events) if isinstance(e, Fault)]
    groups += [{i} for i, e in enumerate(trace.events) if isinstance(e, Send) and not _opens(e, trace, i)]
    return groups


def _opens(event: Event, trace: Trace, index: int) -> bool:
    """Is this the first packet of a TCP flow (which stays while the flow has packets)?"""
    if event.segment.proto != "tcp":
        return False
    return not any(isinstance(e, Send) and e.flow == event.flow for e in trace.events[:index])


def reduce_trace(trace: Trace, fails: Callable[[Trace], bool], budget: int = MAX_ATTEMPTS) -> Trace:
    """The smallest trace reachable by dropping event groups for which ``fails`` stays true."""
    attempts = 0
    changed = True
    while changed and attempts < budget:
        changed = False
        for group in _groups(trace):
            if attempts >= budget:
                break
            candidate = _without(trace, group)
            attempts += 1
            if len(candidate) and fails(candidate):
                trace, changed = candidate, True
                break
    return trace
