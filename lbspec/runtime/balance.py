"""Who got the load: new flows, bytes and packets per backend, against the weights.

Each new flow is put in a *group*: its service, rule, address family and the
backends seen up when it arrived.  Where a client keeps one backend for all
its connections -- the balance hashes fields that leave out the source port
(HAProxy's ``balance source``), or affinity is per client -- flows are not
picked one by one: the unit is then what is picked (the client, the hashed
fields), and the groups count those, their bytes and packets summed per unit;
the summary still counts flows.  Within a group the evaluator's eligible
backends and their weights give the expected shares.  A flow's bytes and
packets are added up while it lives and folded into its group when it expires
(or at the end).  :meth:`Traffic.verdicts` runs the share test of
:mod:`lbspec.runtime.stats` on every group of every balance check.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from lbspec import diagnostics as d
from lbspec.runtime.classify import mix, reopened, returned, syn_only
from lbspec.runtime.compiled import CheckPlan, Compiled
from lbspec.runtime.decode import TCP
from lbspec.runtime.state import FlowTable
from lbspec.runtime.stats import share_test

__all__ = ["Traffic", "Group"]

UNITS = ("flows", "bytes", "packets")
MIN_EXPECTED = 5.0  # the chi-square approximation needs about this many per backend
_COLUMNS = {"src": ("sa_hi", "sa_lo"), "dst": ("da_hi", "da_lo"), "sport": ("sport",), "dport": ("dport",),
            "proto": ("proto",)}


def picked(service) -> tuple[str, tuple[str, ...]]:
    """What the service's LB picks a backend for -- "flows", "clients" or "hash keys" -- and, unless flows, the
    columns of the packet that make one (the fields a hash reads, or the client's address)."""
    balance, affinity = service.balance, service.affinity
    if balance.algorithm in ("hash", "maglev") and "sport" not in balance.fields:
        columns = tuple(c for name in balance.fields for c in _COLUMNS[name])
        return ("clients" if balance.fields == ("src",) else "hash keys"), columns
    if affinity.kind == "client":
        return "clients", _COLUMNS["src"]
    return "flows", ()


@dataclass
class Group:
    """The flows one (check, service, rule, family, backends up) saw."""

    service: int
    rule: int
    eligible: tuple[int, ...]
    weights: tuple[float, ...]
    counted: str = "flows"  # what the "flows" unit counts: flows, or clients or hash keys (see picked)
    totals: dict[str, dict[int, float]] = field(default_factory=lambda: {u: {} for u in UNITS})
    squares: dict[str, float] = field(default_factory=lambda: {u: 0.0 for u in UNITS})
    first: float = float("inf")
    last: float = float("-inf")

    def add(self, gid: int, amounts: tuple[float, float, float], time: float) -> None:
        for unit, amount in zip(UNITS, amounts):
            self.totals[unit][gid] = self.totals[unit].get(gid, 0.0) + amount
            self.squares[unit] += amount * amount
        self.first, self.last = min(self.first, time), max(self.last, time)

    def add_flows(self, gids: list[int], counts: list[int], first: float, last: float) -> None:
        """``counts[i]`` new flows to ``gids[i]``, between ``first`` and ``last`` (as many ``add``s of one flow)."""
        for gid, count in zip(gids, counts):
            for unit, amount in zip(UNITS, (float(count), 0.0, 0.0)):
                self.totals[unit][gid] = self.totals[unit].get(gid, 0.0) + amount
            self.squares["flows"] += count
        self.first, self.last = min(self.first, first), max(self.last, last)

    def add_folded(self, gids: list[int], amounts: list[float], counts: list[float], squares: tuple[float, float],
                   first: float, last: float) -> None:
        """The bytes and packets of flows that ended (summed per backend ``gids[i]``; ``squares``: the sums
        of their squares, bytes and packets), between ``first`` and ``last``."""
        totals = self.totals
        in_flows, in_bytes, in_packets = totals["flows"], totals["bytes"], totals["packets"]
        for gid, amount, count in zip(gids, amounts, counts):
            in_flows.setdefault(gid, 0.0)
            in_bytes[gid] = in_bytes.get(gid, 0.0) + amount
            in_packets[gid] = in_packets.get(gid, 0.0) + count
        self.squares["bytes"] += squares[0]
        self.squares["packets"] += squares[1]
        self.first, self.last = min(self.first, first), max(self.last, last)

    @property
    def flows(self) -> int:
        return int(sum(self.totals["flows"].values()))

    def expected(self) -> tuple[float, ...]:
        total = sum(self.weights)
        return tuple(w / total for w in self.weights) if total else tuple(0.0 for _ in self.weights)


class Traffic:
    """Per-flow accounting for the summary (check -1) and for every balance check."""

    def __init__(self, compiled: Compiled, cap: int, timeout: float):
        self.compiled = compiled
        # `least_conn` picks the backend with the fewest open connections: how many new flows each gets follows
        # how long its connections last, not the weights, so its services' shares are not tested
        self.checks = [c for c in compiled.checks if c.kind == "balance"
                       and compiled.services[c.service].service.balance.algorithm != "least_conn"]
        self.flows = FlowTable(cap, timeout, on_drop=self._fold)
        self.units = FlowTable(cap, timeout, on_drop=self._fold)  # what is picked, where it is not flows
        self.picked = [picked(plan.service) for plan in compiled.services]
        self.groups: dict[tuple, Group] = {}
        self.backend_flows = np.zeros(len(compiled.backends), np.int64)
        self.backend_bytes = np.zeros(len(compiled.backends), np.float64)
        self._bits: dict[int, list[int]] = {}  # check positions per bit set

    def account(self, engine, pairs, rows: np.ndarray) -> None:
        """Pairs ``rows`` (forwarded, listened, to a known backend) of one service."""
        if not len(rows):
            return
        payload = pairs.ingress("plen")
        self.backend_bytes += np.bincount(pairs.gid[rows], payload[rows], len(self.backend_bytes))
        self._tally(engine, pairs, pairs.by_flow(rows), pairs.flows, self.flows, grouped=not self._columns(pairs))
        keys = self._unit_keys(pairs)
        if keys is not None:  # the groups count what is picked
            self._tally(engine, pairs, rows[np.argsort(keys[rows], kind="stable")], keys, self.units, grouped=True)

    def entries(self, pairs, rows: np.ndarray) -> list[list | None]:
        """The entries that pairs ``rows`` (accounted) count in the groups: their flows', or what is picked's.
        A proxy's connection carries its bytes after the packet that opened it: see :meth:`carried`."""
        keys = self._unit_keys(pairs)
        table = self.flows if keys is None else self.units
        keys = pairs.flows if keys is None else keys
        return [table.get(k) for k in keys[rows].tolist()]

    def carried(self, entry: list | None, gid: int, amount: int, time: float) -> None:
        """``amount`` bytes more toward backend ``gid`` at ``time`` on a connection counted in ``entry`` (None:
        it has left the table, and only the summary counts them)."""
        self.backend_bytes[gid] += amount
        if entry is not None:
            entry[3] += amount
            entry[1] = max(entry[1], time)

    def _columns(self, pairs) -> tuple[str, ...]:
        return self.picked[pairs.plan.index][1]

    def _unit_keys(self, pairs) -> np.ndarray | None:
        """What each pair's LB picks a backend for (see :func:`picked`), where that is not its flow."""
        columns = self._columns(pairs)
        if not columns:
            return None
        return mix([np.full(len(pairs), pairs.plan.index, np.int64), *(pairs.view[c] for c in columns)])

    def _tally(self, engine, pairs, ordered: np.ndarray, all_keys: np.ndarray, table: FlowTable,
               grouped: bool) -> None:
        """Pairs ``ordered`` (by their ``all_keys``: flows, or units) into ``table``: each new key opened, the
        bytes and packets of each added to its entry.  Flows are counted in the summary; a ``grouped`` key
        in the groups of the balance checks too.  A connection opened on a flow's 5-tuple again, or a flow
        that comes back after idling longer than the LB keeps it (its affinity timeout: a UDP session, say),
        is a flow of its own, balanced anew: the one before it ends there."""
        keys = all_keys[ordered]
        starts = np.nonzero(np.r_[True, keys[1:] != keys[:-1]])[0]
        rounds = None
        if table is self.flows:
            starts, rounds = self._connections(pairs, ordered, keys, starts, engine.affinity_timeout(pairs.plan))
        first = ordered[starts]  # each piece's first pair: a key's, or a new flow's on a 5-tuple counted before
        byte_sums = np.add.reduceat(pairs.ingress("plen")[ordered].astype(np.float64), starts)  # whole bytes: exact
        counts = np.diff(np.r_[starts, len(ordered)])
        ts = pairs.egress("ts")[first]
        keys = keys[starts]
        isns = np.where(syn_only(pairs.ingress("flags")[first]), pairs.ingress("seq")[first], -1)
        for number in range(int(rounds.max()) + 1 if rounds is not None else 1):
            mine = np.nonzero(rounds == number)[0] if rounds is not None else slice(None)
            listed = keys[mine].tolist()
            known = table.items
            if number:
                table.end(listed)  # the flows before these on their 5-tuples are over
            fresh = np.array([i for i, k in enumerate(listed) if k not in known], np.int64)
            if len(fresh):
                self._open(engine, pairs, first[mine][fresh], keys[mine][fresh], ts[mine][fresh], isns[mine][fresh],
                           table, grouped)
            for entry, amount, count, time in zip(map(known.__getitem__, listed), byte_sums[mine].tolist(),
                                                  counts[mine].tolist(), ts[mine].tolist()):
                if time > entry[1]:
                    entry[1] = time
                entry[3] += amount
                entry[4] += count

    def _connections(self, pairs, ordered: np.ndarray, keys: np.ndarray, starts: np.ndarray, timeout: float
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Pairs ``ordered`` by flow (``keys``, each flow's from ``starts``) cut where a new flow begins on a 5-tuple
        counted before: a connection opened on it again (see :func:`reopened`), or a UDP (or ICMP) packet more
        than ``timeout`` after the flow's last (a session the LB has ended).  The pieces' starts, and for each
        piece how many such beginnings of its flow in these pairs are at or before it (None: there are none)."""
        begins = np.zeros(len(ordered), bool)
        begins[starts] = True
        known = self.flows.items
        ts = pairs.egress("ts")[ordered]
        idle = np.zeros(0, np.int64)
        if timeout < self.flows.timeout:  # (the table forgets flows idle longer than its own timeout)
            sessions = np.nonzero(pairs.ingress("proto")[ordered] != TCP)[0]
            idle = sessions[returned(keys[sessions], ts[sessions], begins[sessions], known, timeout)]
        syns = np.nonzero(syn_only(pairs.ingress("flags")[ordered]))[0]
        again = syns[reopened(keys[syns], pairs.ingress("seq")[ordered[syns]], ts[syns], ~begins[syns], known,
                              lambda key: (known[key][7], known[key][1]))] if len(syns) else syns
        if not len(again) and not len(idle):
            return starts, None
        cuts = np.union1d(again, idle)
        pieces = np.union1d(starts, cuts)
        cut = np.isin(pieces, cuts)
        flow = np.cumsum(begins[pieces]) - 1  # each piece's flow
        openings = np.cumsum(cut)
        return pieces, openings - (openings - cut)[begins[pieces]][flow]

    def _open(self, engine, pairs, rows: np.ndarray, keys: np.ndarray, ts: np.ndarray, isns: np.ndarray,
              table: FlowTable, grouped: bool) -> None:
        service = pairs.plan.index
        masks = engine.up_masks(service, ts)
        bits = np.zeros(len(rows), np.int64)  # the balance checks whose groups count it (none: the summary only)
        for position, check in enumerate(self.checks if grouped else ()):
            if check.service == service:
                inside = check.scope({k: v[rows] for k, v in pairs.view.items()})
                bits |= inside.astype(np.int64) << position
        gids = pairs.gid[rows]
        if table is self.flows:
            np.add.at(self.backend_flows, gids, 1)
        rules, families = pairs.rule[rows], pairs.view["fam"][rows].astype(np.int64)
        groups = list(zip(itertools.repeat(service), rules.tolist(), families.tolist(), masks.tolist()))
        times = ts.tolist()
        entries = map(list, zip(gids.tolist(), times, groups, itertools.repeat(0.0), itertools.repeat(0),
                                bits.tolist(), times, isns.tolist()))
        table.items.update(zip(keys.tolist(), entries))
        if bits.any():
            self._count_new(engine, np.stack([rules, families, masks, bits], axis=1), groups, gids, ts)

    def _count_new(self, engine, kinds: np.ndarray, groups: list[tuple], gids: np.ndarray, ts: np.ndarray) -> None:
        """New flows into their groups: per kind of flow (in order of first appearance), a count per backend."""
        _kinds, first, inverse = np.unique(kinds, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        for kind in np.argsort(first).tolist():
            members = np.nonzero(inverse == kind)[0]
            chosen, counts = np.unique(gids[members], return_counts=True)
            times = ts[members]
            for position in self._positions(int(kinds[members[0], 3])):
                group = self._group(position, groups[members[0]], engine)
                group.add_flows(chosen.tolist(), counts.tolist(), float(times.min()), float(times.max()))

    def _positions(self, bits: int) -> list[int]:
        found = self._bits.get(bits)
        if found is None:
            found = self._bits[bits] = [p for p in range(len(self.checks)) if bits >> p & 1]
        return found

    def _group(self, position: int, key: tuple, engine) -> Group:
        full = (position, *key)
        group = self.groups.get(full)
        if group is None:
            service, rule, family, mask = key
            up = frozenset(b.name for i, b in enumerate(self.compiled.services[service].backends) if mask >> i & 1)
            eligible = self.compiled.eligible(service, rule, family, up)
            weights = tuple(float(self.compiled.backends[g].backend.weight) for g in eligible)
            group = self.groups[full] = Group(service, rule, eligible, weights, self.picked[service][0])
        return group

    def _fold(self, entries: list[list]) -> None:
        """Flows that ended: their bytes and packets into their groups, summed per group and backend first
        (a run's end drains every flow at once)."""
        entries = [e for e in entries if e[5]]
        if not entries:
            return
        gids, _last, groups, amounts, counts, bits, times, _isns = zip(*entries)
        kinds: dict[tuple, int] = {}  # (bits, group) -> its number
        kind = np.array([kinds.setdefault(k, len(kinds)) for k in zip(bits, groups)])
        amount, count, time = np.array(amounts, np.float64), np.array(counts, np.float64), np.array(times)
        width = len(self.backend_flows)
        pairs, inverse = np.unique(kind * width + np.array(gids), return_inverse=True)  # (kind, backend) pairs
        inverse = inverse.reshape(-1)
        byte_sums, packet_sums = np.bincount(inverse, amount).tolist(), np.bincount(inverse, count).tolist()
        squares = np.bincount(kind, amount * amount).tolist(), np.bincount(kind, count * count).tolist()
        first, last = np.full(len(kinds), np.inf), np.full(len(kinds), -np.inf)
        np.minimum.at(first, kind, time)
        np.maximum.at(last, kind, time)
        members: dict[int, list[int]] = {}  # kind -> its (kind, backend) pairs
        for i, number in enumerate((pairs // width).tolist()):
            members.setdefault(number, []).append(i)
        backend = (pairs % width).tolist()
        for (flags, group), number in kinds.items():
            mine = members[number]
            for position in self._positions(flags):
                self.groups[(position, *group)].add_folded(
                    [backend[i] for i in mine], [byte_sums[i] for i in mine], [packet_sums[i] for i in mine],
                    (squares[0][number], squares[1][number]), float(first[number]), float(last[number]))

    def finish(self) -> None:
        self.flows.drain()
        self.units.drain()

    # ------------------------------------------------------------ verdicts --

    def verdicts(self, engine, alpha: float) -> None:
        for (position, *_rest), group in sorted(self.groups.items(), key=lambda kv: kv[1].first):
            check = self.checks[position]
            self._judge(engine, check, group, alpha)

    def _judge(self, engine, check: CheckPlan, group: Group, alpha: float) -> None:
        unit = check.pattern.unit
        expected = group.expected()
        if len(group.eligible) < 2 or group.flows * min(p for p in expected if p > 0) < MIN_EXPECTED:
            return
        tests = {u: self._test(group, u, expected) for u in UNITS}
        test = tests[unit]
        if test is None or test.deviation <= check.pattern.tolerance or test.p_value >= alpha:
            return
        names = [self.compiled.backends[g].name for g in group.eligible]
        worst = max(range(len(names)), key=lambda i: abs(test.shares[i] - test.expected[i]))
        what = (f"{names[worst]} got {test.shares[worst]:.1%} of {unit} where its weight gives "
                f"{test.expected[worst]:.1%} (tolerance {check.pattern.tolerance:.0%}, p={test.p_value:.2g}, "
                f"{group.flows} {group.counted})")
        facts = {"unit": unit, "flows": group.flows, "counted": group.counted, "tolerance": check.pattern.tolerance,
                 "backends": {n: {"share": s, "expected": e} for n, s, e in zip(names, test.shares, test.expected)},
                 "p_value": test.p_value, "p_value_flows": _p(tests["flows"]), "p_value_bytes": _p(tests["bytes"]),
                 "p_value_packets": _p(tests["packets"]), "until": group.last,
                 "rule": group.rule}
        engine.verdict(d.IMBALANCE, check, hash((group.service, group.rule, group.eligible)), group.first, [],
                       lambda: (what, facts))

    @staticmethod
    def _test(group: Group, unit: str, expected: tuple[float, ...]):
        totals = [group.totals[unit].get(g, 0.0) for g in group.eligible]
        return share_test(totals, group.squares[unit], expected)


def _p(test) -> float | None:
    return None if test is None else test.p_value
