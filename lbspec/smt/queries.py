"""Questions asked of one service: can a property break, can a rule match, can a backend be chosen.

Each question builds a scenario (one or two symbolic packets, backend
failures, the LB's views and choices), asks Z3 for a model, and turns the
answer into plain data: a status, the witness as evaluator steps, and the spec
spans of an unsat core.  Nothing that leaves this module holds a Z3 object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import z3

from lbspec.ir import Span
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m
from lbspec.semantics.judge import grace, preserved_fields
from lbspec.smt.encoding import (
    NO_BACKEND, NO_RULE, OTHERWISE_DROP, REJECT, Encoding, SymDecision, SymHealth, Tagged,
)
from lbspec.smt.solver import SolverSettings, make_solver
from lbspec.smt.symbolic import SymPacket, all_of, any_of, filter_formula

__all__ = ["Answer", "ServiceQueries"]


@dataclass
class Answer:
    """The solver's answer, in plain Python."""

    status: str  # "sat" | "unsat" | "unknown"
    seconds: float
    steps: list[ev.Step] = field(default_factory=list)
    core: list[Span] = field(default_factory=list)
    reason: str = ""  # why the solver gave up, for "unknown"


@dataclass
class _Scenario:
    """The symbolic pieces of a family of questions, asserted once into their own solver."""

    tagged: Tagged
    constraints: list[z3.BoolRef]
    health: SymHealth
    packets: list[tuple[SymPacket, SymDecision, z3.ArithRef]]  # packet, its decision, its time
    solver: z3.Solver | None = None
    tiers: list[list[z3.BoolRef]] | None = None  # the wishes for a witness (built once: many terms)

    def in_scope(self, scope: m.Filter) -> list[z3.BoolRef]:
        return [filter_formula(scope, packet) for packet, _, _ in self.packets]


