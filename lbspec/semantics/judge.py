"""Does a concrete trace break a property?  The reference meaning of each pattern.

A trace is a list of :class:`~lbspec.semantics.evaluate.Step` already run
through a :class:`~lbspec.semantics.evaluate.Replay` (so every choice in it is
one the spec allows).  :func:`violation` says, in one line, how the trace
breaks the check, or returns None if it does not.  The static checker calls it
on every witness before reporting it.

Two rules worth knowing:

* ``after detection`` uses the longest detection time of the health check;
  with ``health none`` nothing ever detects a failure, so there is no grace at
  all: any packet sent to a dead backend counts.
* Packets of one flow more than the affinity timeout apart are two flows (the
  LB is allowed to forget a flow after its idle timeout).
"""

from __future__ import annotations

import math

from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m

__all__ = ["violation", "preserved_fields", "grace"]

HEADER_FIELDS = frozenset({"src", "dst", "sport", "dport", "proto", "ttl"})


def preserved_fields(check_fields: frozenset[str], mode: m.Mode) -> frozenset[str]:
    """The fields `preserve` holds to their ingress value; `headers` expands per mode."""
    fields = set(check_fields - {"headers"})
    if "headers" in check_fields:
        fields |= HEADER_FIELDS - mode.rewrites
    return frozenset(fields)


def grace(service: m.Service) -> float:
    """How long a dead backend may still get traffic under `after detection`."""
    _, longest = ev.detection_bounds(service.health)
    return 0.0 if math.isinf(longest) else longest


def violation(check: m.Check, service: m.Service, steps: list[ev.Step], replay: ev.Replay) -> str | None:
    """How the replayed trace breaks ``check``, or None."""
    packets = [(s, o) for s, o in zip((s for s in steps if s.packet is not None), replay.outcomes)]
    if not packets or not all(m.matches(check.scope, s.packet) and o.listened for s, o in packets):
        return None
    pattern = check.pattern
    judge = {m.Response: _response, m.Absence: _absence, m.Stickiness: _stickiness,
             m.Distribution: _distribution, m.Integrity: _integrity, m.ReversePath: _never}[type(pattern)]
    return judge(pattern, service, packets, replay, steps)


def _down_at(steps: list[ev.Step], time: float) -> dict[str, float]:
    down: dict[str, float] = {}
    for step in steps:
        if step.time > time:
            break
        for name in step.fail:
            down.setdefault(name, step.time)
        for name in step.recover:
            down.pop(name, None)
    return {name: time - since for name, since in down.items()}


def _response(pattern: m.Response, service, packets, replay, steps) -> str | None:
    step, outcome = packets[-1]
    if not isinstance(step.choice, ev.Drop) or step.choice.reason == "otherwise":
        return None
    down = _down_at(steps, step.time)
    serving = ev.candidates(service, outcome.rule)
    up = [n for n in serving if n not in down]
    if pattern.unless_no_backend and not up:
        return None
    why = "no rule takes it" if step.choice.reason == "no-rule" else "no backend is eligible"
    healthy = f" while {', '.join(up)} {'is' if len(up) == 1 else 'are'} up" if up else ""
    return f"{step.packet} is dropped: {why}{healthy}"


def _absence(pattern: m.Absence, service, packets, replay, steps) -> str | None:
    step, _ = packets[-1]
    choice = step.choice
    if not isinstance(choice, ev.Forward):
        return None
    name = choice.backend
    if pattern.event == "down":
        since = _down_at(steps, step.time).get(name)
        limit = grace(service) if pattern.after_detection else 0.0
        if since is not None and since >= limit:
            return f"{step.packet} goes to {name}, down for {since:g}s"
        return None
    if pattern.event == "backends":
        if (name in pattern.backends) != pattern.complement:
            return f"{step.packet} goes to {name}"
        return None
    if pattern.event == "undeclared":
        return None if name in {b.name for b in service.backends} else f"{step.packet} goes to undeclared {name}"
    return None  # "twice": one decision forwards a packet at most once


def _stickiness(pattern: m.Stickiness, service, packets, replay, steps) -> str | None:
    if len(packets) < 2:
        return None
    (first, _), (second, _) = packets[0], packets[-1]
    a, b = first.choice, second.choice
    if not (isinstance(a, ev.Forward) and isinstance(b, ev.Forward)) or a.backend == b.backend:
        return None
    same = ev.flow_key(first.packet) == ev.flow_key(second.packet) if pattern.key == "flow" \
        else first.packet.src == second.packet.src
    gap = second.time - first.time
    if not same or gap <= 0 or (service.affinity.kind != "none" and gap >= service.affinity.timeout):
        return None
    if pattern.while_healthy and a.backend in _down_at(steps, second.time):
        return None
    what = "flow" if pattern.key == "flow" else f"client {first.packet.src}"
    return f"the {what} went to {a.backend}, then {gap:g}s later to {b.backend} while {a.backend} is up"


def _distribution(pattern: m.Distribution, service, packets, replay, steps) -> str | None:
    if len(packets) < 2:
        return None
    (first, _), (second, outcome) = packets[0], packets[-1]
    if ev.flow_key(first.packet) == ev.flow_key(second.packet):
        return None
    if not isinstance(first.choice, ev.Forward) or len(outcome.eligible) < 2:
        return None
    if outcome.backends() != {first.choice.backend}:
        return None
    return (f"a new flow {second.packet} must follow {first.packet} to {first.choice.backend} although "
            f"{len(outcome.eligible)} backends are eligible: the share of one key is not bounded by the weights")


def _integrity(pattern: m.Integrity, service, packets, replay, steps) -> str | None:
    step, _ = packets[-1]
    if not isinstance(step.choice, ev.Forward):
        return None
    broken = step.choice.rewritten & preserved_fields(pattern.fields, service.mode)
    if not broken:
        return None
    return f"{step.packet} reaches {step.choice.backend} with {', '.join(sorted(broken))} rewritten"


def _never(pattern, service, packets, replay, steps) -> str | None:
    return None  # replies come from the VIP in every mode of the static semantics
