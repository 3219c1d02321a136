"""The concrete evaluator: the reference meaning of a service, one packet at a time.

Given a resolved service, a packet, which backends the load balancer currently
*sees* as up (its view, from health checks) and its flow table, :func:`decide`
returns every decision the spec allows: forward to backend B (with the packet
as B receives it), drop, or reject.  :class:`Replay` runs a timed trace of
packets and backend failures through the same rules, keeping the flow table,
and is how every witness of the static checker is confirmed before it is
reported.  docs/semantics.md explains the rules in prose; lbspec.smt encodes
exactly the same rules for Z3, and a differential test keeps the two equal.

The rules, in order:

1. Traffic that is not listened traffic (to a VIP, on a listened protocol and
   port) is not the service's business: no decision.
2. The first `forward` rule that matches picks a pool.  No rule: the
   `otherwise` action, or -- with no `otherwise` -- a drop the spec never
   asked for (``Drop("no-rule")``).
3. Eligible backends: the pool's primaries with weight > 0 that the LB sees up
   and that can carry the packet's address family in this mode; plus, for each
   `failover` from the pool whose condition holds (fewer than N primaries of
   weight > 0 seen up), its targets under the same conditions.  None: drop.
4. Affinity: a flow (or, with `affinity client`, a client) the flow table
   holds, within the timeout, goes to its backend while the LB sees that
   backend up and it serves the rule (it need not be eligible for new flows:
   a backup keeps the flows it took during a failover).  Otherwise `hash` and `maglev` send a key (the hashed fields)
   where they sent it before, as long as the eligible set is unchanged.
   Otherwise any eligible backend may be chosen: balancing is about shares,
   which a single decision cannot break.

The LB's view follows the actual health of each backend within the bounds of
the health check: a backend that is up is seen up; one down for less than the
shortest detection time, ``(fall - 1) x every + timeout``, is still seen up;
one down for at least the longest, ``fall x every + timeout``, is seen down;
in between, either -- but once the LB has marked it down it stays marked
until it recovers.  With ``health none`` a dead backend is seen up forever.
A recovered backend is seen up at once (the `rise` delay only withholds new
traffic, which no property requires).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Union

from lbspec.semantics.model import PORTED_PROTOCOLS, Backend, Health, Packet, Rule, Service

__all__ = [
    "Forward", "Drop", "Reject", "Decision", "Outcome", "decide", "eligible", "candidates", "views",
    "view_bounds", "detection_bounds", "flow_key", "family_fits", "Step", "Replay", "ReplayError",
]


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the packet to ``backend``; ``packet`` is what the backend receives."""

    backend: str
    packet: Packet
    rewritten: frozenset[str] = frozenset()  # header fields whose value changes

    def __str__(self) -> str:
        return f"forward to {self.backend}"


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str  # "no-rule" (no rule, no otherwise) | "otherwise" | "no-backend"

    def __str__(self) -> str:
        return {"no-rule": "dropped: no rule takes it", "otherwise": "dropped by `otherwise drop`",
                "no-backend": "dropped: no eligible backend"}[self.reason]


@dataclass(frozen=True, slots=True)
class Reject:
    def __str__(self) -> str:
        return "rejected by `otherwise reject`"


Decision = Union[Forward, Drop, Reject]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the spec allows for one packet, and why."""

    allowed: frozenset[Decision]
    rule: Rule | None = None
    eligible: tuple[str, ...] = ()
    listened: bool = True

    def backends(self) -> frozenset[str]:
        return frozenset(d.backend for d in self.allowed if isinstance(d, Forward))


# ------------------------------------------------------------------ health --

def detection_bounds(health: Health) -> tuple[float, float]:
    """The shortest and longest time from a backend's death until the LB marks it down."""
    if health.kind == "none":
        return math.inf, math.inf
    return (health.fall - 1) * health.every + health.timeout, health.fall * health.every + health.timeout


def view_bounds(service: Service, down: Mapping[str, float],
                marked: frozenset[str] = frozenset()) -> dict[str, frozenset[bool]]:
    """For each backend, whether the LB may see it up (True), down (False), or either.

    ``marked``: down backends the LB has already marked down; they stay so
    until they recover.
    """
    shortest, longest = detection_bounds(service.health)
    bounds = {}
    for backend in service.backends:
        if backend.name not in down:
            bounds[backend.name] = frozenset({True})
        elif backend.name in marked:
            bounds[backend.name] = frozenset({False})
        elif down[backend.name] < shortest:
            bounds[backend.name] = frozenset({True})
        elif down[backend.name] >= longest:
            bounds[backend.name] = frozenset({False})
        else:
            bounds[backend.name] = frozenset({True, False})
    return bounds


