"""A service as constraints: the same rules as lbspec.semantics.evaluate, for Z3.

Every constraint is tagged with the spec statements it comes from (a rule, a
pool, the health check, a failover...).  Each statement gets a tracking
literal; queries assume all of them, so an unsat core names the statements a
guarantee rests on.

Time is a real number of seconds.  Each backend may fail once, at a time of
the solver's choosing; a backend is down at time t once it has failed.  The
LB's view of each backend follows the health settings (see
``evaluate.views``): it sees a backend up while it is up, and while it has been
down for less than the shortest detection time; it sees it down once it has
been down for the longest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import z3

from lbspec.ir import Span
from lbspec.semantics.evaluate import detection_bounds
from lbspec.semantics.model import Backend, Rule, Service
from lbspec.smt.symbolic import SymPacket, all_of, any_of

__all__ = ["NO_RULE", "OTHERWISE_DROP", "REJECT", "NO_BACKEND", "Tagged", "SymHealth", "SymDecision", "Encoding"]

NO_RULE, OTHERWISE_DROP, REJECT, NO_BACKEND = -1, -2, -3, -4


@dataclass
class Tagged:
    """Constraints with the statements each rests on."""

    items: list[tuple[z3.BoolRef, tuple[str, ...]]] = field(default_factory=list)

    def add(self, formula: z3.BoolRef, *keys: str) -> None:
        self.items.append((formula, keys))

    def extend(self, other: Tagged) -> None:
        self.items.extend(other.items)


@dataclass
class SymHealth:
    """When each backend fails (if it does)."""

    fails: dict[str, z3.BoolRef]
    at: dict[str, z3.ArithRef]
    delay: dict[str, z3.ArithRef]  # when the LB marks it down, after it fails

    def down(self, name: str, time: z3.ArithRef) -> z3.BoolRef:
        return all_of(self.fails[name], self.at[name] <= time)

    def up(self, name: str, time: z3.ArithRef) -> z3.BoolRef:
        return z3.Not(self.down(name, time))


@dataclass
class SymDecision:
    """The LB's choice for one packet, and the terms that explain it."""

    choice: z3.ArithRef
    matches: list[z3.BoolRef]
    selected: list[z3.BoolRef]  # rule i is the first that matches
    covered: z3.BoolRef
    eligible: list[z3.BoolRef]  # per backend: eligible under the selected rule
    seen: dict[str, z3.BoolRef]


