"""What one service fails to guarantee: LB100-LB112, each witness replayed before it is reported."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from lbspec import diagnostics as d
from lbspec.check.hashing import remapped_fraction
from lbspec.check.witness import Witness
from lbspec.ir import Span
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m
from lbspec.semantics.judge import violation
from lbspec.smt import Answer, ServiceQueries, SolverSettings

__all__ = ["ServiceFinder", "FinderOptions"]


@dataclass(frozen=True)
class FinderOptions:
    settings: SolverSettings = SolverSettings()
    explain: bool = False
    library: frozenset[str] = frozenset()  # the names of the library's properties


class ServiceFinder:
    """Runs every check on one service and yields its diagnostics."""

    def __init__(self, service: m.Service, options: FinderOptions = FinderOptions()):
        self.service = service
        self.options = options
        self.queries = ServiceQueries(service, options.settings)
        self._rule_answer: dict[int, Answer] | None = None  # per rule: may it take a packet

    def run(self, done: Callable[[float], None] | None = None) -> list[d.Diagnostic]:
        """Every finding; ``done(fraction)`` is told how far along it is after each step (a service of a
        thousand backends takes a while)."""
        found: list[d.Diagnostic] = []
        finders = (self._coverage, self._rules, self._backends, self._per_packet, self._detection,
                   self._hashing, self._capacity, self._waivers)
        steps = len(finders) + len(self.service.checks)
        for step, finder in enumerate(finders, 1):
            found.extend(_tagged(x, service=self.service.name) for x in finder())
            if done:
                done(step / steps)
        for step, check in enumerate(self.service.checks, len(finders) + 1):
            found.extend(_tagged(x, service=self.service.name, property=check.name) for x in self._property(check))
            if done:
                done(step / steps)
        return found

    # ------------------------------------------------------------ helpers --
    def _unknown(self, what: str, answer: Answer, span: Span | None) -> d.Diagnostic:
        """LB111, saying which limit stopped the solver: Z3 says "canceled" for both, and raising the one that
        did not would change nothing."""
        settings = self.options.settings
        if answer.seconds * 1000 >= 0.9 * settings.timeout_ms:
            limit, help = "timeout", f"the solver ran out of time (--timeout {settings.timeout_ms / 1000:g})"
        else:
            limit, help = "rlimit", f"the solver reached its work limit (--rlimit {settings.rlimit}) before its time"
        return d.UNKNOWN_RESULT.at(span, property=what, seconds=f"{answer.seconds:.3f}s",
                                   help=f"{help}: raise --{limit} or simplify the spec",
                                   data={"seconds": answer.seconds, "reason": answer.reason, "limit": limit})

    def _replay(self, steps: list[ev.Step]) -> ev.Replay | str:
        """The replayed trace, or why the evaluator refused it."""
        replay = ev.Replay(self.service)
        try:
            replay.run(steps)
        except ev.ReplayError as error:
            return str(error)
        return replay

    def _internal(self, what: str, span: Span | None, steps: list[ev.Step]) -> d.Diagnostic:
        trace = "; ".join(s.describe() for s in steps)
        return d.INTERNAL.at(span, problem=f"{what} [{trace}]",
                             help="the checker and the evaluator disagree; please report this spec")

    def _witness(self, name: str | None, summary: str, steps: list[ev.Step]) -> Witness:
        return Witness(name, summary, tuple(steps), self.service.name)

    # ------------------------------------------------------------- LB101 --
    def _coverage(self) -> Iterator[d.Diagnostic]:
        if self.service.otherwise is not None:
            return
        answer = self.queries.uncovered()
        if answer.status == "unknown":
            yield self._unknown("coverage", answer, self.service.span)
        if answer.status != "sat":
            return
        replay = self._replay(answer.steps)
        packet = answer.steps[-1].packet
        if isinstance(replay, str) or replay.outcomes[-1].allowed != {ev.Drop("no-rule")}:
            yield self._internal("LB101 witness does not replay", self.service.span, answer.steps)
            return
        broken = "no_drop" if self.service.backends else None  # a drop with a backend up; none to be up
        witness = self._witness(broken, f"{packet}: no rule matches and there is no `otherwise`", answer.steps)
        yield d.UNCOVERED_TRAFFIC.at(
            self.service.span, witness=witness, label=f"e.g. {packet}",
            help="add a rule for it, or say what happens to it: `otherwise drop` or `otherwise reject`")

    # ------------------------------------------------------- LB102, LB103 --
    def reachable_rules(self) -> list[int]:
        """Rules that may take a packet (those the solver could not decide included)."""
        return [index for index, answer in self._rule_answers().items() if answer.status != "unsat"]

    def _rule_answers(self) -> dict[int, Answer]:
        if self._rule_answer is None:
            self._rule_answer = {r.index: self.queries.rule_reachable(r.index) for r in self.service.rules}
        return self._rule_answer

    def _rules(self) -> Iterator[d.Diagnostic]:
        rules = self.service.rules
        live = set(self.reachable_rules())
        for rule in rules:
            answer = self._rule_answers()[rule.index]
            if answer.status == "unknown":
                yield self._unknown("whether this rule ever matches", answer, rule.span)
            if rule.index in live:
                continue
            alone = self.queries.rule_reachable(rule.index, alone=True)
            if alone.status == "unsat":
                reason = "no listened traffic matches it (check `listen` and the VIPs)"
                notes = []
            else:
                reason = "earlier rules take all of its traffic"
                notes = [d.Note("this earlier rule matches some of the same packets", r.span)
                         for r in rules[:rule.index]
                         if not r.disjoint(rule) and self.queries.overlap(r.index, rule.index, False).status == "sat"]
            yield d.SHADOWED_RULE.at(rule.span, reason=reason, notes=notes,
                                     help="remove it, or move it above the rules that shadow it")
        for first in rules:
            for second in rules[first.index + 1:]:
                if first.pool == second.pool or first.index not in live or second.index not in live \
                        or first.disjoint(second):  # most pairs, in a spec of many rules: no solver needed
                    continue
                found = self._overlap(first, second)
                if found is not None:
                    yield found

    def _overlap(self, first: m.Rule, second: m.Rule) -> d.Diagnostic | None:
        both = self.queries.overlap(first.index, second.index, inside=False)
        inside = self.queries.overlap(first.index, second.index, inside=True) if both.status == "sat" else both
        if "unknown" in (both.status, inside.status):
            undecided = both if both.status == "unknown" else inside
            return self._unknown(f"whether this rule and line {first.span.line} overlap", undecided, second.span)
        if inside.status != "sat":
            return None  # disjoint, or the first is a special case of the second (the usual exception-then-default)
        packet = both.steps[-1].packet
        if isinstance(self._replay(both.steps), str) or not (first.matches(packet) and second.matches(packet)):
            return self._internal("LB102 witness does not replay or matches not both rules", second.span, both.steps)
        witness = self._witness(None, f"{packet} matches both; the first sends it to `{first.pool}`", both.steps)
        return d.OVERLAPPING_RULES.at(
            second.span, witness=witness, label=f"also matched by line {first.span.line}, which goes to `{first.pool}`",
            notes=[d.Note(f"this rule wins for packets both match, e.g. {packet}", first.span)],
            help="make the rules disjoint, or order them so one contains the other")

    # ------------------------------------------------------------- LB106 --
    def _backends(self) -> Iterator[d.Diagnostic]:
        yield from self._impossible_ports()
        unreachable: dict[str, list[m.Backend]] = {}
        proven = self._plainly_reachable()
        for backend in self.service.backends:
            if backend.name in proven:
                continue
            answer = self.queries.backend_reachable(backend.name)
            if answer.status == "unsat":
                unreachable.setdefault(backend.pool, []).append(backend)
            elif answer.status == "unknown":
                yield self._unknown(f"whether `{backend.name}` can be selected", answer, backend.span)
        for pool_name, backends in unreachable.items():
            pool = self.service.pool(pool_name)
            reasons = {b.name: self._unreachable_reason(b) for b in backends}
            if len(backends) == len(pool.backends) and len(set(reasons.values())) == 1 and len(backends) > 1:
                yield d.UNREACHABLE_BACKEND.at(pool.span, what=f"pool `{pool_name}`", reason=reasons[backends[0].name],
                                               help=self._unreachable_help(backends[0]))
                continue
            for backend in backends:
                yield d.UNREACHABLE_BACKEND.at(backend.span, what=f"backend `{backend.name}`",
                                               reason=reasons[backend.name], help=self._unreachable_help(backend))

    def _plainly_reachable(self) -> set[str]:
        """Primaries of weight > 0 in the pool of a rule that takes packets of their family.

        With every backend up they are eligible, and any eligible backend may be
        chosen, so they are reachable: one question per rule and family instead
        of one per backend.
        """
        service, proven = self.service, set()
        for index in self.reachable_rules():
            rule = service.rules[index]
            for family in sorted(service.families):
                members = [b for b in service.pool(rule.pool).primaries
                           if b.weight > 0 and ev.family_fits(service, b, family)]
                if members and self.queries.rule_reachable(index, family=family).status == "sat":
                    proven.update(b.name for b in members)
        return proven

    def _failover_targets(self) -> set[str]:
        names: set[str] = set()
        for failover in self.service.failovers:
            if failover.to_pool:
                names |= {b.name for p in failover.targets for b in self.service.pool(p).primaries}
            else:
                names |= set(failover.targets)
        return names

    def _unreachable_reason(self, backend: m.Backend) -> str:
        service = self.service
        if backend.weight == 0:
            return "its weight is 0"
        targeted = {service.rules[i].pool for i in self.reachable_rules()}
        fed = {f.source for f in service.failovers}
        in_failover = backend.name in self._failover_targets()
        if backend.backup and not in_failover:
            return "it is a backup and no `failover` names it"
        if backend.pool not in targeted and not in_failover:
            return f"no rule sends listened traffic to pool `{backend.pool}`"
        if in_failover and not any(s in targeted for s in fed):
            return "its failover source pool gets no traffic"
        mode = service.mode
        if mode.kind in ("nat", "snat", "dsr") and backend.family not in service.families:
            vips = "IPv6" if backend.family == 4 else "IPv4"
            return f"it is IPv{backend.family} and the VIPs are {vips} only: {mode.kind} cannot change the family"
        if mode.kind == "tunnel" and mode.encap == "ipip" and backend.family == 6:
            return "ipip carries IPv4 to IPv4 backends only"
        return "no listened traffic can reach it (its rules' sources or failover conditions never hold)"

    def _unreachable_help(self, backend: m.Backend) -> str:
        if backend.weight == 0:
            return "give it a weight, or remove it"
        if backend.backup:
            backups = ", ".join(b.name for b in self.service.pool(backend.pool).backups)
            return f"add `failover to {backups} when healthy < 1`, or drop `backup`"
        return "send traffic to it, or remove it"

    def _impossible_ports(self) -> Iterator[d.Diagnostic]:
        mode = self.service.mode
        if mode.kind not in ("dsr", "tunnel"):
            return
        how = "direct server return" if mode.kind == "dsr" else "a tunnel"
        for rule in self.service.rules:
            if rule.target_port is not None:
                yield d.UNREACHABLE_BACKEND.at(
                    rule.span, what=f"port mapping `port {rule.target_port}`",
                    reason=f"{how} delivers packets unchanged, so their port cannot be rewritten",
                    help="remove `port`, or use mode nat")
        for backend in self.service.backends:
            if backend.port is not None:
                yield d.UNREACHABLE_BACKEND.at(
                    backend.span, what=f"port {backend.port} of `{backend.name}`",
                    reason=f"{how} delivers packets with the port the client chose",
                    help=f"write the backend without a port: `backend {backend.name} {backend.address}`")

    # ------------------------------------------------------------- LB104 --
    def _per_packet(self) -> Iterator[d.Diagnostic]:
        service = self.service
        if service.affinity.kind != "none" or service.balance.algorithm in ("hash", "maglev"):
            return
        if not any(listen.protocol == "tcp" for listen in service.listens):
            return
        answer = self.queries.per_packet()
        if answer.status == "unknown":
            yield self._unknown("per-packet balancing", answer, service.affinity.span)
        if answer.status != "sat":
            return
        replay = self._replay(answer.steps)
        if isinstance(replay, str):
            yield self._internal(f"LB104 witness does not replay: {replay}", service.affinity.span, answer.steps)
            return
        first, second = answer.steps[0].choice, answer.steps[-1].choice
        witness = self._witness("flow_affinity", f"one TCP connection is split: {first} then {second}",
                                answer.steps)
        yield d.PER_PACKET_BALANCING.at(
            service.affinity.span or service.balance.span or service.span, protocol="TCP", witness=witness,
            help="use `affinity flow` (connection tracking), or `balance maglev` to keep connections whole")

    # ------------------------------------------------------------- LB105 --
    def _detection(self) -> Iterator[d.Diagnostic]:
        health = self.service.health
        shortest, longest = ev.detection_bounds(health)
        if health.kind == "none":
            yield d.DETECTION_WINDOW.at(
                health.span or self.service.span,
                what="nothing detects a dead backend: new flows may reach it for as long as it is dead",
                help="add a health check, e.g. `health tcp every 2s timeout 1s fall 3 rise 2`",
                data={"window_seconds": None})
            return
        yield d.DETECTION_WINDOW.at(
            health.span,
            what=f"new flows may reach a dead backend for up to {longest:g}s "
                 f"(fall {health.fall} x every {health.every:g}s + timeout {health.timeout:g}s)",
            data={"window_seconds": longest, "shortest_seconds": shortest}).with_severity(d.Severity.INFO)

    # ------------------------------------------------------------- LB109 --
    def _hashing(self) -> Iterator[d.Diagnostic]:
        service = self.service
        if service.balance.algorithm not in ("hash", "maglev") or service.affinity.kind != "none":
            return
        for pool_name in dict.fromkeys(r.pool for r in service.rules):
            primaries = [b for b in service.pool(pool_name).primaries if b.weight > 0]
            if len(primaries) < 2:
                continue
            names = tuple(b.name for b in primaries)
            total, avoidable = remapped_fraction(service.balance.algorithm, names, tuple(b.weight for b in primaries))
            kind = "maglev" if service.balance.algorithm == "maglev" else "modulo hashing"
            yield d.HASH_WITHOUT_TRACKING.at(
                service.balance.span or service.span,
                what=f"{kind} without connection tracking: when one of the {len(names)} backends of `{pool_name}` "
                     f"leaves, {total:.0%} of its flows change backend ({avoidable:.0%} of those whose backend "
                     f"stayed)",
                help="add `affinity flow` so existing connections keep their backend"
                     + ("" if service.balance.algorithm == "maglev" else ", or use `balance maglev`"),
                data={"pool": pool_name, "backends": len(names), "moved": total, "moved_among_survivors": avoidable,
                      "algorithm": service.balance.algorithm})

    # ------------------------------------------------------------- LB110 --
    def _capacity(self) -> Iterator[d.Diagnostic]:
        capacity = self.service.capacity
        if capacity is None:
            return
        pools = {self.service.rules[i].pool for i in self.reachable_rules()}
        primaries = [b for p in self.service.pools if p.name in pools for b in p.primaries if b.weight > 0]
        if any(b.max_conn is None for b in primaries):
            return  # some backend has no declared limit
        total, worst = self._worst_case(primaries, capacity.down)
        if total >= capacity.conns:
            return  # math.inf too: a backend taking over has no declared limit
        down = f" with {capacity.down} down" if capacity.down else ""
        yield d.CAPACITY.at(
            capacity.span,
            what=f"the backends carry at most {total} connections{down}, below the {capacity.conns} declared",
            notes=[d.Note(f"lost: {', '.join(b.name for b in worst)}")] if worst else [],
            help="raise `max_conn`, add backends, or lower the declared capacity",
            data={"declared": capacity.conns, "available": total, "down": [b.name for b in worst]})

    def _worst_case(self, primaries: list[m.Backend], down: int) -> tuple[float, list[m.Backend]]:
        """The fewest connections the backends carry with ``down`` primaries down, and which ones.

        The largest limits are not always the worst to lose: losing them may start a failover whose
        targets carry more than the difference.  So each pool is taken on its own -- losing its k largest,
        for each k, and what the failovers that starts add -- and the pools' choices are combined (a
        knapsack over the number down): the exact minimum, in pools x down^2 steps."""
        by_pool: dict[str, list[m.Backend]] = {}
        for backend in primaries:
            by_pool.setdefault(backend.pool, []).append(backend)

        def takeover(pool: str, healthy: int) -> float:
            return sum(self._takeover(f) for f in self.service.failovers if f.source == pool and healthy < f.below)

        # a failover from a pool none of whose primaries carry this traffic has no healthy primary to wait for
        best = {0: (sum(takeover(f.source, 0) for f in self.service.failovers if f.source not in by_pool), [])}
        for pool, members in by_pool.items():
            members.sort(key=lambda b: b.max_conn, reverse=True)
            options = [(takeover(pool, len(members) - k) - sum(b.max_conn for b in members[:k]), members[:k])
                       for k in range(min(len(members), down) + 1)]
            merged: dict[int, tuple[float, list[m.Backend]]] = {}
            for taken, (value, lost) in best.items():
                for k, (more, lost_here) in enumerate(options[:down - taken + 1]):
                    if taken + k not in merged or value + more < merged[taken + k][0]:
                        merged[taken + k] = (value + more, lost + lost_here)
            best = merged
        value, lost = best[max(best)]  # fewer primaries than ``down``: all of them
        return sum(b.max_conn for b in primaries) + value, lost

    def _takeover(self, failover: m.Failover) -> float:
        """The connections a failover's targets carry: math.inf when one has no declared limit."""
        names = [b.name for p in failover.targets for b in self.service.pool(p).primaries] \
            if failover.to_pool else list(failover.targets)
        limits = [self.service.backend(n).max_conn for n in names]
        return math.inf if None in limits else sum(limits)

    # ------------------------------------------------------------- LB108 --
    def _waivers(self) -> Iterator[d.Diagnostic]:
        applied = {c.name for c in self.service.checks}
        for waiver in self.service.waivers:
            if waiver.property not in self.options.library and waiver.property not in applied:
                yield d.VACUOUS.at(waiver.span, what=f"this waives `{waiver.property}`, which the service is not held to",
                                   help="remove the waiver")
                continue
            if waiver.scope is None:
                continue
            answer = self.queries.scope_possible(waiver.scope)
            if answer.status == "unknown":
                yield self._unknown("whether this waiver covers any listened traffic", answer, waiver.span)
            elif answer.status == "unsat":
                yield d.VACUOUS.at(waiver.span, what="this waiver covers no listened traffic",
                                   help="check its filter against `listen` and the VIPs, or remove it")

    # ---------------------------------------------------- LB100, 107, 111 --
    def _property(self, check: m.Check) -> Iterator[d.Diagnostic]:
        where = check.source or (self.service.span if check.origin == "library" else check.span)
        if check.origin == "assert" and self.queries.scope_possible(check.scope).status == "unsat":
            yield d.VACUOUS.at(check.span, what="this assertion can never apply: no listened packet is in its scope",
                               help="check its addresses and ports against `listen` and the VIPs")
            return
        answer = self.queries.violation(check)
        if answer.status == "unknown":
            yield self._unknown(f"`{check.name}`", answer, where)
        elif answer.status == "unsat":
            if self.options.explain:
                yield d.HOLDS.at(where, property=f"`{check.name}`", label=check.title,
                                 notes=[d.Note("rests on this", s) for s in _unique(answer.core)])
        else:
            yield from self._broken(check, answer, where)

    def _broken(self, check: m.Check, answer: Answer, where: Span) -> Iterator[d.Diagnostic]:
        replay = self._replay(answer.steps)
        if isinstance(replay, str):
            yield self._internal(f"witness for `{check.name}` does not replay: {replay}", where, answer.steps)
            return
        why = violation(check, self.service, answer.steps, replay)
        if why is None:
            yield self._internal(f"witness for `{check.name}` does not break it", where, answer.steps)
            return
        if check.origin != "library" and self.queries.satisfiable(check).status == "unsat":
            yield self._contradiction(check)
            return
        steps, replay, why = self._without_idle_failures(check, list(answer.steps), replay, why)
        witness = self._witness(check.name, why, steps)
        clauses = self._clauses(check, steps, replay)
        if check.origin == "library":
            where = next((span for _, span in clauses if span is not None), self.service.span)
        notes = [d.Note(f"`{check.name}` is defined here: {check.title}", check.span)] if check.span != where else []
        if check.source is not None and check.source != where:
            notes.append(d.Note("required here", check.source))
        if self.options.explain:
            notes += [d.Note(f"would have to change: {text}", span) for text, span in clauses if span != where]
        yield d.NOT_GUARANTEED.at(where, property=f"`{check.name}`", reason=check.title, witness=witness,
                                  label=why, notes=notes, help=_advice(check))

    def _without_idle_failures(self, check: m.Check, steps: list[ev.Step], replay: ev.Replay, why: str
                               ) -> tuple[list[ev.Step], ev.Replay, str]:
        """The witness less the backend failures it does not need: the solver is free to fail any backend,
        and a failure in another pool only makes the trace harder to read.  Each is left out when the
        trace still replays and still breaks the check -- the LB then seeing that backend up."""
        for step in [s for s in steps if s.fail and s.packet is None]:
            fewer = [s if s.view is None else replace(s, view=s.view | set(step.fail))
                     for s in steps if s is not step]
            shorter = self._replay(fewer)
            reason = None if isinstance(shorter, str) else violation(check, self.service, fewer, shorter)
            if reason is not None:
                steps, replay, why = fewer, shorter, reason
        return steps, replay, why

    def _contradiction(self, check: m.Check) -> d.Diagnostic:
        """An assertion, or a required property, that every packet it covers breaks: at the line that applies it."""
        where = check.source or check.span
        core = self.queries.satisfiable(check).core
        notes = [d.Note("conflicts with this", s) for s in _unique(core) if s not in (where, check.span)]
        if where != check.span:
            notes.append(d.Note(f"`{check.name}` is defined here: {check.title}", check.span))
        return d.CONTRADICTION.at(where, what=f"`{check.title}` can never hold: every packet it covers breaks it",
                                  notes=notes, help=f"change the {'assertion' if check.origin == 'assert' else 'property'}"
                                                    " or the lines it conflicts with")

    def _clauses(self, check: m.Check, steps: list[ev.Step], replay: ev.Replay) -> list[tuple[str, Span | None]]:
        """The spec clauses the witness went through, most to blame first: what would have to change."""
        service, pattern, out = self.service, check.pattern, []
        if isinstance(pattern, (m.Stickiness, m.Distribution)):
            out.append(("affinity" if service.affinity.span else "no `affinity` (default: flow)", service.affinity.span))
            out.append(("balance" if service.balance.span else "no `balance` (default: round_robin)",
                        service.balance.span))
        if isinstance(pattern, m.Absence) and pattern.event == "down":
            out.append(("health" if service.health.span else "no `health`: nothing detects failures",
                        service.health.span))
        if isinstance(pattern, m.Integrity):
            out.append(("mode", service.mode.span))
        for outcome in replay.outcomes:
            if outcome.rule is not None:
                out.append(("the rule that took the packet", outcome.rule.span))
                out.append(("its pool", service.pool(outcome.rule.pool).span))
                out += [("a failover of that pool", f.span) for f in service.failovers if f.source == outcome.rule.pool]
            elif service.otherwise is None:
                out.append(("no rule matched and there is no `otherwise`", service.span))
        if isinstance(pattern, m.Response):
            out.append(("health" if service.health.span else "no `health`", service.health.span))
        return list(dict.fromkeys(out))


def _tagged(diagnostic: d.Diagnostic, **facts: str) -> d.Diagnostic:
    return replace(diagnostic, data={**(diagnostic.data or {}), **facts})


def _unique(spans: list[Span]) -> list[Span]:
    return sorted(set(spans), key=lambda s: (s.file, s.line, s.column))


def _advice(check: m.Check) -> str:
    if check.origin == "library":
        return (f"change the spec so it holds, or waive it with a reason: "
                f"`waive {check.name} \"why\"` (scoped with `for FILTER` if only some traffic is meant)")
    return "change the spec so the property holds, or the property"