class ServiceQueries:
    """All questions about one service.

    The encoding of a scenario (one packet; two packets apart in time; two at
    the same instant) is built once and asserted into a solver of its own;
    each question only pushes its goal.  Building Z3 terms from Python costs
    far more than solving these small problems, so this is where the time goes.
    """

    def __init__(self, service: m.Service, settings: SolverSettings = SolverSettings()):
        self.service = service
        self.settings = settings
        self.ctx = z3.Context()
        self.enc = Encoding(service, self.ctx)
        self.zero = self.enc.real(0)
        self._cache: dict[str, _Scenario] = {}
        self._source_networks = source_networks(service)

    # ------------------------------------------------------------ plumbing --
    def _seal(self, scenario: _Scenario) -> _Scenario:
        scenario.solver = make_solver(self.ctx, self.settings)
        scenario.solver.add(*self.enc.guarded(scenario.tagged), *scenario.constraints)
        return scenario

    def _ask(self, scenario: _Scenario, goal: list[z3.BoolRef], want_model: bool = True,
             extra: Tagged | None = None) -> Answer:
        solver = scenario.solver
        solver.push()
        try:
            if extra is not None:
                solver.add(*self.enc.guarded(extra))
            solver.add(*goal)
            started = time.perf_counter()
            result = solver.check(*self.enc.assumptions())
            seconds = time.perf_counter() - started
            if result == z3.sat:
                steps = self._steps(scenario, self._nicest(scenario) or solver.model()) if want_model else []
                return Answer("sat", seconds, steps)
            if result == z3.unsat:
                return Answer("unsat", seconds, core=self.enc.spans(solver.unsat_core()))
            return Answer("unknown", seconds, reason=solver.reason_unknown())
        finally:
            solver.pop()

    def _nicest(self, scenario: _Scenario) -> z3.ModelRef | None:
        """A model with values a person would pick, if one exists (called with the question asserted)."""
        solver = scenario.solver
        if scenario.tiers is None:
            scenario.tiers = self._preferences(scenario)
        for tier in scenario.tiers:
            solver.push()
            try:
                solver.add(*tier)
                if solver.check(*self.enc.assumptions()) == z3.sat:
                    return solver.model()
            finally:
                solver.pop()
        return None

    def _preferences(self, scenario: _Scenario) -> list[list[z3.BoolRef]]:
        """Tiers of wishes for a witness: documentation addresses, ephemeral ports, SYN then ACK, whole seconds."""
        def bv(value: int, bits: int = 128) -> z3.BitVecRef:
            return z3.BitVecVal(value, bits, self.ctx)

        clients = [(0xCB007107, 0x20010DB8C0DE << 80 | 7),  # 203.0.113.7, 2001:db8:c0de::7
                   (0xC6120007, 0x20010DB8BEEF << 80 | 7)]  # 198.18.0.7, 2001:db8:beef::7
        first = scenario.packets[0][0]
        shape, times = [], []
        for k, (packet, _, at) in enumerate(scenario.packets):
            port = packet.sport == bv(40000 + k, 16)
            shape.append(z3.Implies(packet.has_ports(), port if k == 0 else any_of(port, packet.sport == first.sport)))
            syn, ack = bv(2, 8), bv(16, 8)
            shape.append(z3.Implies(packet.is_proto("tcp"), packet.flags == (syn if k == 0 else ack)))
            if k:
                times.append(any_of(at == self.zero, at >= self.enc.real(1)))
        for name, fails in scenario.health.fails.items():
            times.append(z3.Implies(fails, z3.IsInt(scenario.health.at[name])))
        tiers = []
        for v4, v6 in clients:
            address = [z3.If(p.v6, p.src == bv(v6), p.src == bv(v4)) for p, _, _ in scenario.packets]
            tiers.append(address + shape + times)
        hosts, networks = self._client_hosts(scenario), self._no_network_addresses(scenario)
        return [*tiers, hosts + shape + times, networks + shape + times, shape + times, shape, []]

    def _client_hosts(self, scenario: _Scenario) -> list[z3.BoolRef]:
        """Each packet from a host of a source prefix the spec names (where the clients above do not fit it)."""
        hosts = [_host(n) for n in self._source_networks]
        return [any_of(*(p.address_is("src", h) for h in hosts), ctx=self.ctx) for p, _, _ in scenario.packets]

    def _no_network_addresses(self, scenario: _Scenario) -> list[z3.BoolRef]:
        """No packet from the network address of a source prefix (with room for hosts) it falls in."""
        return [z3.Implies(p.address_in("src", n), z3.Not(p.address_is("src", n.network_address)))
                for p, _, _ in scenario.packets for n in self._source_networks if n.num_addresses > 1]

    def _scenario(self, count: int = 1, gaps: list[z3.ArithRef] | None = None) -> _Scenario:
        """``count`` listened packets at times 0, gaps... (decisions come later)."""
        enc = self.enc
        health = enc.health()
        tagged, constraints, packets = Tagged(), [], []
        times = [self.zero, *(gaps or [])]
        for k in range(count):
            packet, wellformed = enc.packet(f"p{k}")
            tagged.extend(wellformed)
            constraints.append(enc.listened(packet))
            packets.append((packet, None, times[k]))
        constraints += enc.margins(health, times)
        return _Scenario(tagged, constraints, health, packets)

    def _view(self, scenario: _Scenario, k: int) -> dict[str, z3.BoolRef]:
        _, _, at = scenario.packets[k]
        seen, tagged = self.enc.view(scenario.health, at, f"p{k}")
        scenario.tagged.extend(tagged)
        return seen

    def _decide(self, scenario: _Scenario, k: int, seen: dict[str, z3.BoolRef] | None = None,
                pin=None, hashed=None) -> SymDecision:
        packet, _, at = scenario.packets[k]
        seen = self._view(scenario, k) if seen is None else seen
        decision, tagged = self.enc.decision(packet, seen, f"p{k}", pin=pin, hashed=hashed)
        scenario.tagged.extend(tagged)
        scenario.packets[k] = (packet, decision, at)
        return decision

    def _single(self) -> tuple[_Scenario, SymPacket, SymDecision]:
        if "one" not in self._cache:
            scenario = self._scenario(1)
            self._decide(scenario, 0)
            self._cache["one"] = self._seal(scenario)
        scenario = self._cache["one"]
        packet, decision, _ = scenario.packets[0]
        return scenario, packet, decision

    # ----------------------------------------------------------- witnesses --
    def _steps(self, scenario: _Scenario, model: z3.ModelRef) -> list[ev.Step]:
        last = max(_number(model, at) for _, _, at in scenario.packets)
        failures = []
        for name, fails in scenario.health.fails.items():
            if z3.is_true(model.eval(fails, model_completion=True)):
                when = _number(model, scenario.health.at[name])
                if when <= last:
                    failures.append((when, name))
        steps = [ev.Step(when, fail=(name,)) for when, name in sorted(failures)]
        for packet, decision, at in scenario.packets:
            concrete = packet.value(model)
            view = frozenset(n for n, flag in decision.seen.items()
                             if z3.is_true(model.eval(flag, model_completion=True)))
            code = model.eval(decision.choice, model_completion=True).as_long()
            steps.append(ev.Step(_number(model, at), concrete, self._decision(concrete, code), view=view))
        return sorted(steps, key=lambda s: (s.time, s.packet is not None))

    def _decision(self, packet: m.Packet, code: int) -> ev.Decision:
        if code >= 0:
            rule = ev.first_rule(self.service, packet)
            return ev.delivered(self.service, rule, self.enc.backends[code], packet)
        return {NO_RULE: ev.Drop("no-rule"), OTHERWISE_DROP: ev.Drop("otherwise"), REJECT: ev.Reject(),
                NO_BACKEND: ev.Drop("no-backend")}[code]

    # ---------------------------------------------------------- properties --
    def violation(self, check: m.Check) -> Answer:
        """Can the spec break ``check``?  sat: yes, with a witness; unsat: it holds (with a core)."""
        pattern = check.pattern
        if isinstance(pattern, m.Stickiness):
            return self._stickiness(pattern, check.scope)
        if isinstance(pattern, m.Distribution):
            return self._distribution(check.scope)
        scenario, packet, decision = self._single()
        goal, extra = self._broken(pattern, scenario, packet, decision)
        return self._ask(scenario, [*scenario.in_scope(check.scope), goal], extra=extra)

    def satisfiable(self, check: m.Check) -> Answer:
        """Does some listened packet in scope keep a single-packet property?  unsat: a contradiction."""
        pattern = check.pattern
        if isinstance(pattern, (m.Stickiness, m.Distribution)):
            return Answer("sat", 0.0)
        scenario, packet, decision = self._single()
        goal, extra = self._broken(pattern, scenario, packet, decision)
        kept = [*scenario.in_scope(check.scope), z3.Not(goal)]
        if not isinstance(pattern, m.Response):
            kept.append(decision.choice >= 0)  # dropping every packet is no way to keep an absence
        return self._ask(scenario, kept, want_model=False, extra=extra)

    def _broken(self, pattern: m.Pattern, scenario: _Scenario, packet: SymPacket,
                decision: SymDecision) -> tuple[z3.BoolRef, Tagged | None]:
        """The single-packet decision breaks ``pattern`` (and constraints that question needs)."""
        enc, choice = self.enc, decision.choice
        if isinstance(pattern, m.Response):
            dropped = any_of(choice == enc.int(NO_RULE), choice == enc.int(NO_BACKEND))
            if not pattern.unless_no_backend:
                return dropped, None
            return all_of(dropped, z3.Not(enc.candidates_down(decision, scenario.health, self.zero))), None
        if isinstance(pattern, m.Absence):
            return self._absent(pattern, scenario, choice), None
        if isinstance(pattern, m.Integrity):
            # what the mode rewrites, as a constraint of the mode's, so a core names the mode
            fields = preserved_fields(pattern.fields, self.service.mode)
            rewritten = z3.Bool("rewritten", self.ctx)
            terms = [self._rewrites(name, packet, decision) for name in sorted(fields)]
            return rewritten, self._of_mode(rewritten == any_of(*terms, ctx=self.ctx))
        # Reverse path: in every mode replies leave from the address the client
        # sent to -- the LB translates them back (nat, snat, proxy) or the backend
        # holds the VIP (dsr, tunnel).  Asked anyway, so the core names the mode.
        reply = z3.BitVec("reply.src", 128, self.ctx)
        return all_of(choice >= 0, reply != packet.dst), self._of_mode(reply == packet.dst)

    def _of_mode(self, constraint: z3.BoolRef) -> Tagged:
        """``constraint`` tracked as coming from the `mode` statement (if the spec has one)."""
        keys = (self.enc.literal("mode", self.service.mode.span),) if self.service.mode.span else ()
        tagged = Tagged()
        tagged.add(constraint, *keys)
        return tagged

    def _absent(self, pattern: m.Absence, scenario: _Scenario, choice: z3.ArithRef) -> z3.BoolRef:
        enc = self.enc
        if pattern.event == "down":
            limit = enc.real(grace(self.service) if pattern.after_detection else 0.0)
            terms = [all_of(choice == enc.int(i), scenario.health.down(b.name, self.zero),
                            self.zero - scenario.health.at[b.name] >= limit)
                     for i, b in enumerate(enc.backends)]
        elif pattern.event == "backends":
            terms = [choice == enc.int(i) for i, b in enumerate(enc.backends)
                     if (b.name in pattern.backends) != pattern.complement]
        elif pattern.event == "undeclared":  # the LB only ever chooses a declared backend
            terms = [choice >= enc.int(len(enc.backends))]
        else:  # "twice": one decision forwards a packet at most once
            terms = [z3.If(choice >= 0, enc.int(1), enc.int(0)) >= 2]
        return any_of(*terms, ctx=self.ctx)

    def _rewrites(self, name: str, packet: SymPacket, decision: SymDecision) -> z3.BoolRef:
        """The decision forwards ``packet`` with ``name`` changed (see ``evaluate.delivered``)."""
        enc, mode, choice = self.enc, self.service.mode.kind, decision.choice
        if mode in ("dsr", "tunnel") or name in ("payload", "proto"):
            return enc.false()
        if name == "dst":
            return any_of(*(all_of(choice == enc.int(i), z3.Not(packet.address_is("dst", b.address)))
                           for i, b in enumerate(enc.backends)), ctx=self.ctx)
        if name == "dport":
            terms = []
            for rule, selected in zip(self.service.rules, decision.selected):
                for i, b in enumerate(enc.backends):
                    port = rule.target_port or b.port
                    if port is not None:
                        changed = packet.dport != z3.BitVecVal(port, 16, self.ctx)
                        terms.append(all_of(selected, choice == enc.int(i), packet.has_ports(), changed))
            return any_of(*terms, ctx=self.ctx)
        if name == "sport" and mode in ("snat", "proxy"):
            return all_of(choice >= 0, packet.has_ports())
        if (name == "src" and mode in ("snat", "proxy")) or (name == "ttl" and mode == "proxy"):
            return choice >= 0
        return enc.false()

    # ------------------------------------------------------- two packets --
    def _pair(self) -> tuple[_Scenario, z3.ArithRef]:
        """Two packets, the second ``gap`` >= 0 seconds after the first, with flow table and hash memory.

        The first packet is the one-packet scenario's, so its terms are built once.
        """
        if "pair" not in self._cache:
            self._cache["pair"] = self._seal(self._build_pair())
        scenario = self._cache["pair"]
        return scenario, scenario.packets[1][2]

    def _build_pair(self) -> _Scenario:
        enc = self.enc
        one, p0, first = self._single()
        gap = z3.Real("gap", self.ctx)
        p1, wellformed = enc.packet("p1")
        tagged = Tagged(list(one.tagged.items))
        tagged.extend(wellformed)
        constraints = [*one.constraints, enc.listened(p1), gap >= 0, *enc.margins(one.health, [gap])]
        if self.service.affinity.kind != "none":
            constraints.append(gap < enc.real(self.service.affinity.timeout))
        scenario = _Scenario(tagged, constraints, one.health, [one.packets[0], (p1, None, gap)])
        seen = self._view(scenario, 1)
        self._decide(scenario, 1, seen=seen, pin=self._pin(p0, first, p1, gap),
                     hashed=self._hashed(p0, first, p1, seen))
        return scenario

    def _pin(self, p0: SymPacket, first: SymDecision, p1: SymPacket, gap: z3.ArithRef) -> z3.ArithRef | None:
        """The flow-table entry the first packet left for the second, or -1."""
        affinity = self.service.affinity
        if affinity.kind == "none":
            return None
        same = p0.same_flow(p1) if affinity.kind == "flow" else p0.same_field(p1, "src")
        fresh = gap < self.enc.real(affinity.timeout)
        return z3.If(all_of(first.choice >= 0, same, fresh), first.choice, self.enc.int(-1))

    def _hashed(self, p0: SymPacket, first: SymDecision, p1: SymPacket,
                seen: dict[str, z3.BoolRef]) -> tuple[z3.BoolRef, z3.ArithRef] | None:
        """Where the hash sent the first packet's key, if the second has that key and the same eligible set."""
        balance = self.service.balance
        if balance.algorithm not in ("hash", "maglev"):
            return None
        same_key = [p0.same_field(p1, f) for f in balance.fields]
        now = self.enc.eligible_vector(p1, seen)
        same_set = [a == b for a, b in zip(first.eligible, now)]
        return all_of(first.choice >= 0, *same_key, *same_set), first.choice

    def _stickiness(self, pattern: m.Stickiness, scope: m.Filter) -> Answer:
        scenario, gap = self._pair()
        (p0, d0, _), (p1, d1, _) = scenario.packets
        enc = self.enc
        same = p0.same_flow(p1) if pattern.key == "flow" else p0.same_field(p1, "src")
        goal = [*scenario.in_scope(scope), gap > 0, same, d0.choice >= 0, d1.choice >= 0, d1.choice != d0.choice]
        if pattern.while_healthy:
            goal.append(any_of(*(all_of(d0.choice == enc.int(i), scenario.health.up(b.name, gap))
                                for i, b in enumerate(enc.backends)), ctx=self.ctx))
        return self._ask(scenario, goal)

    def _distribution(self, scope: m.Filter) -> Answer:
        """Two different new flows the spec forces onto one backend, though several are eligible."""
        scenario, gap = self._pair()
        (p0, d0, _), (p1, d1, _) = scenario.packets
        enc = self.enc
        forced = []
        pin = self._pin(p0, d0, p1, self.zero)
        if pin is not None:
            forced.append(self.enc.pin_holds(pin, p1, d1))
        hashed = self._hashed(p0, d0, p1, d1.seen)
        if hashed is not None:
            forced.append(hashed[0])
        if not forced:
            return Answer("unsat", 0.0)
        many = z3.Sum(*(z3.If(e, enc.int(1), enc.int(0)) for e in d1.eligible)) >= 2
        return self._ask(scenario, [*scenario.in_scope(scope), gap == 0, z3.Not(p0.same_flow(p1)), d0.choice >= 0, many,
                                    any_of(*forced)])

    # ------------------------------------------------------- as an oracle --
    def decisions_for(self, packet: m.Packet, down: dict[str, float], pinned: str | None = None,
                      hashed: str | None = None) -> tuple[bool, frozenset[ev.Decision]]:
        """What the encoding allows for one concrete packet at time 0: (listened, decisions).

        ``down`` maps backends to how long they have been down; ``pinned`` and
        ``hashed`` are the flow-table entry and hash memory, as for
        ``evaluate.decide``.  The differential tests hold this equal to the
        evaluator.
        """
        enc = self.enc
        symbolic, tagged = enc.packet("q")
        health = enc.health("qh")
        fixed = [symbolic.equals(packet)]
        for b in enc.backends:
            if b.name in down:
                fixed += [health.fails[b.name], health.at[b.name] == enc.real(-down[b.name])]
            else:
                fixed.append(z3.Not(health.fails[b.name]))
        seen, view_tagged = enc.view(health, self.zero, "q")
        tagged.extend(view_tagged)
        pin = enc.int(enc.index[pinned]) if pinned is not None else None
        memory = (enc.true(), enc.int(enc.index[hashed])) if hashed is not None else None
        decision, decision_tagged = enc.decision(symbolic, seen, "q", pin=pin, hashed=memory)
        tagged.extend(decision_tagged)
        scenario = self._seal(_Scenario(tagged, fixed, health, []))
        listened = self._ask(scenario, [enc.listened(symbolic)], want_model=False).status == "sat"
        codes = [NO_RULE, OTHERWISE_DROP, REJECT, NO_BACKEND, *range(len(enc.backends))]
        allowed = frozenset(self._decision(packet, code) for code in codes
                            if self._ask(scenario, [decision.choice == enc.int(code)], want_model=False).status == "sat")
        return listened, allowed

    # ------------------------------------------------------------ structure --
    def scope_possible(self, scope: m.Filter) -> Answer:
        """Can any listened packet match ``scope``?"""
        scenario, _, _ = self._single()
        return self._ask(scenario, scenario.in_scope(scope), want_model=False)

    def uncovered(self) -> Answer:
        """A listened packet that no rule matches."""
        scenario, _, decision = self._single()
        return self._ask(scenario, [z3.Not(decision.covered)])

    def rule_reachable(self, index: int, alone: bool = False, family: int | None = None) -> Answer:
        """Can rule ``index`` be the first match of a listened packet (``alone``: match at all)?  (Yes or no: a
        witness of a rule that matches is never shown.)"""
        scenario, packet, decision = self._single()
        term = decision.matches[index] if alone else decision.selected[index]
        goal = [term] if family is None else [term, packet.family_is(family)]
        return self._ask(scenario, goal, want_model=False)

    def overlap(self, first: int, second: int, inside: bool) -> Answer:
        """Listened packets both rules match; with ``inside``, ones ``first`` matches and ``second`` does not."""
        scenario, _, decision = self._single()
        a, b = decision.matches[first], decision.matches[second]
        return self._ask(scenario, [a, z3.Not(b)] if inside else [a, b, *_nothing_fails(scenario)])

    def backend_reachable(self, name: str) -> Answer:
        """Can any listened packet, in any health state, be sent to backend ``name``?"""
        scenario, _, decision = self._single()
        return self._ask(scenario, [decision.choice == self.enc.int(self.enc.index[name])], want_model=False)

    def per_packet(self) -> Answer:
        """Two packets of one TCP flow sent to different backends while nothing fails."""
        scenario, gap = self._pair()
        (p0, d0, _), (p1, d1, _) = scenario.packets
        return self._ask(scenario, [*scenario.in_scope(m.Test("proto", ("tcp",))), gap > 0, p0.same_flow(p1),
                                    d0.choice >= 0, d1.choice >= 0, d1.choice != d0.choice, *_nothing_fails(scenario)])