class Encoding:
    """The constraints of one service over a Z3 context."""

    def __init__(self, service: Service, context: z3.Context):
        self.service = service
        self.ctx = context
        self.backends: list[Backend] = list(service.backends)
        self.index = {b.name: i for i, b in enumerate(self.backends)}
        self.literals: dict[str, tuple[z3.BoolRef, Span | None]] = {}
        self.shortest, self.longest = detection_bounds(service.health)
        self._selections: dict[tuple[str, int], tuple] = {}

    # --- tracking literals
    def literal(self, key: str, span: Span | None) -> str:
        if key not in self.literals:
            self.literals[key] = (z3.Bool(f"@{key}", self.ctx), span)
        return key

    def assumptions(self) -> list[z3.BoolRef]:
        return [lit for lit, _ in self.literals.values()]

    def guarded(self, tagged: Tagged) -> list[z3.BoolRef]:
        """Each constraint as `literals -> constraint`, ready to assert."""
        out = []
        for formula, keys in tagged.items:
            if keys:
                out.append(z3.Implies(all_of(*(self.literals[k][0] for k in keys)), formula))
            else:
                out.append(formula)
        return out

    def spans(self, core: Iterable[z3.BoolRef]) -> list[Span]:
        ids = {c.get_id() for c in core}
        return [span for lit, span in self.literals.values() if lit.get_id() in ids and span is not None]

    # --- constants
    def real(self, value: float) -> z3.ArithRef:
        return z3.RealVal(repr(float(value)), self.ctx)

    def int(self, value: int) -> z3.ArithRef:
        return z3.IntVal(value, self.ctx)

    def true(self) -> z3.BoolRef:
        return z3.BoolVal(True, self.ctx)

    def false(self) -> z3.BoolRef:
        return z3.BoolVal(False, self.ctx)

    # --- traffic
    def packet(self, name: str) -> tuple[SymPacket, Tagged]:
        packet = SymPacket(self.ctx, name)
        tagged = Tagged()
        tagged.add(packet.wellformed())
        return packet, tagged

    def listened(self, packet: SymPacket) -> z3.BoolRef:
        service = self.service
        to_vip = any_of(*(packet.address_is("dst", v) for v in service.vips), ctx=self.ctx)
        served = []
        for listen in service.listens:
            proto = packet.is_proto(listen.protocol)
            served.append(proto if listen.protocol == "icmp" else all_of(proto, packet.port_in("dport", listen.ports)))
        return all_of(to_vip, any_of(*served, ctx=self.ctx))

    def rule_match(self, rule: Rule, packet: SymPacket) -> z3.BoolRef:
        parts = []
        if rule.protocol is not None:
            parts.append(packet.is_proto(rule.protocol))
        if rule.ports:
            parts.append(all_of(packet.has_ports(), packet.port_in("dport", rule.ports)))
        if rule.sources:
            parts.append(any_of(*(packet.address_in("src", n) for n in rule.sources)))
        return all_of(*parts, ctx=self.ctx)

    # --- health
    def health(self, name: str = "h") -> SymHealth:
        fails = {b.name: z3.Bool(f"{name}.fails.{b.name}", self.ctx) for b in self.backends}
        at = {b.name: z3.Real(f"{name}.at.{b.name}", self.ctx) for b in self.backends}
        delay = {b.name: z3.Real(f"{name}.delay.{b.name}", self.ctx) for b in self.backends}
        return SymHealth(fails, at, delay)

    def view(self, health: SymHealth, time: z3.ArithRef, tag: str) -> tuple[dict[str, z3.BoolRef], Tagged]:
        """Which backends the LB sees up at ``time``.

        Each backend that fails is marked down after a detection delay of the
        solver's choosing between the shortest and longest detection times (one
        delay per backend, so a backend once marked down stays marked).
        """
        span = self.service.health.span
        keys = (self.literal("health", span),) if span is not None else ()
        seen = {b.name: z3.Bool(f"{tag}.seen.{b.name}", self.ctx) for b in self.backends}
        tagged = Tagged()
        for name, flag in seen.items():
            down = health.down(name, time)
            if math.isinf(self.shortest):
                tagged.add(flag == self.true(), *keys)
                continue
            delay = health.delay[name]
            tagged.add(all_of(delay >= self.real(self.shortest), delay <= self.real(self.longest)), *keys)
            tagged.add(flag == any_of(z3.Not(down), time - health.at[name] < delay), *keys)
        return seen, tagged

    def margins(self, health: SymHealth, times: Iterable[z3.ArithRef]) -> list[z3.BoolRef]:
        """Keep failure times off the detection thresholds, so a witness replays exactly in floats."""
        if math.isinf(self.shortest):
            return []
        gap = self.real(min(0.001, self.service.health.every / 4))
        out = []
        for name in health.fails:
            for time in times:
                since = time - health.at[name]
                for edge in (self.real(self.shortest), self.real(self.longest)):
                    out.append(any_of(since <= edge - gap, since >= edge + gap))
        return out

    # --- decisions
    def _fits(self, backend: Backend, packet: SymPacket) -> z3.BoolRef:
        mode = self.service.mode
        if mode.kind in ("nat", "snat", "dsr"):
            return packet.family_is(backend.family)
        if mode.kind == "tunnel" and mode.encap == "ipip":
            return z3.Not(packet.v6) if backend.family == 4 else self.false()
        return self.true()

    def _targets(self, failover) -> list[str]:
        if not failover.to_pool:
            return list(failover.targets)
        return [b.name for pool in failover.targets for b in self.service.pool(pool).primaries]

    def eligible(self, rule: Rule, packet: SymPacket, seen: dict[str, z3.BoolRef]) -> tuple[dict[int, z3.BoolRef], tuple[str, ...]]:
        """Per backend index, whether it is eligible for this rule's traffic; and the statements involved."""
        service = self.service
        pool = service.pool(rule.pool)
        keys = [self.literal(f"rule:{rule.index}", rule.span), self.literal(f"pool:{pool.name}", pool.span)]
        if service.mode.span is not None:
            keys.append(self.literal("mode", service.mode.span))
        primaries = [b for b in pool.primaries if b.weight > 0]

        def usable(b: Backend) -> z3.BoolRef:
            return all_of(seen[b.name], self._fits(b, packet))

        out: dict[int, z3.BoolRef] = {self.index[b.name]: usable(b) for b in primaries}
        healthy = z3.Sum(*(z3.If(seen[b.name], self.int(1), self.int(0)) for b in primaries)) if primaries else self.int(0)
        for number, failover in enumerate(service.failovers):
            if failover.source != pool.name:
                continue
            keys.append(self.literal(f"failover:{number}", failover.span))
            triggered = healthy < self.int(failover.below)
            for name in self._targets(failover):
                backend = service.backend(name)
                if backend.weight <= 0:
                    continue
                term = all_of(triggered, usable(backend))
                i = self.index[name]
                out[i] = any_of(out[i], term) if i in out else term
        return out, tuple(keys)

    def selection(self, packet: SymPacket, seen: dict[str, z3.BoolRef]) -> tuple[
            list[z3.BoolRef], list[z3.BoolRef], list[tuple[Rule, dict[int, z3.BoolRef], tuple[str, ...]]]]:
        """Which rule is the first match, and which backends each rule could use now."""
        key = (packet.name, id(seen))
        if key not in self._selections:
            self._selections[key] = (seen, self._select(packet, seen))  # keep ``seen`` alive: ids are reused
        return self._selections[key][1]

    def _select(self, packet: SymPacket, seen: dict[str, z3.BoolRef]):
        matches = [self.rule_match(r, packet) for r in self.service.rules]
        selected, earlier, per_rule = [], self.false(), []
        for rule, match in zip(self.service.rules, matches):
            selected.append(all_of(match, z3.Not(earlier)))
            earlier = any_of(earlier, match)
            eligible, keys = self.eligible(rule, packet, seen)
            per_rule.append((rule, eligible, keys))
        return matches, selected, per_rule

    def eligible_vector(self, packet: SymPacket, seen: dict[str, z3.BoolRef]) -> list[z3.BoolRef]:
        """Per backend: eligible under the rule that takes ``packet``."""
        _, selected, per_rule = self.selection(packet, seen)
        return self._vector(selected, per_rule)

    def _vector(self, selected, per_rule) -> list[z3.BoolRef]:
        terms: list[list[z3.BoolRef]] = [[] for _ in self.backends]
        for chosen, (_, eligible, _) in zip(selected, per_rule):
            for i, term in eligible.items():
                terms[i].append(all_of(chosen, term))
        return [any_of(*t, ctx=self.ctx) for t in terms]

    def decision(self, packet: SymPacket, seen: dict[str, z3.BoolRef], tag: str,
                 pin: z3.ArithRef | None = None,
                 hashed: tuple[z3.BoolRef, z3.ArithRef] | None = None) -> tuple[SymDecision, Tagged]:
        """The choice for ``packet``: a backend index, or a negative code (drop, reject).

        ``pin``: the backend the flow table holds for this packet (-1: none).
        ``hashed``: (when, backend): where `hash`/`maglev` sent this key before,
        when ``when`` holds (same key, same eligible set).  A pin that is still
        eligible wins over the hash; either binds the choice.
        """
        service = self.service
        choice = z3.Int(f"{tag}.choice", self.ctx)
        tagged = Tagged()
        matches, selected, per_rule = self.selection(packet, seen)
        for chosen, (rule, eligible, keys) in zip(selected, per_rule):
            held = self.false()
            if pin is not None and service.affinity.kind != "none":
                held = self._holds(pin, self._keepers(rule, packet, seen))
                tagged.add(z3.Implies(all_of(chosen, held), choice == pin),
                           *keys, self.literal("affinity", service.affinity.span))
            some = any_of(*eligible.values(), ctx=self.ctx)
            fresh = all_of(chosen, z3.Not(held))
            tagged.add(z3.Implies(all_of(fresh, z3.Not(some)), choice == self.int(NO_BACKEND)), *keys)
            options = [all_of(choice == self.int(i), term) for i, term in eligible.items()]
            tagged.add(z3.Implies(all_of(fresh, some), any_of(*options, ctx=self.ctx)), *keys)
            if hashed is not None and service.balance.algorithm in ("hash", "maglev"):
                when, value = hashed
                bound = all_of(chosen, z3.Not(held), when, self._holds(value, eligible))
                tagged.add(z3.Implies(bound, choice == value), *keys, self.literal("balance", service.balance.span))
        covered = any_of(*matches, ctx=self.ctx)
        code = {"drop": OTHERWISE_DROP, "reject": REJECT, None: NO_RULE}[service.otherwise]
        keys = (self.literal("otherwise", service.otherwise_span),) if service.otherwise else ()
        tagged.add(z3.Implies(z3.Not(covered), choice == self.int(code)), *keys)
        eligible_now = self._vector(selected, per_rule)
        return SymDecision(choice, matches, selected, covered, eligible_now, seen), tagged

    def pin_holds(self, pin: z3.ArithRef, packet: SymPacket, decision: SymDecision) -> z3.BoolRef:
        """The flow-table entry ``pin`` decides ``packet`` (its backend keeps the rule that takes it)."""
        terms = [all_of(chosen, self._holds(pin, self._keepers(rule, packet, decision.seen)))
                 for rule, chosen in zip(self.service.rules, decision.selected)]
        return any_of(*terms, ctx=self.ctx)

    def _keepers(self, rule: Rule, packet: SymPacket, seen: dict[str, z3.BoolRef]) -> dict[int, z3.BoolRef]:
        """Backends that keep a pinned flow of this rule: seen up, serving the rule, fitting the family."""
        from lbspec.semantics.evaluate import candidates

        return {self.index[n]: all_of(seen[n], self._fits(self.service.backend(n), packet))
                for n in candidates(self.service, rule)}

    def _holds(self, backend: z3.ArithRef, eligible: dict[int, z3.BoolRef]) -> z3.BoolRef:
        """``backend`` (an index term) is among the eligible ones."""
        terms = [all_of(backend == self.int(i), term) for i, term in eligible.items()]
        return any_of(*terms, ctx=self.ctx)

    def candidates_down(self, decision: SymDecision, health: SymHealth, time: z3.ArithRef) -> z3.BoolRef:
        """No backend that could serve this packet is up (the `unless no backend healthy` excuse)."""
        from lbspec.semantics.evaluate import candidates

        def all_down(names: Iterable[str]) -> z3.BoolRef:
            terms = [health.down(n, time) for n in names]
            return all_of(*terms, ctx=self.ctx)

        parts = [all_of(sel, all_down(candidates(self.service, rule)))
                 for rule, sel in zip(self.service.rules, decision.selected)]
        parts.append(all_of(z3.Not(decision.covered), all_down(candidates(self.service, None))))
        return any_of(*parts)