def views(service: Service, down: Mapping[str, float],
          marked: frozenset[str] = frozenset()) -> Iterator[frozenset[str]]:
    """Every set of backends the LB may see as up, given which are down, for how long, and already marked."""
    bounds = view_bounds(service, down, marked)
    names = list(bounds)
    for choice in itertools.product(*(sorted(bounds[n]) for n in names)):
        yield frozenset(n for n, up in zip(names, choice) if up)


# -------------------------------------------------------------- selection --

def family_fits(service: Service, backend: Backend, packet: Packet | int) -> bool:
    """Can the mode carry a packet (or any packet of this address family) to this backend?"""
    family = packet if isinstance(packet, int) else packet.family
    kind = service.mode.kind
    if kind in ("nat", "snat", "dsr"):
        return backend.family == family
    if kind == "tunnel" and service.mode.encap == "ipip":
        return family == 4 and backend.family == 4
    return True


def first_rule(service: Service, packet: Packet) -> Rule | None:
    return next((r for r in service.rules if r.matches(packet)), None)


def candidates(service: Service, rule: Rule | None) -> tuple[str, ...]:
    """The backends that serve a rule's traffic, whatever their state (all backends with no rule)."""
    if rule is None:
        return tuple(b.name for b in service.backends)
    names = [b.name for b in service.pool(rule.pool).backends]
    for failover in service.failovers:
        if failover.source == rule.pool:
            names.extend(_targets(service, failover.targets, failover.to_pool))
    return tuple(dict.fromkeys(names))


def _targets(service: Service, targets: tuple[str, ...], to_pool: bool) -> list[str]:
    if not to_pool:
        return list(targets)
    return [b.name for pool in targets for b in service.pool(pool).primaries]


def eligible(service: Service, rule: Rule, packet: Packet, view: frozenset[str]) -> tuple[str, ...]:
    """Backends the rule's traffic may go to now, in declaration order."""
    pool = service.pool(rule.pool)

    def usable(backend: Backend) -> bool:
        return backend.weight > 0 and backend.name in view and family_fits(service, backend, packet)

    names = [b.name for b in pool.primaries if usable(b)]
    healthy = sum(1 for b in pool.primaries if b.weight > 0 and b.name in view)
    for failover in service.failovers:
        if failover.source == pool.name and healthy < failover.below:
            names.extend(n for n in _targets(service, failover.targets, failover.to_pool)
                         if usable(service.backend(n)))
    return tuple(dict.fromkeys(names))


def delivered(service: Service, rule: Rule, backend: Backend, packet: Packet) -> Forward:
    """The packet as ``backend`` receives it, and which header fields changed."""
    kind = service.mode.kind
    if kind in ("dsr", "tunnel"):
        return Forward(backend.name, packet)  # the (inner) packet is untouched
    port = packet.dport
    if packet.proto in PORTED_PROTOCOLS:
        port = rule.target_port or backend.port or packet.dport
    sent = replace(packet, dst=backend.address, dport=port)
    changed = {f for f in ("dst", "dport") if getattr(sent, f) != getattr(packet, f)}
    if kind in ("snat", "proxy"):
        changed |= {"src", "sport"} if packet.proto in PORTED_PROTOCOLS else {"src"}
    if kind == "proxy":
        changed.add("ttl")
    return Forward(backend.name, sent, frozenset(changed))


def decide(service: Service, packet: Packet, view: Iterable[str] | None = None,
           pinned: str | None = None, hashed: str | None = None) -> Outcome:
    """Every decision the spec allows for ``packet``.

    ``view``: the backends the LB sees up (default: all).  ``pinned``: the
    backend the flow table holds for this flow or client, if any and not
    expired.  ``hashed``: the backend `hash`/`maglev` gave this key before
    with the same eligible set.
    """
    if not service.listens_to(packet):
        return Outcome(frozenset(), listened=False)
    rule = first_rule(service, packet)
    if rule is None:
        action = {"drop": Drop("otherwise"), "reject": Reject(), None: Drop("no-rule")}[service.otherwise]
        return Outcome(frozenset({action}))
    view = frozenset(b.name for b in service.backends) if view is None else frozenset(view)
    names = eligible(service, rule, packet, view)
    if pinned is not None and _holds(service, rule, packet, view, pinned):
        chosen: tuple[str, ...] = (pinned,)
    elif not names:
        return Outcome(frozenset({Drop("no-backend")}), rule)
    else:
        chosen = (hashed,) if hashed in names else names
    allowed = frozenset(delivered(service, rule, service.backend(n), packet) for n in chosen)
    return Outcome(allowed, rule, names)


def _holds(service: Service, rule: Rule, packet: Packet, view: frozenset[str], pinned: str) -> bool:
    """A flow-table entry keeps its backend while the LB sees it up and it still serves the rule.

    It need not be eligible for *new* flows: a backup that took a flow during a
    failover keeps it when the primaries return, as connection tracking does.
    """
    backend = service.backend(pinned)
    return pinned in view and pinned in candidates(service, rule) and family_fits(service, backend, packet)


# ------------------------------------------------------------------ traces --