def _nothing_fails(scenario: _Scenario) -> list[z3.BoolRef]:
    """Every backend stays up: for questions about rules and balancing, where failures only blur the witness."""
    return [z3.Not(f) for f in scenario.health.fails.values()]


def _number(model: z3.ModelRef, term: z3.ArithRef) -> float:
    value = model.eval(term, model_completion=True)
    if z3.is_int_value(value):
        return float(value.as_long())
    return float(Fraction(value.numerator_as_long(), value.denominator_as_long()))


def source_networks(service: m.Service) -> list[m.Network]:
    """Every source prefix the service names: its rules' `from`, and `src` tests in its checks and waivers."""
    scopes = [c.scope for c in service.checks] + [w.scope for w in service.waivers if w.scope is not None]
    found = [n for r in service.rules for n in r.sources] + [n for s in scopes for n in _source_tests(s)]
    return list(dict.fromkeys(found))


def _source_tests(filter_: m.Filter) -> list[m.Network]:
    if isinstance(filter_, m.Test):
        return list(filter_.values) if filter_.field == "src" else []
    if isinstance(filter_, m.Not):
        return _source_tests(filter_.item)
    if isinstance(filter_, (m.And, m.Or)):
        return [n for f in filter_.items for n in _source_tests(f)]
    return []


def _host(network: m.Network) -> m.Address:
    """A client inside ``network``: the first address after the network address, or the one address of a /32."""
    return network.network_address + (1 if network.num_addresses > 1 else 0)
