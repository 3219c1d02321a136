"""Replies through a nat load balancer (or a proxy's UDP): each one a backend sends back must reach the client
(LB215).

In nat and snat mode the LB translates a reply back -- its source becomes the VIP and port the client used
(and in snat its destination the client's) -- and changes nothing else.  So a backend's reply (backend side)
and what the client gets (client side) agree on the protocol, the TCP sequence and acknowledgement numbers,
the flags and the length (and a UDP reply on its bytes): they pair on these, within the pairing window, as
client packets pair with what the LB sent on.

Judged (property ``reverse_path``: replies reach the client, from the VIP): replies that carry bytes, and
SYN-ACKs, of TCP and UDP flows a client opened through a nat or snat service (in snat, a flow the LB is
seen to carry for a client: its own checks go to the backends from the same address), and the UDP answers of
a proxy service (nginx `stream` relays each datagram both ways, as snat would).  Not judged: pure
ACKs, FINs and RSTs (an LB may rightly drop those that come after a connection is over, and no byte is lost
with them); ICMP errors (the headers they quote are translated); IP fragments; replies of dsr and tunnel
services (which do not pass the LB) and the TCP of proxy services (judged as byte streams,
:mod:`lbspec.runtime.proxy`).

A reply that pairs with nothing, however late, is LB215 -- unless the client acknowledged its bytes (the
client-side capture missed its copy, or the LB sent it on cut into other segments) before a retransmission of
them reached it, looked for until the answer timeout as drops wait for the health evidence of their time; or
the client reset the flow before the reply could reach it; or the client-side capture does not cover when it
would have come.  (An acknowledgement after a retransmission got across is the retransmission's: TCP sends a
lost reply again, and the client acknowledges that.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from lbspec import diagnostics as d
from lbspec.runtime.classify import BREPLY, CREPLY, INGRESS, carries, flow_key, reaches, resent, segment_end
from lbspec.runtime.decode import TCP, Packets
from lbspec.runtime.evidence import flow_text, witness_of
from lbspec.runtime.pairing import match
from lbspec.runtime.state import FlowTable
from lbspec.runtime.verdicts import Witness

__all__ = ["ReplyTracker"]

_SYN, _RST, _ACK = 2, 4, 16


@dataclass
class _Unpaired:
    """A reply no client-side copy was found for, waiting for the client's acknowledgement of it."""

    time: float
    end: int | None  # the sequence number just past it (TCP: the client may yet acknowledge it)
    checks: list
    facts: dict
    witness: Witness | None
    flow: int  # its flow as the backend sent it (``ckey``), where its retransmissions are
    seq: int
    acked: float = math.inf  # when the client first acknowledged its bytes
    resent: float = math.inf  # when a retransmission of it first reached the client

    @property
    def excused(self) -> bool:
        """Did the client acknowledge it before a retransmission could have brought its bytes?"""
        return self.acked < self.resent