def flow_key(packet: Packet) -> tuple:
    return (packet.proto, packet.src, packet.sport, packet.dst, packet.dport)


def _affinity_key(service: Service, packet: Packet) -> tuple:
    return (packet.src,) if service.affinity.kind == "client" else flow_key(packet)


def _hash_key(service: Service, packet: Packet) -> tuple:
    return tuple(getattr(packet, f) for f in service.balance.fields)


@dataclass(frozen=True, slots=True)
class Step:
    """One event of a trace: backends failing or recovering, then maybe a packet and the LB's choice."""

    time: float
    packet: Packet | None = None
    choice: Decision | None = None  # what the LB did; None: any allowed decision
    fail: tuple[str, ...] = ()
    recover: tuple[str, ...] = ()
    view: frozenset[str] | None = None  # the LB's view; None: any view health allows

    def describe(self) -> str:
        parts = [f"t={self.time:g}s"]
        if self.fail:
            parts.append(f"{', '.join(self.fail)} down")
        if self.recover:
            parts.append(f"{', '.join(self.recover)} up")
        if self.packet is not None:
            parts.append(str(self.packet))
            if self.choice is not None:
                parts.append(f"-> {self.choice}")
        return " ".join(parts)


class ReplayError(AssertionError):
    """A step's choice is not one the spec allows."""


@dataclass
class Replay:
    """Runs a trace through the spec, keeping the flow table and hash memory.

    Each step's ``choice`` (when given) must be allowed, else ReplayError; the
    outcome of every packet step is recorded in ``outcomes``.
    """

    service: Service
    down_since: dict[str, float] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)
    table: dict[tuple, tuple[str, float]] = field(default_factory=dict)
    memory: dict[tuple, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    choices: list[Decision | None] = field(default_factory=list)

    def run(self, steps: Iterable[Step]) -> Replay:
        for step in steps:
            self.step(step)
        return self

    def down_at(self, time: float) -> dict[str, float]:
        return {b: time - since for b, since in self.down_since.items()}

    def step(self, step: Step) -> Outcome | None:
        for name in step.fail:
            self.down_since.setdefault(name, step.time)
        for name in step.recover:
            self.down_since.pop(name, None)
            self.marked.discard(name)
        if step.packet is None:
            return None
        down = self.down_at(step.time)
        if step.view is not None:  # checked backend by backend: the views are as many as 2 ** (backends failing)
            bounds = view_bounds(self.service, down, frozenset(self.marked))
            if not step.view <= bounds.keys() or any((n in step.view) not in b for n, b in bounds.items()):
                raise ReplayError(f"at t={step.time:g}s the LB cannot see {sorted(step.view)} up")
            possible = [step.view]
        else:
            possible = list(views(self.service, down, frozenset(self.marked)))
        outcome = self._union(step, possible)
        if step.choice is not None and step.choice not in outcome.allowed:
            raise ReplayError(f"at t={step.time:g}s {step.packet}: `{step.choice}` is not allowed; "
                              f"allowed: {', '.join(sorted(map(str, outcome.allowed))) or 'nothing'}")
        if len(possible) == 1:
            self.marked |= set(self.down_since) - possible[0]
        self.outcomes.append(outcome)
        self.choices.append(step.choice)
        if isinstance(step.choice, Forward):
            self._remember(step, step.choice.backend, possible)
        return outcome

    def _union(self, step: Step, views_: list[frozenset[str]]) -> Outcome:
        outcomes = [self._decide(step, view) for view in views_]
        allowed = frozenset().union(*(o.allowed for o in outcomes))
        first = outcomes[0]
        return Outcome(allowed, first.rule, tuple(dict.fromkeys(n for o in outcomes for n in o.eligible)),
                       first.listened)

    def _decide(self, step: Step, view: frozenset[str]) -> Outcome:
        packet, service = step.packet, self.service
        pinned = hashed = None
        if service.affinity.kind != "none":
            entry = self.table.get(_affinity_key(service, packet))
            if entry and step.time - entry[1] < service.affinity.timeout:
                pinned = entry[0]
        if service.balance.algorithm in ("hash", "maglev"):
            rule = first_rule(service, packet)
            if rule is not None:
                names = eligible(service, rule, packet, view)
                hashed = self.memory.get((_hash_key(service, packet), names))
        return decide(service, packet, view, pinned, hashed)

    def _remember(self, step: Step, backend: str, possible: list[frozenset[str]]) -> None:
        service, packet = self.service, step.packet
        if service.affinity.kind != "none":
            self.table[_affinity_key(service, packet)] = (backend, step.time)
        if service.balance.algorithm in ("hash", "maglev") and len(possible) == 1:
            # the hash maps a key and an eligible set to a backend; remember it
            # only when the eligible set is known (one possible view)
            rule = first_rule(service, packet)
            names = eligible(service, rule, packet, possible[0])
            self.memory[(_hash_key(service, packet), names)] = backend
