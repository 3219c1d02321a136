"""Checks on paired packets: what the LB did with each packet it forwarded.

:class:`Pairs` gathers, for a set of (ingress, egress) pairs of one service,
the client's packet as the spec sees it (``view``), the backend reached, the
rule that applies and the latency.  One function per kind of check turns the
rows that break it into verdicts; the monitor calls them as pairs are found.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from lbspec import diagnostics as d
from lbspec.runtime.classify import flow_key, syn_only
from lbspec.runtime.compiled import CheckPlan, ServicePlan
from lbspec.runtime.decode import TCP, UDP, Packets
from lbspec.runtime.evidence import flow_text
from lbspec.semantics.judge import grace as semantic_grace
from lbspec.semantics.model import MODE_REWRITES

__all__ = ["Pairs", "VIEW_COLUMNS", "run_checks", "HEADER_FIELDS", "late_text", "late_facts", "fragment_of"]

VIEW_COLUMNS = ("proto", "fam", "sa_hi", "sa_lo", "da_hi", "da_lo", "sport", "dport", "flags")
HEADER_FIELDS = ("src", "dst", "sport", "dport", "proto", "ttl", "tcp")


@dataclass
class Pairs:
    """Pairs of one service: window rows ``ii`` (ingress) and ``ee`` (egress), and what they imply."""

    plan: ServicePlan
    table: Packets  # the rows ii and ee index
    ii: np.ndarray
    ee: np.ndarray
    view: dict[str, np.ndarray]
    gid: np.ndarray
    rule: np.ndarray
    listened: np.ndarray
    latency: np.ndarray
    stage: int  # 1: paired on the exact key; 2: on a weaker key (the LB changed the packet); 3: as a whole
    # datagram cut into other fragments on each side (its bytes are known to be the same)
    gathered: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    # pieces of fragmented datagrams: the backend the datagram's first paired piece went to (-1: none, or this)
    datagram_backend: np.ndarray | None = None

    @classmethod
    def gather(cls, win: Packets, plan: ServicePlan, ii: np.ndarray, ee: np.ndarray, stage: int) -> Pairs:
        view = {k: win[k][ii] for k in VIEW_COLUMNS}
        gid = win["gid"][ee]
        if plan.alias:  # a server other services declare too: found as theirs, it is this service's backend here
            gid = gid.copy()
            for theirs, mine in plan.alias.items():
                gid[gid == theirs] = mine
        return cls(plan, win, ii, ee, view, gid, plan.rule_index(view), plan.listened(view),
                   win["ts"][ee] - win["ts"][ii], stage)

    def __len__(self) -> int:
        return len(self.ii)

    @functools.cached_property
    def flows(self) -> np.ndarray:
        """Each pair's flow (the 5-tuple the client sent), for the checks and the accounting alike."""
        return flow_key(self.view)

    @functools.cached_property
    def _by_flow(self) -> np.ndarray:
        return np.argsort(self.flows, kind="stable")

    def by_flow(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (increasing) ordered by flow, each flow's in their order: one sort of the pairs, shared by
        the checks and the accounting."""
        if len(rows) == len(self):
            return self._by_flow
        chosen = np.zeros(len(self), bool)
        chosen[rows] = True
        return self._by_flow[chosen[self._by_flow]]

    def ingress(self, column: str) -> np.ndarray:
        """``column`` of each pair's ingress packet (from the view, or gathered once)."""
        return self.view[column] if column in self.view else self._gather(column, self.ii, "in")

    def egress(self, column: str) -> np.ndarray:
        """``column`` of each pair's egress packet (gathered once)."""
        return self._gather(column, self.ee, "out")

    def _gather(self, column: str, rows: np.ndarray, side: str) -> np.ndarray:
        found = self.gathered.get((side, column))
        if found is None:
            found = self.gathered[side, column] = self.table[column][rows]
        return found


def run_checks(engine, pairs: Pairs, kinds: tuple[str, ...] | None = None) -> None:
    """Every check of the service (or those of ``kinds``) on these pairs."""
    for check in pairs.plan.checks:
        handler = _HANDLERS.get(check.kind)
        if handler is not None and (kinds is None or check.kind in kinds):
            handler(engine, check, pairs)


def _scoped(check: CheckPlan, pairs: Pairs) -> np.ndarray:
    return pairs.listened & check.scope(pairs.view)


def _report(engine, kind: d.Kind, check: CheckPlan, pairs: Pairs, rows: np.ndarray, what, facts) -> None:
    """One verdict per flow: the first offending pair makes it, later ones count."""
    win = pairs.table
    for j in rows.tolist():
        i, e = int(pairs.ii[j]), int(pairs.ee[j])
        engine.verdict(kind, check, int(win["ckey"][i]), float(win["ts"][e]), [i, e],
                       lambda j=j, i=i: (what(j), {"flow": flow_text(win, i), **facts(j)}), table=win)


def _backend(engine, gid: int) -> str | None:
    return engine.compiled.backends[gid].name if gid >= 0 else None


# ----------------------------------------------------------------- response --

def _response(engine, check: CheckPlan, pairs: Pairs) -> None:
    within = check.pattern.within
    late = np.nonzero(_scoped(check, pairs) & (pairs.rule >= 0) & (pairs.latency > within))[0]
    if pairs.datagram_backend is not None:
        _split(engine, check, pairs)
    if len(late):
        _report(engine, d.DROP, check, pairs, late,
                lambda j: late_text(_backend(engine, int(pairs.gid[j])), float(pairs.latency[j]), within),
                lambda j: late_facts(_backend(engine, int(pairs.gid[j])), float(pairs.latency[j]), within))


def late_text(backend: str | None, latency: float, within: float) -> str:
    """A packet forwarded after its deadline (LB200)."""
    return (f"forwarded to {backend or 'an undeclared destination'} after {latency * 1e3:.3f}ms, later than the "
            f"{within * 1e3:g}ms deadline")


def late_facts(backend: str | None, latency: float, within: float) -> dict:
    return {"backend": backend, "latency_ms": latency * 1e3, "deadline_ms": within * 1e3, "forwarded": True}


def _split(engine, check: CheckPlan, pairs: Pairs) -> None:
    """A fragment sent to another backend than the rest of its datagram: no backend gets the whole datagram,
    so the client's packet is lost as surely as if it were dropped."""
    before = pairs.datagram_backend
    bad = np.nonzero(_scoped(check, pairs) & (pairs.rule >= 0) & (before >= 0) & (before != pairs.gid))[0]
    if not len(bad):
        return
    fragment = lambda j: fragment_of(pairs.table, int(pairs.ii[j]))  # noqa: E731
    _report(engine, d.DROP, check, pairs, bad,
            lambda j: f"the fragment at offset {fragment(j)['offset']} of a datagram went to "
                      f"{_backend(engine, int(pairs.gid[j])) or 'an undeclared destination'}, an earlier fragment of "
                      f"it to {_backend(engine, int(before[j]))}: no backend gets the whole datagram",
            lambda j: {"backend": _backend(engine, int(pairs.gid[j])), "forwarded": True,
                       "deadline_ms": check.pattern.within * 1e3,
                       "datagram_backend": _backend(engine, int(before[j])), "fragment": fragment(j)})


def fragment_of(win: Packets, row: int) -> dict[str, int]:
    """What a verdict says of a fragment after the first: where it lies in its datagram, and the datagram."""
    return {"offset": int(win["frag"][row]) >> 1, "ip_id": int(win["ipid"][row])}


# ----------------------------------------------------------------- absence --

def _undeclared(engine, check: CheckPlan, pairs: Pairs) -> None:
    allowed = engine.allowed_backends(pairs)
    expected = engine.expected_ports(pairs)
    win = pairs.table
    port_bad = (expected >= 0) & (pairs.egress("dport") != expected)
    unknown = pairs.egress("unknown")  # dsr to a MAC nobody announced: which backend is not known
    bad = np.nonzero(_scoped(check, pairs) & (~allowed | port_bad) & ~unknown)[0]
    if len(bad):
        _report(engine, d.UNDECLARED_DESTINATION, check, pairs, bad,
                lambda j: _undeclared_text(engine, pairs, j, bool(allowed[j]), int(expected[j])),
                lambda j: {"backend": _backend(engine, int(pairs.gid[j])),
                           "destination": flow_text(win, int(pairs.ee[j])).split(" -> ")[-1],
                           "expected_port": int(expected[j]) if expected[j] >= 0 else None,
                           "reason": _undeclared_reason(engine, pairs, j, bool(allowed[j]))})


def _undeclared_reason(engine, pairs: Pairs, j: int, allowed: bool) -> str:
    if allowed:
        return "port"
    if pairs.gid[j] < 0:
        return "address"
    return "no-rule" if pairs.rule[j] < 0 else "not-for-this-traffic"


def _undeclared_text(engine, pairs: Pairs, j: int, allowed: bool, expected: int) -> str:
    win = pairs.table
    where = flow_text(win, int(pairs.ee[j])).split(" -> ")[-1]
    reason = _undeclared_reason(engine, pairs, j, allowed)
    name = _backend(engine, int(pairs.gid[j]))
    if reason == "address":
        return f"forwarded to {where}, which is no backend the spec declares"
    if reason == "port":
        return f"forwarded to {name} at {where}; the spec says port {expected}"
    if reason == "no-rule":
        return f"forwarded to {name}, but no rule takes this traffic (the spec drops or rejects it)"
    return f"forwarded to {name}, which this traffic's rule does not use"


def _forbidden(engine, check: CheckPlan, pairs: Pairs) -> None:
    bad = np.nonzero(_scoped(check, pairs) & np.isin(pairs.gid, list(check.forbidden)))[0]
    if len(bad):
        _report(engine, d.FORBIDDEN_BACKEND, check, pairs, bad,
                lambda j: f"reached {_backend(engine, int(pairs.gid[j]))}, which `{check.check.title}` rules out",
                lambda j: {"backend": _backend(engine, int(pairs.gid[j]))})


def _down(engine, check: CheckPlan, pairs: Pairs) -> None:
    ts = pairs.egress("ts")
    since = engine.timeline.down_since(pairs.gid, ts)
    # with no health checks nothing ever detects a failure: no grace (as the checker and the evaluator say)
    grace = semantic_grace(pairs.plan.service) if check.pattern.after_detection else 0.0
    elapsed = ts - since
    bad = np.nonzero(_scoped(check, pairs) & (pairs.gid >= 0) & ~np.isnan(since) & (elapsed >= grace))[0]
    if len(bad):
        _report(engine, d.DOWN_BACKEND, check, pairs, bad,
                lambda j: f"forwarded to {_backend(engine, int(pairs.gid[j]))}, down for {elapsed[j]:.3f}s"
                          + (f" (detection window {grace:g}s)" if check.pattern.after_detection else ""),
                lambda j: {"backend": _backend(engine, int(pairs.gid[j])), "down_since": float(since[j]),
                           "down_for_s": float(elapsed[j]), "detection_s": grace,
                           "evidence": engine.down_evidence(int(pairs.gid[j]), float(ts[j]))})


# --------------------------------------------------------------- integrity --

def fields_of(check: CheckPlan, mode: str) -> tuple[str, ...]:
    wanted = set(check.pattern.fields)
    if "headers" in wanted:
        wanted.discard("headers")
        wanted |= set(HEADER_FIELDS) - set(MODE_REWRITES[mode])
    return tuple(sorted(wanted))


def _differences(pairs: Pairs, name: str) -> np.ndarray:
    """True where the egress packet's field ``name`` is not the ingress packet's."""
    i, e = pairs.ingress, pairs.egress
    if name in ("src", "dst"):
        hi, lo = ("sa_hi", "sa_lo") if name == "src" else ("da_hi", "da_lo")
        return (i(hi) != e(hi)) | (i(lo) != e(lo))
    if name in ("sport", "dport"):
        ported = (i("proto") == TCP) | (i("proto") == UDP)
        return ported & (i(name) != e(name))
    if name == "proto":
        return i("proto") != e("proto")
    if name == "ttl":
        drop = i("ttl").astype(np.int64) - e("ttl").astype(np.int64)
        return (drop < 0) | (drop > 1)  # a routing hop takes one
    if name == "tcp":
        tcp = i("proto") == TCP
        return tcp & ((i("seq") != e("seq")) | (i("ack") != e("ack")) | (i("flags") != e("flags")))
    if name == "payload":
        if pairs.stage == 3:  # paired as whole datagrams on their bytes
            return np.zeros(len(pairs), bool)
        cut = (i("pcap") < i("plen")) | (e("pcap") < e("plen"))
        return (i("plen") != e("plen")) | (~cut & (i("digest") != e("digest")))
    return np.zeros(len(pairs), bool)


def _integrity(engine, check: CheckPlan, pairs: Pairs) -> None:
    win = pairs.table
    fields = fields_of(check, pairs.plan.mode)
    changed = {f: _differences(pairs, f) for f in fields}
    any_change = np.logical_or.reduce(list(changed.values())) if changed else np.zeros(len(pairs), bool)
    bad = np.nonzero(_scoped(check, pairs) & any_change)[0]
    if len(bad):
        names = lambda j: [f for f in fields if changed[f][j]]  # noqa: E731
        _report(engine, d.MUTATION, check, pairs, bad,
                lambda j: f"{', '.join(names(j))} changed on the way to "
                          f"{_backend(engine, int(pairs.gid[j])) or 'the backend'} ({pairs.plan.mode} rewrites "
                          f"{', '.join(sorted(MODE_REWRITES[pairs.plan.mode])) or 'nothing'})",
                lambda j: {"backend": _backend(engine, int(pairs.gid[j])), "fields": names(j),
                           "changes": _changes(win, int(pairs.ii[j]), int(pairs.ee[j]), names(j))})


def _changes(win: Packets, i: int, e: int, fields: list[str]) -> dict[str, list]:
    columns = {"src": ("sa_hi", "sa_lo"), "dst": ("da_hi", "da_lo"), "sport": ("sport",), "dport": ("dport",),
               "proto": ("proto",), "ttl": ("ttl",), "tcp": ("seq", "ack", "flags"), "payload": ("plen", "digest")}
    return {f: [[int(win[c][i]) for c in columns[f]], [int(win[c][e]) for c in columns[f]]] for f in fields}


# -------------------------------------------------------------- stickiness --

def _stick(engine, check: CheckPlan, pairs: Pairs) -> None:
    rows = np.nonzero(_scoped(check, pairs) & (pairs.gid >= 0))[0]
    if not len(rows):
        return
    by_client = check.pattern.key == "client"
    keys = (pairs.view["sa_lo"] ^ pairs.view["sa_hi"]) if by_client else pairs.flows
    ts = pairs.egress("ts")
    in_time = len(ts) < 2 or not (ts[1:] < ts[:-1]).any()  # as pairs usually come: no sort by time
    if not in_time:
        rows = rows[np.lexsort((ts[rows], keys[rows]))]
    elif by_client:
        rows = rows[np.argsort(keys[rows], kind="stable")]
    else:
        rows = pairs.by_flow(rows)
    keys, ts = keys[rows], ts[rows]
    gids = pairs.gid[rows]
    fresh = syn_only(pairs.view["flags"][rows]) & (not by_client)  # a new connection may go anywhere
    first = np.r_[True, keys[1:] != keys[:-1]]
    last = np.r_[keys[1:] != keys[:-1], True]
    table = engine.stick_table(check).items
    starts = np.nonzero(first & ~fresh)[0]
    for at, entry, gid in zip(starts.tolist(), map(table.get, keys[starts].tolist()), gids[starts].tolist()):
        if entry is not None and entry[0] != gid:
            _moved(engine, check, pairs, int(rows[at]), entry, float(ts[at]))
    inside = np.nonzero(~first & ~fresh & (gids != np.roll(gids, 1)))[0]
    for at in inside.tolist():
        _moved(engine, check, pairs, int(rows[at]), [int(gids[at - 1]), float(ts[at - 1])], float(ts[at]))
    ends = np.nonzero(last)[0]
    table.update(zip(keys[ends].tolist(), map(list, zip(gids[ends].tolist(), ts[ends].tolist()))))


def _moved(engine, check: CheckPlan, pairs: Pairs, j: int, entry: list, time: float) -> None:
    """A flow moved from ``entry[0]``: a violation unless it idled out or the backend failed."""
    old, last = entry
    if time - last > engine.affinity_timeout(pairs.plan):
        return
    if check.pattern.while_healthy and engine.timeline.down_between(old, last - engine.options.tolerance, time):
        return
    _report(engine, d.AFFINITY_BREAK, check, pairs, np.array([j]),
            lambda j: f"moved from {_backend(engine, old)} to {_backend(engine, int(pairs.gid[j]))} "
                      f"{time - last:.3f}s after its last packet there, while {_backend(engine, old)} was healthy",
            lambda j: {"backend": _backend(engine, int(pairs.gid[j])), "previous_backend": _backend(engine, old),
                       "previous_time": last, "key": check.pattern.key})


_HANDLERS = {"response": _response, "undeclared": _undeclared, "backends": _forbidden, "down": _down,
             "integrity": _integrity, "stick": _stick}