class ReplyTracker:
    """Pairs nat and snat services' backend replies with what reached their clients, and judges the rest."""

    def __init__(self, engine):
        self.engine = engine
        compiled = engine.compiled
        judged = [s.mode in ("nat", "snat", "proxy") and bool(s.of_kind("reverse")) for s in compiled.services]
        self.by_backend = np.array(judged + [False])[compiled.backend_service]  # a reply from it is judged?
        self.active = bool(self.by_backend.any())
        # replies to the LB's own address: snat, and a proxy's UDP (it relays each datagram as snat would)
        self.snat = [s.index for s, j in zip(compiled.services, judged) if j and s.mode in ("snat", "proxy")]
        # snat: the LB's flows to the backends that carry a client's (the 5-tuple its replies come back on) ->
        # [the client's flow, last seen]
        self.carried = FlowTable(engine.options.max_flows, engine.clients.timeout)
        self.waiting: dict[int, list[_Unpaired]] = {}  # client flow -> its replies awaiting an acknowledgement
        self.paired = 0

    def awaited(self, p: Packets) -> np.ndarray | None:
        """Which rows wait for a partner: judged replies (backend side) and what may be their copies (client
        side) -- those classification keyed (``k_reply``, the one column of the window pairing reads); None
        when no service is judged.  (A proxy's TCP is not among them: the proxy tracker takes it.)"""
        if not self.active:
            return None
        role = p["role"]
        return (p["k_reply"] != 0) & ((role == CREPLY) | ((role == BREPLY) & self.by_backend[p["gid"]]))

    def observe(self, p: Packets) -> None:
        """Clients' acknowledgements (and resets) of flows with replies awaiting one."""
        if not self.waiting:
            return
        rows = np.nonzero(p["role"] == INGRESS)[0]
        rows = rows[np.isin(p["ckey"][rows], list(self.waiting))]
        for row in rows.tolist():
            entries = self.waiting[int(p["ckey"][row])]
            flags, time = int(p["flags"][row]), float(p["ts"][row])
            if flags & _RST:
                entries[:] = [e for e in entries if e.time + self.engine.pair_window < time]
            elif flags & _ACK:
                ack = int(p["ack"][row])
                for entry in entries:
                    if entry.end is not None and reaches(ack, entry.end):
                        entry.acked = min(entry.acked, time)

    def carry(self, p: Packets, service: int, ingress: np.ndarray, egress: np.ndarray) -> None:
        """Pairs of what clients of ``service`` sent and what the LB sent on: in snat, which flow toward a
        backend carries which client's flow."""
        if service not in self.snat:
            return
        entries = ([c, t] for c, t in zip(p["ckey"][ingress].tolist(), p["ts"][egress].tolist()))
        self.carried.items.update(zip(flow_key(p, egress, reverse=True).tolist(), entries))

    def pair(self, window: float, before: float = math.inf) -> None:
        """Pair waiting replies (sent before ``before``) with client-side copies at most ``window`` later."""
        if not self.active:
            return
        engine = self.engine
        win = engine.window
        waiting = ~win["done"]
        replies = np.nonzero(waiting & (win["role"] == BREPLY) & (win["ts"] < before))[0]
        copies = np.nonzero(waiting & (win["role"] == CREPLY))[0]
        if not len(replies) or not len(copies):
            return
        key = win["k_reply"]
        a, b = match(key[replies], win["ts"][replies], key[copies], win["ts"][copies], engine.options.tolerance,
                     window)
        replies, copies = replies[a], copies[b]
        win["done"][replies] = win["done"][copies] = True
        win["mate"][replies], win["mate"][copies] = win["sn"][copies], win["sn"][replies]
        self.paired += len(a)
        if self.waiting:
            self._resent(replies, copies)

    def _resent(self, replies: np.ndarray, copies: np.ndarray) -> None:
        """Note the waiting replies that ``replies``, just paired with ``copies``, retransmit."""
        win = self.engine.window
        entries = [e for e in itertools.chain.from_iterable(self.waiting.values()) if e.end is not None]
        mine = np.isin(win["ckey"][replies], [e.flow for e in entries])
        replies, copies = replies[mine], copies[mine]
        for entry in entries if len(replies) else ():
            same = (win["ckey"][replies] == entry.flow) & (win["ts"][replies] > entry.time)
            carried = copies[same][carries(win, replies[same], entry.seq)]
            if len(carried):
                entry.resent = min(entry.resent, float(win["ts"][carried].min()))

    def finalize(self, cutoff: float) -> None:
        """Replies older than ``cutoff`` still unpaired: a last try at any delay, then judged; what may have been
        their copies is done with."""
        if not self.active:
            return
        win = self.engine.window
        role = win["role"]
        old = ~win["done"] & (win["ts"] < cutoff) & ((role == BREPLY) | (role == CREPLY))
        if not old.any():
            return
        self.pair(math.inf, before=cutoff)
        rows = np.nonzero(old & ~win["done"] & (role == BREPLY))[0]
        win["done"][old] = True
        if len(rows):
            self._unpaired(rows)

    def judge(self, cutoff: float) -> None:
        """Unpaired replies from before ``cutoff``, but those :attr:`~_Unpaired.excused`: LB215 where the
        client-side capture shows when they would have come -- known by now, as it is when drops are judged."""
        engine = self.engine
        since, until = engine.seen_since(0), engine.seen_until(0) - engine.pair_window
        for key in list(self.waiting):
            entries = self.waiting[key]
            for entry in [e for e in entries if e.time < cutoff and not e.excused]:
                if since <= entry.time <= until:
                    self._verdict(key, entry)
                else:
                    engine.counts.unjudged += 1
            entries[:] = [e for e in entries if e.time >= cutoff]
            if not entries:
                del self.waiting[key]

    # ------------------------------------------------------------------ --

    def _unpaired(self, rows: np.ndarray) -> None:
        engine = self.engine
        win = engine.window
        services = engine.compiled.backend_service[win["gid"][rows]]
        snat = np.isin(services, self.snat) if self.snat else np.zeros(len(rows), bool)
        carried = iter(flow_key(win, rows[snat]).tolist() if snat.any() else ())
        for index, (row, translated) in enumerate(zip(rows.tolist(), snat.tolist())):
            if translated:  # sent to the LB's own address: whose flow it is, the LB's carrying of it says
                entry = self.carried.items.get(next(carried))
                key = entry[0] if entry is not None else None
            else:
                key = int(win["ckey"][row])
            opened = engine.clients.items.get(key)  # [service, last seen, VIP (2 words), port] of the client's flow
            if opened is None:
                continue  # no client's flow: the LB's own checks
            service = engine.compiled.services[int(services[index])]
            checks = [c for c in service.of_kind("reverse") if _in_scope(c, win, row, opened)]
            if not checks:
                continue
            sent = self._client_sent(row, key)
            if self._reset(row, sent):
                continue
            time = float(win["ts"][row])
            facts = {"flow": flow_text(win, row), "backend": engine.compiled.backends[int(win["gid"][row])].name,
                     "bytes": int(win["plen"][row]), "seq": int(win["seq"][row]), "sent": time}
            witness = witness_of(win, [row], engine.sources, engine.options.neighbours) if engine.options.witnesses \
                else None
            entry = _Unpaired(time, None, checks, facts, witness, int(win["ckey"][row]), int(win["seq"][row]))
            if win["proto"][row] == TCP:
                entry.end = segment_end(win, row)
                entry.acked = self._acked(sent, entry.end)
                entry.resent = resent(win, row, engine.flow_rows(entry.flow))
                if entry.excused:
                    continue
            self.waiting.setdefault(key, []).append(entry)

    def _client_sent(self, row: int, key: int) -> np.ndarray:
        """What the client (of flow ``key``) sent from the reply's time on, in what the window still shows."""
        win, tolerance = self.engine.window, self.engine.options.tolerance
        rows = self.engine.flow_rows(key)
        return rows[(win["role"][rows] == INGRESS) & (win["ts"][rows] >= win["ts"][row] - tolerance)]

    def _reset(self, row: int, sent: np.ndarray) -> bool:
        """Did the client reset the flow (``sent``: what it sent since) before the reply could reach it?"""
        win = self.engine.window
        resets = sent[(win["flags"][sent] & _RST) != 0]
        return bool((win["ts"][resets] <= win["ts"][row] + self.engine.pair_window).any())

    def _acked(self, rows: np.ndarray, end: int) -> float:
        """When the first of ``rows`` that acknowledges up to ``end`` was sent (inf: none)."""
        win = self.engine.window
        acks = rows[(win["flags"][rows] & _ACK) != 0]
        acks = acks[reaches(win["ack"][acks], end)]
        return float(win["ts"][acks].min()) if len(acks) else math.inf

    def _verdict(self, key: int, entry: _Unpaired) -> None:
        facts = entry.facts
        if entry.resent < math.inf:
            facts["resent"] = entry.resent
        again = " (its retransmission did)" if "resent" in facts else ""
        for check in entry.checks:
            self.engine.verdict(d.REPLY_NOT_RELAYED, check, key, entry.time, [], lambda: (
                f"{facts['flow']}: a reply {facts['backend']} sent ({facts['bytes']} bytes) never reached the "
                f"client{again}", dict(facts)), witness=entry.witness)


def _in_scope(check, p: Packets, row: int, opened: list) -> bool:
    """Is the reply's flow in the check's scope, seen as the client sent it: from the client to the VIP and port
    of its flow (``opened``, the monitor's entry for it)?"""
    one = lambda k: p[k][row:row + 1]  # noqa: E731
    view = {"proto": one("proto"), "fam": one("fam"), "sa_hi": one("da_hi"), "sa_lo": one("da_lo"),
            "sport": one("dport"), "da_hi": np.array([opened[2]], np.uint64), "da_lo": np.array([opened[3]], np.uint64),
            "dport": np.array([opened[4]]), "flags": one("flags")}
    return bool(check.scope(view)[0])
