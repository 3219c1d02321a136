"""The monitor: packets in, verdicts out.

:class:`Monitor` is the public engine behind ``lbspec monitor`` and the pytest
plugin.  Build it from a loaded spec, feed it timestamped packets tagged with
the side of the load balancer they were seen on (and, optionally, health
events), and collect diagnostics::

    import lbspec
    from lbspec.runtime import Monitor

    monitor = Monitor(lbspec.load("web.lbspec"))
    monitor.feed(client_packet_bytes, time=0.000, side="client")    # raw IP bytes
    monitor.feed(scapy_packet, side="backend")                       # or scapy packets
    monitor.health("app2", up=False, time=3.5)
    for diagnostic in monitor.poll():                                # verdicts so far
        ...
    report = monitor.close()       # everything, with the summary
    report.diagnostics, report.summary, report.exit_code

How it works: packets are decoded in batches (:mod:`~lbspec.runtime.decode`),
given a role (:mod:`~lbspec.runtime.classify`) and kept in a *window* of
recent traffic.  Each batch, egress packets are paired with the ingress
packets that caused them (:mod:`~lbspec.runtime.pairing`) and every check of
the service is run on the pairs (:mod:`~lbspec.runtime.judge`).  A packet
older than the *horizon* (the longest response deadline, doubled, plus the
clock tolerance) is final: an ingress packet still unpaired was dropped, an
egress packet still unpaired was duplicated or came from nowhere.  Drops are
judged later still, once the health evidence of their moment is in.  Backend
replies are paired back with what reached the client the same way
(:mod:`~lbspec.runtime.replies`), and proxied connections as byte streams
(:mod:`~lbspec.runtime.proxy`).  Memory follows the window and the live
flows, never the capture's length.
"""

from __future__ import annotations

import collections
import itertools
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lbspec import diagnostics as d
from lbspec.diagnostics import Diagnostic, InputError
from lbspec.runtime import judge
from lbspec.runtime.balance import Traffic
from lbspec.runtime.capture import PAD, Frames
from lbspec.runtime.classify import (
    BREPLY, CREPLY, EGRESS, INGRESS, NONE, TRANSIT, MacTable, assign_backends, classify, classify_rows, datagram_id,
    datagram_key, fragment_key, later_fragment, mix, pair_key, ported, reaches, reopened, resent, returned, runs_of,
    segment_end, segment_length, syn_only, weak_keys,
)
from lbspec.runtime.compiled import CheckPlan, Compiled, akey, compile_spec, model_packet
from lbspec.runtime.decode import FRAGMENT, OK, TCP, UDP, WHY, Packets, decode, distinct
from lbspec.runtime.evidence import Sources, endpoint, flow_text, witness_of
from lbspec.runtime.health import HealthTimeline, apply, parse_time
from lbspec.runtime.inference import HealthInference
from lbspec.runtime.pairing import match
from lbspec.runtime.proxy import ProxyTracker
from lbspec.runtime.replies import ReplyTracker
from lbspec.runtime.state import FlowTable
from lbspec.runtime.stats import LatencyHistogram
from lbspec.runtime.verdicts import Verdict, VerdictBook, Witness
from lbspec.semantics import evaluate as ev
from lbspec.semantics.model import Spec

__all__ = ["Monitor", "MonitorOptions", "Report", "SIDES"]

SIDES = {"client": 0, "backend": 1, "combined": -1, None: -1}
FRAGMENT_HOLD = 5.0  # seconds a datagram's first fragment is remembered for the fragments after it
MACS_NAMED = 8  # MAC addresses an LB214 note names


@dataclass
class MonitorOptions:
    """How the monitor judges; every field has a sensible default."""

    tolerance: float = 0.002  # seconds of clock disagreement allowed between the two sides
    answer_timeout: float | None = None  # how long a SYN may wait for its answer (default: max(1s, health timeout))
    max_flows: int = 1_000_000  # per table; beyond it the oldest flows are evicted (LB211)
    max_verdicts: int = 1000  # per check and code; later ones are counted, not listed
    witnesses: bool = True  # keep the packets (bytes included) of each verdict
    neighbours: int = 3  # packets of context on each side in a witness
    batch: int = 1 << 16  # in-memory packets decoded at a time
    alpha: float = 0.001  # significance of the balance test

    def __post_init__(self) -> None:
        if self.max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, not {self.max_flows}")


@dataclass
class Report:
    """What a run found: diagnostics (verdicts and notes) and the summary."""

    diagnostics: list[Diagnostic]
    summary: dict[str, Any]

    @property
    def violations(self) -> list[Diagnostic]:
        return [x for x in self.diagnostics if x.severity is d.Severity.ERROR]

    @property
    def exit_code(self) -> int:
        return 1 if self.violations else 0


@dataclass
class _Drop:
    """An ingress packet that was never forwarded, waiting for the health evidence of its time."""

    time: float
    service: int
    rule: int
    key: int
    checks: list[CheckPlan]
    what: str
    witness: Witness | None
    flow: str
    fragment: dict | None = None  # a fragment after the first: its offset and its datagram's IP ID
    pair: tuple[int, int] | None = None  # (mode number, key) its egress copy would pair on (proxy: none)


@dataclass
class _Counts:
    packets: int = 0
    status: dict[int, int] = field(default_factory=dict)
    roles: dict[int, int] = field(default_factory=dict)
    undecodable: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (source, why) -> [n, first]
    per_source: dict[int, list] = field(default_factory=dict)  # source -> [packets, first ts, last ts]
    listened: int = 0
    paired: int = 0
    mutated_pairs: int = 0
    unrelated: int = 0
    probes: int = 0
    unattributed: int = 0  # dsr packets to a MAC nothing tied to a backend
    unattributed_macs: set[int] = field(default_factory=set)  # the first few of those MACs
    replies: int = 0
    new_flows: int = 0
    copies: int = 0
    transit: int = 0
    unjudged: int = 0
    icmp_errors: int = 0


class Monitor:
    """Judges traffic around a load balancer against a spec.  See the module docstring."""

    def __init__(self, spec: Spec, services: list[str] | None = None, options: MonitorOptions | None = None):
        self.spec = spec
        self.compiled: Compiled = compile_spec(spec, services)
        self.options = options or MonitorOptions()
        self.sources = Sources()
        self.timeline = HealthTimeline(self.compiled)
        answer = self.options.answer_timeout
        if answer is None:
            answer = max([1.0] + [s.service.health.timeout for s in self.compiled.services
                                  if s.service.health.kind != "none"])
        self.inference = HealthInference(self.compiled, self.timeline, answer)
        self.macs = MacTable()
        self.book = VerdictBook(self.options.max_verdicts)
        self.latency = LatencyHistogram()
        self.counts = _Counts()
        deadlines = [c.pattern.within for c in self.compiled.checks if c.kind == "response"] or [0.05]
        self.pair_window = max(2 * max(deadlines), max(deadlines) + 0.05)
        self.horizon = self.pair_window + self.options.tolerance
        self.drop_horizon = max(self.horizon, answer + self.options.tolerance) + 0.01
        # packets are taken a slice of time at a time: short enough that SYN-silence evidence is in
        # before the detection window it starts has passed, long enough to batch work
        shortest = min([d[0] for d in (self.compiled.detection(s.index) for s in self.compiled.services)] or [9.0])
        self.span = min(max(shortest - answer - self.horizon, 0.25), 2.0)
        cap, idle = self.options.max_flows, max([300.0] + [s.service.affinity.timeout for s in self.compiled.services])
        self.clients = FlowTable(cap, idle)  # client end (proto, address, port) -> [svc, last, vip, vport]
        self.flow_timeouts = np.array([self.affinity_timeout(s) for s in self.compiled.services] or [idle])
        self.client_addresses = FlowTable(cap, idle)  # addresses that sent to a VIP -> [0, last]
        self.openers = FlowTable(cap, idle)  # client flows -> (sequence number of their last SYN, when)
        self.traffic = Traffic(self.compiled, cap, idle)
        self.sticks: dict[int, FlowTable] = {}
        # fragments: each datagram's ports, from its first fragment (side, addresses, protocol, IP ID ->
        # [sport, last seen, dport]); fragments seen before their first ([serials], last seen), counted
        # unjudged if it never comes; the backend each client datagram's first piece paired went to
        self.first_fragments = FlowTable(cap, FRAGMENT_HOLD)
        self.orphans = FlowTable(cap, FRAGMENT_HOLD, lambda entries: self._orphaned(sum(len(e[0]) for e in entries)))
        self.datagrams = FlowTable(cap, FRAGMENT_HOLD)
        self._fragmented = False  # any fragment seen yet (nothing about fragments is done before)
        self.proxy = ProxyTracker(self)
        self.replies = ReplyTracker(self)
        self._window: Packets | None = None
        self._pending: list[Packets] = []  # admitted since the window was last put together
        self._rows = 0  # rows in the window and pending
        self.watermark = -math.inf
        # the first and last answer with data seen on each side: the LB's to clients, the backends' to it
        self.answers = [[math.inf, -math.inf], [math.inf, -math.inf]]
        self._stopped: set[int] = set()  # sources whose last packet is known (see stopped)
        self._elsewhere: collections.Counter = collections.Counter()  # transit destinations while none to a VIP
        self.first_time = math.inf
        self.drops: list[_Drop] = []
        self.notes: list[Diagnostic] = []
        self._serial = 0
        self._staged: dict[int, list[tuple[float, bytes, int]]] = {}
        self._stream_sources: dict[int, int] = {}
        self._frames: dict[int, int] = {}
        self._mode_of = np.array([self.compiled.modes.index(s.mode) for s in self.compiled.services] + [-1])
        self._allowed: dict[int, np.ndarray] = {}
        self._index: tuple[np.ndarray, np.ndarray] | None = None
        self._closed = False

    # ------------------------------------------------------------- feeding --

    def add_source(self, name: str, side: str | None) -> int:
        """Register a capture (a file or a stream); returns the index its packets carry."""
        if side not in SIDES:
            raise InputError(f"side must be 'client', 'backend' or 'combined', not {side!r}")
        return self.sources.add(name, SIDES[side])

    def feed(self, packet: Any, time: float | None = None, side: str | None = "client") -> None:
        """Give the monitor one packet seen on ``side`` ("client", "backend" or None for both).

        ``packet`` is raw IP bytes, or a scapy packet (any layer scapy can
        write to a capture: Ether, IP, IPv6, CookedLinux...).  ``time`` is in
        seconds (default: the scapy packet's ``time``).
        """
        self._check_open()
        data, linktype, when = _raw(packet, time)
        source = self._stream_source(side)
        staged = self._staged.setdefault(source, [])
        staged.append((when, data, linktype))
        if sum(len(v) for v in self._staged.values()) >= self.options.batch:
            self._flush()

    def feed_raw(self, data: bytes, time: float, linktype: int, source: int) -> None:
        """One raw frame of a registered source (see :meth:`add_source`), as a live capture reads it."""
        self._check_open()
        staged = self._staged.setdefault(source, [])
        staged.append((time, data, linktype))
        if sum(len(v) for v in self._staged.values()) >= self.options.batch:
            self._flush()

    def feed_frames(self, frames: Frames, skew: float = 0.0) -> None:
        """A batch of frames read from capture ``frames.source`` (see :meth:`add_source`)."""
        self._check_open()
        side = self.sources.sides[frames.source]
        packets = decode(frames, side, self.compiled.gue_ports, macs=self.compiled.wants_macs(side))
        if skew:
            packets["ts"] = packets["ts"] - skew
        self.feed_packets(packets)

    def feed_packets(self, packets: Packets) -> None:
        """Decoded packets, roughly in time order (the merge of all sources)."""
        self._check_open()
        self._round(packets)

    def health(self, backend: str, up: bool, time: float, service: str | None = None) -> None:
        """Tell the monitor a backend went down (``up=False``) or came back at ``time``."""
        self._check_open()
        refs = [b for b in self.compiled.backends if b.name == backend and
                (service is None or self.compiled.services[b.service].service.name == service)]
        if len(refs) != 1:
            raise InputError(f"no single backend named {backend!r}" + (f" in {service!r}" if service else ""))
        self.health_events([_event(refs[0].gid, parse_time(time, "health"), up)])

    def health_events(self, events: Iterable) -> None:
        apply(self.timeline, events)

    def advance(self, now: float) -> None:
        """Let time pass with no packets (live capture): packets older than the horizon become final."""
        self._flush()
        if now > self.watermark:
            self.watermark = now
            self._settle()

    def poll(self) -> list[Diagnostic]:
        """Diagnostics for the violations found since the last poll."""
        self._flush()
        return [v.diagnostic() for v in self.book.take_fresh()]

    def close(self) -> Report:
        """Judge everything still pending and return the report.  The monitor is then done."""
        self._flush()
        if not self._closed:
            self._closed = True
            self._finish()
        return Report(self._diagnostics(), self.summary())

    def _check_open(self) -> None:
        if self._closed:
            raise d.LbspecError("the monitor is closed; make a new one")

    def _stream_source(self, side: str | None) -> int:
        code = SIDES.get(side, None) if side in SIDES else None
        if code is None and side is not None:
            raise InputError(f"side must be 'client', 'backend' or None, not {side!r}")
        if code not in self._stream_sources:
            self._stream_sources[code] = self.sources.add({0: "client-side", 1: "backend-side"}.get(code, "capture"),
                                                          code)
        return self._stream_sources[code]

    def _flush(self) -> None:
        if not any(self._staged.values()):
            return
        batches = []
        for source, staged in self._staged.items():
            if staged:
                frames = _frames(staged, source, self._frames.get(source, 0) + 1)
                self._frames[source] = self._frames.get(source, 0) + len(staged)
                batches.append(decode(frames, self.sources.sides[source], self.compiled.gue_ports,
                                      macs=self.compiled.wants_macs(self.sources.sides[source])))
        self._staged = {}
        packets = Packets.concat(batches)
        self._round(packets.take(np.argsort(packets["ts"], kind="stable")))

    # -------------------------------------------------------------- rounds --

    def feed_parts(self, parts: list[Packets]) -> None:
        """Time-sorted pieces of several sources covering the same span (see ``sources.merged``)."""
        self._check_open()
        parts = [p for p in parts if len(p)]
        if not parts:
            self._settle()
            return
        at = [0] * len(parts)
        while True:
            left = [float(p["ts"][i]) for p, i in zip(parts, at) if i < len(p)]
            if not left:
                return
            limit = min(left) + self.span  # a slice of time at a time (see __init__)
            for index, part in enumerate(parts):
                stop = int(np.searchsorted(part["ts"], limit, side="right"))
                if stop > at[index]:
                    self._admit(part.slice(at[index], stop))
                    at[index] = stop
            self._settle()

    def _round(self, new: Packets) -> None:
        """Take packets in slices of time, so evidence and verdicts follow the order things happened."""
        if not len(new):
            self._settle()
            return
        if (np.diff(new["ts"]) < 0).any():
            new = new.take(np.argsort(new["ts"], kind="stable"))
        self.feed_parts([new])

    def _admit(self, new: Packets) -> None:
        n = len(new)
        new["sn"] = np.arange(self._serial, self._serial + n, dtype=np.int64)
        self._serial += n
        new["mate"] = np.full(n, -1, np.int64)
        self.macs.learn(new, self.compiled)
        if "role" in new:  # classified as it was read, but for what the MAC table says
            assign_backends(new, self.compiled, self.macs)
        else:
            classify(new, self.compiled, self.macs)
        if new["frag"].any():
            self._fragmented = True
            self._fragments(new)
        self._count(new)
        self.watermark = max(self.watermark, float(np.max(new["ts"])))
        self.first_time = min(self.first_time, float(np.min(new["ts"])))
        self.inference.observe(new)
        self._drop_capture_copies(new)
        self._remember_clients(new)
        waits = (new["role"] == INGRESS) | (new["role"] == EGRESS) | (new["role"] == TRANSIT)
        replies = self.replies.awaited(new)
        if replies is not None:
            waits |= replies
            self.replies.observe(new)
        new["done"] = ~waits  # only these wait for a partner
        streams = self.proxy.wanted(new)
        new["done"] |= streams  # proxied TCP is judged as byte streams
        if streams.any():
            self.proxy.observe(new, np.nonzero(streams)[0])
        base = self._rows
        self._pending.append(new)
        self._rows += n
        self._index = None
        self._replies(new, base)

    @property
    def window(self) -> Packets | None:
        """Recent traffic: the packets still waiting for a partner and those of the last two horizons.

        Packets are admitted a piece at a time and put together here only when the window is looked at
        (at the end of each slice of time, or for a witness), and a column only when it is read: each is
        copied in at most once, and columns no check reads (most of them) only for the rows kept."""
        if self._pending:
            parts = ([self._window] if self._window is not None else []) + self._pending
            self._window = Packets.joined(parts)
            self._pending = []
        return self._window

    @window.setter
    def window(self, table: Packets) -> None:
        self._window, self._pending, self._rows = table, [], len(table)

    def _last_iface(self) -> int | None:
        last = self._pending[-1] if self._pending else self._window
        return int(last["iface"][-1]) if last is not None and len(last) else None

    def _drop_capture_copies(self, new: Packets) -> None:
        """The same frame captured on two interfaces at once (a bridge and its port, in ``-i any``) is one."""
        if not (new["iface"] != new["iface"][0]).any() and self._last_iface() in (None, int(new["iface"][0])):
            return
        tail = self.window.take(np.nonzero(self.window["ts"] >= new["ts"][0] - 0.001)[0]) \
            if self.window is not None else Packets.empty()
        ident = lambda p: mix([p["role"], p["sa_lo"], p["da_lo"], p["sa_hi"], p["sport"], p["dport"], p["proto"],  # noqa
                               p["seq"], p["ack"], p["flags"], p["ipid"], p["frag"], p["ttl"], p["plen"],
                               p["icmp"]])
        keys = np.concatenate([ident(tail) if len(tail) else np.zeros(0, np.uint64), ident(new)])
        ts = np.concatenate([tail["ts"], new["ts"]])
        iface = np.concatenate([tail["iface"], new["iface"]])
        order = np.lexsort((ts, keys))
        same = (keys[order][1:] == keys[order][:-1]) & (iface[order][1:] != iface[order][:-1]) & \
            (ts[order][1:] - ts[order][:-1] <= 0.001)
        copies = order[1:][same] - len(tail)
        copies = copies[copies >= 0]
        if len(copies):
            new["role"][copies] = 0
            self.counts.copies += len(copies)

    # ------------------------------------------------------------ fragments --

    def _fragments(self, new: Packets) -> None:
        """IP fragments after the first carry no ports: each takes those of its datagram's first fragment seen
        on the same side, and with them a role and keys, and is then paired and judged like any packet.  One
        seen before its first fragment stays unjudged until that comes (and for good if it never does)."""
        frag, status = new["frag"], new["status"]
        firsts = np.nonzero((frag == 1) & (status == OK))[0]
        first_ids = datagram_id(new, firsts, self.compiled).tolist() if len(firsts) else []
        if first_ids:
            entries = zip(new["sport"][firsts].tolist(), new["ts"][firsts].tolist(), new["dport"][firsts].tolist())
            self.first_fragments.items.update(zip(first_ids, map(list, entries)))
        later = np.nonzero(status == FRAGMENT)[0]
        if len(later):
            ids = datagram_id(new, later, self.compiled).tolist()
            found = list(map(self.first_fragments.items.get, ids))
            known = np.array([entry is not None for entry in found], bool)
            if known.any():
                ports = np.array([(entry[0], entry[2]) for entry in found if entry is not None], np.int64)
                self._give_roles(new, later[known], ports[:, 0], ports[:, 1])
            for key, serial, time in zip(np.array(ids, np.uint64)[~known].tolist(), new["sn"][later[~known]].tolist(),
                                         new["ts"][later[~known]].tolist()):
                entry = self.orphans.items.setdefault(key, [[], time])
                entry[0].append(serial)
                entry[1] = time
        if first_ids and self.orphans.items:
            self._adopt(first_ids)

    def _give_roles(self, table: Packets, rows: np.ndarray, sport: np.ndarray, dport: np.ndarray) -> np.ndarray:
        """Classify fragments after the first (``rows`` of ``table``) with the ports of their datagrams: the
        client's packets to a VIP and what the LB sent on are judged; the rest (replies, packets routed past
        the LB, proxied traffic, which a proxy reassembles) are not.  Returns the roles given."""
        piece = table.take(rows)
        piece["status"] = np.full(len(rows), OK, np.uint8)
        piece["sport"], piece["dport"] = sport, dport
        classify_rows(piece, self.compiled)
        assign_backends(piece, self.compiled, self.macs)
        role = piece["role"]
        service = np.where(role == INGRESS, piece["svc"], self.compiled.backend_service[piece["gid"]])
        proxied = (service >= 0) & (self._mode_of[service] == self._proxy_mode)
        judged = ((role == INGRESS) | (role == EGRESS)) & ~proxied
        role[~judged] = NONE
        every = np.arange(len(rows))
        for mode in self.compiled.modes:
            piece["k_" + mode] = np.where(judged, fragment_key(piece, mode, every), np.uint64(0))
        for name in ("sport", "dport", "role", "svc", "gid", "unknown", "ckey", "digest",
                     *("k_" + mode for mode in self.compiled.modes)):
            table[name][rows] = piece[name]
        return role

    @property
    def _proxy_mode(self) -> int:
        return self.compiled.modes.index("proxy") if "proxy" in self.compiled.modes else -2

    def _adopt(self, first_ids: list[int]) -> None:
        """Fragments seen before their first fragment, which has now come: classified now, and paired and
        judged from now on (they are still in the window: a first fragment comes within moments)."""
        waiting = [(key, self.orphans.items.pop(key)) for key in set(first_ids) if key in self.orphans.items]
        if not waiting:
            return
        serials, sport, dport = [], [], []
        for key, (found, _time) in waiting:
            entry = self.first_fragments.items[key]
            serials += found
            sport += [entry[0]] * len(found)
            dport += [entry[2]] * len(found)
        win = self.window
        sn = win["sn"]
        at = np.minimum(np.searchsorted(sn, serials), len(sn) - 1)
        present = sn[at] == np.array(serials, np.int64)
        self._orphaned(int((~present).sum()))
        rows = at[present]
        if not len(rows):
            return
        role = self._give_roles(win, rows, np.array(sport)[present], np.array(dport)[present])
        win["done"][rows] = (role != INGRESS) & (role != EGRESS)
        self._index = None
        roles = self.counts.roles
        roles[NONE] = roles.get(NONE, 0) - len(rows)
        for value, count in enumerate(np.bincount(role).tolist()):
            if count:
                roles[value] = roles.get(value, 0) + count

    def _orphaned(self, count: int) -> None:
        """Fragments whose datagram's first fragment the capture never showed: not judged, counted."""
        self.counts.unjudged += count

    def _settle(self) -> None:
        if self.window is None:
            return
        self._pair()
        self._finalize(self.watermark - self.horizon)
        self.proxy.finalize(self.watermark - self.horizon)
        self._judge_drops(self.watermark - self.drop_horizon)
        self.inference.expire(self.watermark)
        self._trim()

    def _count(self, p: Packets) -> None:
        c = self.counts
        c.packets += len(p)
        for table, column in ((c.status, "status"), (c.roles, "role")):
            for value, count in enumerate(np.bincount(p[column]).tolist()):
                if count:
                    table[value] = table.get(value, 0) + count
        if not c.roles.get(INGRESS) and len(self._elsewhere) < 64:  # where clients went, while none to a VIP
            transit = np.nonzero(p["role"] == TRANSIT)[0][:4096]
            self._elsewhere.update(zip(*(p[k][transit].tolist() for k in ("da_hi", "da_lo", "dport"))))
        carrying = p["plen"] > 0
        for span, role in zip(self.answers, (CREPLY, BREPLY)):
            answers = p["ts"][(p["role"] == role) & carrying]
            if len(answers):
                span[:] = min(span[0], float(answers[0])), max(span[1], float(answers[-1]))
        sources = distinct(p["source"])
        for source in sources:
            ts = p["ts"] if len(sources) == 1 else p["ts"][p["source"] == source]
            entry = c.per_source.setdefault(source, [0, math.inf, -math.inf])
            entry[0] += len(ts)
            entry[1], entry[2] = min(entry[1], float(ts.min())), max(entry[2], float(ts.max()))
        unattributed = np.nonzero(p["unknown"] & (p["role"] == EGRESS))[0] if self.compiled.dsr else ()
        if len(unattributed):
            c.unattributed += len(unattributed)
            if len(c.unattributed_macs) < MACS_NAMED:
                c.unattributed_macs.update(distinct(p["mac_d"][unattributed])[:MACS_NAMED])
        bad = np.nonzero(p["status"] == 2)[0]
        for row in bad.tolist():
            entry = c.undecodable.setdefault((int(p["source"][row]), int(p["why"][row])), [0, int(p["frame"][row])])
            entry[0] += 1

    # -------------------------------------------------------------- pairing --

    def _pair(self) -> None:
        self._absorb_transit()
        self._pair_exact(self.pair_window)
        self.replies.pair(self.pair_window)

    def _pair_exact(self, window: float, before: float = math.inf) -> None:
        """Pair waiting packets on each mode's exact key, at most ``window`` apart (ingress sent before
        ``before``)."""
        win = self.window
        for number, mode in enumerate(self.compiled.modes):
            waiting = ~win["done"]
            ingress = np.nonzero(waiting & (win["role"] == INGRESS) & (win["ts"] < before)
                                 & (self._mode_of[win["svc"]] == number))[0]
            egress = np.nonzero(waiting & (win["role"] == EGRESS))[0]
            if len(ingress) and len(egress):
                key = win["k_" + mode]
                a, b = match(key[ingress], win["ts"][ingress], key[egress], win["ts"][egress],
                             self.options.tolerance, window)
                self._commit(ingress[a], egress[b], 1)

    def _absorb_transit(self) -> None:
        """Egress copies of what clients sent to non-VIP addresses: routed, not made up; nothing to judge."""
        win = self.window
        waiting = ~win["done"]
        transit = np.nonzero(waiting & (win["role"] == TRANSIT))[0]
        egress = np.nonzero(waiting & (win["role"] == EGRESS))[0]
        if len(transit) and len(egress):  # keyed only now: few captures show transit at all
            a, b = match(pair_key(win, "dsr", transit), win["ts"][transit], pair_key(win, "dsr", egress),
                         win["ts"][egress], self.options.tolerance, self.pair_window)
            win["done"][transit[a]] = win["done"][egress[b]] = True
            self.counts.transit += len(a)

    def _commit(self, ii: np.ndarray, ee: np.ndarray, stage: int) -> None:
        if not len(ii):
            return
        win = self.window
        win["done"][ii] = win["done"][ee] = True
        win["mate"][ii], win["mate"][ee] = win["sn"][ee], win["sn"][ii]
        order = _time_order(win["ts"], ii)
        ii, ee = ii[order], ee[order]
        self.latency.add(np.maximum(win["ts"][ee] - win["ts"][ii], 0.0))
        for service in distinct(win["svc"][ii]):
            chosen = win["svc"][ii] == service
            pairs = judge.Pairs.gather(win, self.compiled.services[service], ii[chosen], ee[chosen], stage)
            if self._fragmented:
                pairs.datagram_backend = self._datagram_backends(pairs)
            self.counts.listened += int(pairs.listened.sum())
            self.counts.paired += int(pairs.listened.sum())
            self.replies.carry(win, service, ii[chosen], ee[chosen])
            self.counts.mutated_pairs += len(pairs) if stage == 2 else 0
            judge.run_checks(self, pairs)
            counted = np.nonzero(pairs.listened & (pairs.gid >= 0) & (pairs.rule >= 0))[0]
            self.traffic.account(self, pairs, counted)

    def _datagram_backends(self, pairs: judge.Pairs) -> np.ndarray | None:
        """For each pair of a piece of a fragmented client datagram: the backend the first of its pieces to be
        paired went to (-1 for that first one, and for pairs of whole packets); None if there are none."""
        pieces = np.nonzero(pairs.ingress("frag") != 0)[0]
        if not len(pieces):
            return None
        out = np.full(len(pairs), -1, np.int64)
        ts = pairs.egress("ts")
        pieces = pieces[np.argsort(ts[pieces], kind="stable")]
        table = self.datagrams.items
        ids = datagram_id(pairs.table, pairs.ii[pieces], self.compiled).tolist()
        for j, key, gid, time in zip(pieces.tolist(), ids, pairs.gid[pieces].tolist(), ts[pieces].tolist()):
            entry = table.get(key)
            if entry is None:
                table[key] = [gid, time]
            else:
                out[j], entry[1] = entry[0], time
        return out

    def _finalize(self, cutoff: float) -> None:
        """Packets older than ``cutoff`` that are still unpaired: last try, then judge them."""
        self.replies.finalize(cutoff)
        win = self.window
        old = ~win["done"] & (win["ts"] < cutoff)
        if not (old & ((win["role"] == INGRESS) | (win["role"] == EGRESS))).any():
            return
        self._pair_changed(cutoff)
        # forwarded later than the pairing window, and the window shows it: late, not dropped (LB200 with the
        # latency, from the response check); a forward later still takes its pending drop (_forwarded_late)
        self._pair_exact(math.inf, before=cutoff)
        old = ~win["done"] & (win["ts"] < cutoff)
        ingress = np.nonzero(old & (win["role"] == INGRESS))[0]
        egress = np.nonzero(old & (win["role"] == EGRESS))[0]
        win["done"][old] = True
        if len(ingress):
            self._unforwarded(ingress)
        if len(egress):
            self._unexplained(egress)

    def _pair_changed(self, cutoff: float) -> None:
        """Pair what the LB changed on the way: on the headers alone, or on the payload alone (datagrams the LB
        cut into other fragments first, as whole datagrams)."""
        if self._fragmented:
            self._pair_datagrams(cutoff)
        win = self.window
        for number, mode in enumerate(self.compiled.modes):
            waiting = ~win["done"]
            ingress = np.nonzero(waiting & (win["role"] == INGRESS) & (self._mode_of[win["svc"]] == number))[0]
            egress = np.nonzero(waiting & (win["role"] == EGRESS))[0]
            if not len(ingress) or not len(egress):
                continue
            for (_what, in_key, in_ok), (_same, out_key, out_ok) in zip(weak_keys(win, mode, ingress),
                                                                        weak_keys(win, mode, egress)):
                live_in, live_out = in_ok & ~win["done"][ingress], out_ok & ~win["done"][egress]
                i_rows, e_rows = ingress[live_in], egress[live_out]
                a, b = match(in_key[live_in], win["ts"][i_rows], out_key[live_out], win["ts"][e_rows],
                             self.options.tolerance, self.pair_window)
                keep = (win["ts"][i_rows[a]] < cutoff) | (win["ts"][e_rows[b]] < cutoff)
                self._commit(i_rows[a][keep], e_rows[b][keep], 2)

    def _pair_datagrams(self, cutoff: float) -> None:
        """Datagrams the LB reassembled and sent on whole, or cut at other boundaries than the client's (or that
        it cut, the client having sent them whole): no piece pairs on its own keys, so whole datagrams are
        paired on what the mode keeps of the headers and all their bytes in order.  Every client piece of a
        datagram is then paired with the first piece the LB sent on (stage 3: the bytes are known equal)."""
        win = self.window
        role, frag = win["role"], win["frag"]
        waiting = ~win["done"] & ((role == INGRESS) | (role == EGRESS))
        pieces = waiting & (frag != 0)
        if not pieces.any():
            return
        rows = np.nonzero(pieces | self._may_be_reassembled(pieces, waiting & (frag == 0)))[0]
        ident = np.where(frag[rows] != 0, mix([role[rows], datagram_id(win, rows, self.compiled), win["gid"][rows]]),
                         mix([role[rows], win["sn"][rows], np.full(len(rows), 1, np.int64)]))
        order = np.lexsort((frag[rows], ident))
        rows, ident = rows[order], ident[order]
        starts = np.nonzero(np.r_[True, ident[1:] != ident[:-1]])[0]
        members = np.split(rows, starts[1:])
        leads = rows[starts]
        length, digest = _datagram_bytes(win, members)
        outward = role[leads] == EGRESS
        for number, mode in enumerate(self.compiled.modes):
            free = ~win["done"][leads]  # not paired in another mode's turn
            ins = np.nonzero(free & ~outward & (self._mode_of[win["svc"][leads]] == number))[0]
            outs = np.nonzero(free & outward)[0]
            if not len(ins) or not len(outs):
                continue
            key = datagram_key(win, mode, leads, length, digest)
            a, b = match(key[ins], win["ts"][leads[ins]], key[outs], win["ts"][leads[outs]], self.options.tolerance,
                         self.pair_window)
            a, b = ins[a], outs[b]
            cut = (frag[leads[a]] != 0) | (frag[leads[b]] != 0)  # whole packets on both sides pair on their own
            old = (win["ts"][leads[a]] < cutoff) | (win["ts"][leads[b]] < cutoff)
            a, b = a[cut & old], b[cut & old]
            if not len(a):
                continue
            for k, m in zip(a.tolist(), b.tolist()):
                rest = members[m][1:]
                win["done"][rest], win["mate"][rest] = True, win["sn"][members[k][0]]
            ii = np.concatenate([members[k] for k in a.tolist()])
            ee = np.concatenate([np.full(len(members[k]), leads[m]) for k, m in zip(a.tolist(), b.tolist())])
            self._commit(ii, ee, 3)

    def _may_be_reassembled(self, pieces: np.ndarray, whole: np.ndarray) -> np.ndarray:
        """Which ``whole`` packets may be a datagram of the waiting ``pieces`` reassembled (or cut only on the
        other side): of a client some piece on the other side is from, or (where the LB changes the client's
        end) longer than some piece on the other side."""
        win = self.window
        out = np.zeros(len(pieces), bool)
        role = win["role"]
        snat = any(mode in ("snat", "proxy") for mode in self.compiled.modes)
        for mine, theirs in ((INGRESS, EGRESS), (EGRESS, INGRESS)):
            other = pieces & (role == theirs)
            if not other.any():
                continue
            candidates = np.nonzero(whole & (role == mine))[0]
            candidates = candidates[ported(win["proto"][candidates])]
            fits = np.isin(win["ckey"][candidates], win["ckey"][other])
            if snat:
                fits |= win["plen"][candidates] > win["plen"][other].min()
            out[candidates[fits]] = True
        return out

    # ------------------------------------------------------------- unpaired --

    def _unforwarded(self, rows: np.ndarray) -> None:
        """Ingress packets that never left the LB: capture gaps, or drops to judge."""
        win = self.window
        for service in distinct(win["svc"][rows]):
            plan = self.compiled.services[service]
            mine = rows[win["svc"][rows] == service]
            view = {k: win[k][mine] for k in judge.VIEW_COLUMNS}
            listened = plan.listened(view)
            self.counts.listened += int(listened.sum())
            rule = plan.rule_index(view)
            ts = win["ts"][mine]  # a capture that stopped too soon, or started too late, cannot show the forward
            seen = (ts + np.array([c.pattern.within for c in plan.of_kind("response")] or [0]).max()
                    <= self.seen_until(1)) & (ts >= self.seen_since(1))
            self.counts.unjudged += int((listened & ~seen).sum())
            checks = [(c, listened & seen & (rule >= 0) & c.scope(view)) for c in plan.of_kind("response")]
            for j in np.nonzero(np.logical_or.reduce([m for _c, m in checks]) if checks else [])[0].tolist():
                row = int(mine[j])
                if self._acknowledged(row):
                    self._gap(row, "the backend acknowledged bytes the backend-side capture never showed")
                    continue
                self.drops.append(self._drop(row, service, int(rule[j]), [c for c, m in checks if m[j]]))

    def _drop(self, row: int, service: int, rule: int, checks: list[CheckPlan]) -> _Drop:
        win = self.window
        key = int(win["ckey"][row])
        wanted = self.options.witnesses and any(not self.book.seen((c.index, "LB200", key)) for c in checks)
        witness = self._witness([row]) if wanted else None
        number = int(self._mode_of[service])
        return _Drop(float(win["ts"][row]), service, rule, key, checks, flow_text(win, row), witness,
                     flow_text(win, row), judge.fragment_of(win, row) if later_fragment(win["frag"][row]) else None,
                     (number, int(win["k_" + self.compiled.modes[number]][row])))

    def _acknowledged(self, row: int) -> bool:
        """Did the backend acknowledge this TCP segment (bytes, SYN or FIN), though no egress copy was seen --
        before a retransmission of it got across?  Acknowledged only after one, the bytes came with it: this
        copy was lost in the LB, not by the capture."""
        win = self.window
        if win["proto"][row] != TCP or win["frag"][row] > 1 or segment_length(win, row) == 0:
            return False  # (a fragment after the first has no sequence number)
        rows = self.flow_rows(int(win["ckey"][row]))
        replies = rows[(win["role"][rows] == BREPLY) & (win["ts"][rows] >= win["ts"][row])
                       & ((win["flags"][rows] & 16) != 0)]
        acks = replies[reaches(win["ack"][replies], segment_end(win, row))]
        return bool(len(acks)) and float(win["ts"][acks].min()) < resent(win, row, rows)

    def _unexplained(self, rows: np.ndarray) -> None:
        """Egress packets no ingress packet explains: duplicates, probes, gaps, or LB208."""
        win = self.window
        errors = _icmp_error(win["proto"][rows], win["icmp"][rows])
        self.counts.icmp_errors += int(errors.sum())  # made by network stacks, translated by conntrack
        rows = rows[~errors]
        dup = self._duplicates(rows)
        for row in rows[dup].tolist():
            self._duplicate(row)
        rest = rows[~dup]
        unrelated = win["gid"][rest] < 0  # not to a backend (the LB's own traffic, a bridge's multicast)
        self.counts.unrelated += int(unrelated.sum())
        rest = rest[~unrelated]
        ts = win["ts"][rest]  # its cause may predate the client-side capture, or follow its end
        early = (ts < self.seen_since(0) + self.pair_window) | (ts > self.seen_until(0))
        self.counts.unjudged += int(early.sum())
        pending = {drop.pair: drop for drop in self.drops if drop.pair is not None} if len(rest) else {}
        for row in rest[~early].tolist():
            if self._forwarded_late(row, pending):
                continue
            if self._probe(row):
                self.counts.probes += 1
            elif self._client_sent_later(row):
                self._gap(row, "the client-side capture misses a segment the client did send")
            else:
                self._invented(row)

    def _forwarded_late(self, row: int, pending: dict[tuple[int, int], _Drop]) -> bool:
        """Is this egress packet the forward of a packet judged not forwarded, whose drop waits for health
        evidence?  Then that packet was forwarded late: LB200 with the latency, where a drop and an LB208
        would tell two wrong stories."""
        win = self.window
        ts = float(win["ts"][row])
        drop = next((found for number, mode in enumerate(self.compiled.modes)
                     if (found := pending.get((number, int(win["k_" + mode][row])))) is not None
                     and found.time <= ts + self.options.tolerance), None)
        if drop is None:
            return False
        del pending[drop.pair]
        self.drops.remove(drop)
        latency = max(ts - drop.time, 0.0)
        self.latency.add(np.array([latency]))
        self.counts.paired += 1
        gid = int(win["gid"][row])
        backend = self.compiled.backends[gid].name if gid >= 0 else None
        witness = self._witness([row]) if self.options.witnesses else None
        if witness is not None and drop.witness is not None:
            witness = drop.witness.joined(witness)
        for check in drop.checks:  # as the response check reports a pair later than its deadline
            within = check.pattern.within
            self.verdict(d.DROP, check, drop.key, ts, [],
                         lambda within=within: (judge.late_text(backend, latency, within),
                                                {"flow": drop.flow, **judge.late_facts(backend, latency, within)}),
                         witness=witness)
        return True

    def _duplicates(self, rows: np.ndarray) -> np.ndarray:
        win = self.window
        out = np.zeros(len(rows), bool)
        paired = (win["role"] == INGRESS) & (win["mate"] >= 0)
        for number, mode in enumerate(self.compiled.modes):
            known = win["k_" + mode][paired & (self._mode_of[win["svc"]] == number)]
            out |= np.isin(win["k_" + mode][rows], known)
        return out

    def _probe(self, row: int) -> bool:
        """Is this the LB's own health check of the backend?"""
        win = self.window
        plan = self.compiled.services[self.compiled.backends[int(win["gid"][row])].service]
        kind = plan.service.health.kind
        proto = int(win["proto"][row])
        if kind == "none":
            return False
        if self.client_addresses.get(akey(int(win["sa_hi"][row]), int(win["sa_lo"][row]))) is not None:
            return False  # the LB's own checks do not come from its clients
        if kind in ("tcp", "http") and proto == TCP:
            key = int(_five_tuple(win, row))
            if syn_only(win["flags"][row:row + 1])[0]:
                self._probe_flows[key] = float(win["ts"][row])
            return key in self._probe_flows
        return (kind == "udp" and proto == UDP) or (kind == "icmp" and proto in (1, 58))

    @property
    def _probe_flows(self) -> dict[int, float]:
        return self.inference.probes

    def _client_sent_later(self, row: int) -> bool:
        """Did the client go on past this TCP segment the LB sent on (so it sent it, and the client-side capture
        missed it)?  Past its bytes: a later segment of the flow from the client starts at or after their end.
        A SYN or FIN, which carries none: one starts exactly at its end (the sequence number after it)."""
        win = self.window
        if win["proto"][row] != TCP or win["frag"][row] > 1 or segment_length(win, row) == 0:
            return False
        rows = self.flow_rows(int(win["ckey"][row]))
        sent = rows[(win["role"][rows] == INGRESS) & (win["ts"][rows] >= win["ts"][row] - self.horizon)]
        end = segment_end(win, row)
        if win["plen"][row] == 0:
            return bool((win["seq"][sent] == end).any())
        return bool(reaches(win["seq"][sent], end).any())

    def seen_since(self, showing: int) -> float:
        """Since when the captures show side ``showing`` (0: what clients sent, 1: what the LB sent): a packet
        of the other side from before then may have its counterpart before the capture started.

        A capture starts with its first packet.  For what the LB sent, only where the client side shows
        the LB answering clients before that: the LB was at work, and the backend-side capture had not
        started (captures started by hand, one after the other).  Otherwise a backend side quiet at first
        is the LB forwarding nothing, and what clients sent then is judged."""
        starts = [start for start, _end, _stopped in self._captures(showing)]
        since = max(starts) if starts else -math.inf
        return since if showing == 0 or self.answers[0][0] < since else -math.inf

    def seen_until(self, showing: int) -> float:
        """Until when the captures show side ``showing``: infinite until one of them is known to have stopped
        (with its last packet).  At the end of the run that bounds the last packets; before, only where the
        other side shows answers well after it (a pairing window: not the relay of the capture's last) --
        the LB was at work, and the capture was stopped while it was (a quiet capture's last packet may
        come long before the LB's last)."""
        ends = [end for _start, end, stopped in self._captures(showing) if stopped or self._closed]
        until = min(ends) if ends else math.inf
        return until if self._closed or self.answers[1 - showing][1] > until + self.pair_window else math.inf

    def started(self, source: int, time: float) -> None:
        """A capture's first packet is at ``time``: told before its packets are judged (by the merge of
        files, :func:`~lbspec.runtime.sources.merged`), so that the capture bounds what is judged from the
        start, also while none of its packets has been fed yet (a capture started seconds after another:
        the other's packets of those seconds cannot be judged)."""
        entry = self.counts.per_source.setdefault(source, [0, math.inf, -math.inf])
        entry[1] = min(entry[1], time)

    def stopped(self, source: int, time: float) -> None:
        """A capture's last packet is at ``time``: what the other side's captures show after it cannot be
        judged, even before the run ends."""
        entry = self.counts.per_source.setdefault(source, [0, math.inf, -math.inf])
        entry[2] = max(entry[2], time)
        self._stopped.add(source)

    def _captures(self, showing: int) -> list[tuple[float, float, bool]]:
        """The time spans of the captures that show side ``showing`` (0 clients', 1 the LB's), each with
        whether it is known to have stopped: files that follow one another (a capture rotated by ``tcpdump
        -C`` or ``-G``) are one span; files that overlap were taken at once (another interface), each its
        own span, and the first to stop (or last to start) bounds what all of them show."""
        spans = sorted((entry[1], max(entry[1], entry[2]), source in self._stopped)
                       for source, entry in self.counts.per_source.items()
                       if self.sources.sides[source] != 1 - showing and entry[1] < math.inf)
        chains: list[list] = []
        for start, end, stopped in spans:
            chain = next((c for c in chains if c[1] <= start), None)
            if chain is None:
                chains.append([start, end, stopped])
            else:
                chain[1:] = end, stopped
        return [tuple(chain) for chain in chains]

    def _twice(self, service: int) -> CheckPlan | None:
        found = self.compiled.services[service].of_kind("twice")
        return found[0] if found else None

    def _duplicate(self, row: int) -> None:
        win = self.window
        gid = int(win["gid"][row])
        service = self.compiled.backends[gid].service if gid >= 0 else self._service_of_key(row)
        check = self._twice(service) if service >= 0 else None
        if check is None:
            return
        sent_to = self.compiled.backends[gid].name if gid >= 0 else None
        self.verdict(d.DUPLICATE, check, int(win["ckey"][row]), float(win["ts"][row]), [row],
                     lambda: (f"sent again to {sent_to or 'the backend side'}: the client sent it once",
                              {"flow": flow_text(win, row), "backend": sent_to}))

    def _service_of_key(self, row: int) -> int:
        win = self.window
        same = self.flow_rows(int(win["ckey"][row]))
        svc = win["svc"][same][win["role"][same] == INGRESS]
        return int(svc[0]) if len(svc) else -1

    def _invented(self, row: int) -> None:
        win = self.window
        gid = int(win["gid"][row])
        check = self._twice(self.compiled.backends[gid].service)
        if check is None or not check.scope({k: win[k][row:row + 1] for k in judge.VIEW_COLUMNS})[0]:
            return
        name = self.compiled.backends[gid].name
        self.verdict(d.EGRESS_WITHOUT_INGRESS, check, int(win["ckey"][row]), float(win["ts"][row]), [row],
                     lambda: (f"sent to {name}, but no client packet explains it", {"flow": flow_text(win, row),
                                                                                    "backend": name}))

    def _gap(self, row: int, why: str) -> None:
        win = self.window
        self.verdict(d.CAPTURE_GAP, None, int(win["ckey"][row]), float(win["ts"][row]), [row],
                     lambda: (f"capture gap in {flow_text(win, row)}: {why} (not counted as a drop)",
                              {"flow": flow_text(win, row), "evidence": why}))

    # ----------------------------------------------------------------- drops --

    def _judge_drops(self, cutoff: float) -> None:
        self.replies.judge(cutoff)
        ready = [x for x in self.drops if x.time < cutoff]
        if not ready:
            return
        self.drops = [x for x in self.drops if x.time >= cutoff]
        for drop in ready:
            excuse = self._excuse(drop)
            for check in drop.checks:
                if excuse and check.pattern.unless_no_backend:
                    continue
                self._drop_verdict(drop, check)

    def _excuse(self, drop: _Drop) -> bool:
        """No backend that could take the packet was healthy (or just back and maybe not yet seen up)."""
        plan = self.compiled.services[drop.service]
        health = plan.service.health
        rise = (health.rise * health.every + health.timeout) if health.kind != "none" else 0.0
        for gid in self.compiled.candidates(drop.service, drop.rule):
            backend = self.compiled.backends[gid].backend
            if backend.weight <= 0:
                continue
            timeline = self.timeline
            if timeline.down_at(gid, drop.time) is None and not timeline.recovered_within(gid, drop.time, rise):
                return False
        return True

    def proxy_drop(self, client, time: float, checks: list[CheckPlan], witness: Witness | None) -> None:
        """Client bytes a proxy never passed on: judged like a dropped packet."""
        flow = flow_text(client.first, 0)
        self.drops.append(_Drop(time, client.service, client.rule, client.key, checks, flow, witness, flow))

    def known_clients(self, p: Packets) -> np.ndarray:
        """Whether each row's source address has sent to a VIP."""
        keys, inverse = np.unique(akey(p["sa_hi"], p["sa_lo"]), return_inverse=True)
        known = np.array([self.client_addresses.get(k) is not None for k in keys.tolist()], bool)
        return known[inverse]

    def _drop_verdict(self, drop: _Drop, check: CheckPlan) -> None:
        within = check.pattern.within
        healthy = [self.compiled.backends[g].name for g in sorted(self.compiled.candidates(drop.service, drop.rule))
                   if self.timeline.down_at(g, drop.time) is None]
        self.verdict(d.DROP, check, drop.key, drop.time, [],
                     lambda: (f"{drop.flow} was not forwarded within {within * 1e3:g}ms "
                              f"(healthy: {', '.join(healthy) or 'none known'})",
                              {"flow": drop.flow, "deadline_ms": within * 1e3, "forwarded": False,
                               "healthy_backends": healthy,
                               **({"fragment": drop.fragment} if drop.fragment else {})}), witness=drop.witness)

    # --------------------------------------------------------------- replies --

    def _remember_clients(self, new: Packets) -> None:
        """Client flows (by their last packet) and client addresses (by their first: the LB's own health
        checks do not come from them), from the packets sent to a VIP."""
        rows = np.nonzero(new["role"] == INGRESS)[0]
        if not len(rows):
            return
        keys = new["ckey"][rows]
        order, starts, first, last = runs_of(keys)
        latest, flows = rows[last], keys[last].tolist()
        known = self.clients.items
        self.counts.new_flows += len(flows) - len(known.keys() & flows) + \
            self._reopened(new, rows, keys[order[starts]], first) + self._returned(new, rows)
        entries = map(list, zip(new["svc"][latest].tolist(), new["ts"][latest].tolist(),
                                new["da_hi"][latest].tolist(), new["da_lo"][latest].tolist(),
                                new["dport"][latest].tolist()))
        known.update(zip(flows, entries))
        earliest = rows[first]  # a flow's packets share its client's address: the address's first is among these
        addresses = akey(new["sa_hi"][earliest], new["sa_lo"][earliest])
        order, starts, _first, _last = runs_of(addresses)
        times = new["ts"][np.minimum.reduceat(earliest[order], starts)].tolist()
        self.client_addresses.items.update(zip(addresses[order[starts]].tolist(), map(list, zip(itertools.repeat(0),
                                                                                                times))))

    def _reopened(self, new: Packets, rows: np.ndarray, flows: np.ndarray, first: np.ndarray) -> int:
        """How many of the connections clients opened in ``rows`` (sent to a VIP, in time order) reused the
        5-tuple of one before (``flows``: the keys in order, ``first``: the position of each one's first
        row); what the table of client flows knows is from before these rows."""
        syns = np.nonzero(syn_only(new["flags"][rows]))[0]
        if not len(syns):
            return 0
        keys, seqs = new["ckey"][rows[syns]], new["seq"][rows[syns]]
        preceded = first[np.searchsorted(flows, keys)] < syns
        opened = self.openers.items
        again = reopened(keys, seqs, np.zeros(len(syns)), preceded, self.clients.items,
                         lambda key: (opened[key][0] if key in opened else -1, -math.inf))
        opened.update(zip(keys.tolist(), zip(seqs.tolist(), itertools.repeat(float(new["ts"][rows[syns[-1]]])))))
        return len(again)

    def _returned(self, new: Packets, rows: np.ndarray) -> int:
        """How many UDP (or ICMP) client flows came back in ``rows`` (sent to a VIP, in time order) after idling
        longer than their service's affinity timeout: the LB has ended their sessions, and balances each anew.
        (A TCP flow is a connection: a new one starts with a SYN.)"""
        rows = rows[new["proto"][rows] != TCP]
        timeouts = self.flow_timeouts[new["svc"][rows]]
        if not (timeouts < self.clients.timeout).any():  # the table forgets flows idle longer than its timeout
            return 0
        order = np.argsort(new["ckey"][rows], kind="stable")
        keys = new["ckey"][rows][order]
        return len(returned(keys, new["ts"][rows][order], np.r_[True, keys[1:] != keys[:-1]], self.clients.items,
                            timeouts[order]))

    def _replies(self, new: Packets, base: int) -> None:
        """Client-side packets toward clients: they must come from the VIP and port the client used.
        ``new`` are the window's rows from ``base`` on."""
        rows = np.nonzero(new["role"] == CREPLY)[0]
        if not len(rows):
            return
        self.counts.replies += len(rows)
        expected = self._expected_sources(new, rows)
        for service in range(len(self.compiled.services)):
            mine = expected["svc"] == service
            if not mine.any():
                continue
            for check in self.compiled.services[service].of_kind("reverse"):
                self._reverse(check, new, base, rows[mine], {k: v[mine] for k, v in expected.items()})

    def _expected_sources(self, table: Packets, rows: np.ndarray) -> dict[str, np.ndarray]:
        """For each reply: its service, and the VIP and port its flow was sent to (if known)."""
        keys, inverse = np.unique(table["ckey"][rows], return_inverse=True)
        absent = [-1, 0, 0, 0, 0]
        entries = list(map(self.clients.items.get, keys.tolist(), itertools.repeat(absent)))
        known = np.array([e is not absent for e in entries], bool)
        svc, _last, hi, lo, port = zip(*entries)
        out = {"known": known[inverse], "hi": np.array(hi, np.uint64)[inverse], "lo": np.array(lo, np.uint64)[inverse],
               "port": np.array(port, np.int64)[inverse]}
        svc = np.array(svc, np.int64)[inverse]
        hi, lo = table["sa_hi"][rows], table["sa_lo"][rows]
        by_vip, by_backend = self.compiled.address_of(akey(hi, lo))
        by_vip = self.compiled.service_at(hi, lo, table["proto"][rows], table["sport"][rows], by_vip)
        backend_service = self.compiled.backend_service[by_backend]
        out["svc"] = np.where(out["known"], svc, np.where(by_vip >= 0, by_vip, backend_service))
        out["from_backend"] = by_backend >= 0
        out["from_vip"] = by_vip >= 0
        return out

    def _reverse(self, check: CheckPlan, table: Packets, base: int, rows: np.ndarray,
                 expected: dict[str, np.ndarray]) -> None:
        col = lambda name: table[name][rows]  # noqa: E731
        ported = (col("proto") == TCP) | (col("proto") == UDP)
        right = (col("sa_hi") == expected["hi"]) & (col("sa_lo") == expected["lo"]) & \
            (~ported | (col("sport") == expected["port"]))
        good = np.where(expected["known"], right, expected["from_vip"])
        view = {"proto": col("proto"), "fam": col("fam"), "sa_hi": col("da_hi"), "sa_lo": col("da_lo"),
                "sport": col("dport"), "da_hi": np.where(expected["known"], expected["hi"], col("sa_hi")),
                "da_lo": np.where(expected["known"], expected["lo"], col("sa_lo")),
                "dport": np.where(expected["known"], expected["port"], col("sport")), "flags": col("flags")}
        bad = ~good & (expected["known"] | expected["from_backend"]) & check.scope(view)
        for j in np.nonzero(bad)[0].tolist():
            row = int(rows[j])
            self.verdict(d.UNTRANSLATED_REPLY, check, int(table["ckey"][row]), float(table["ts"][row]), [base + row],
                         lambda row=row: (f"the client got {flow_text(table, row)}: not from the VIP and port it used",
                                          {"flow": flow_text(table, row),
                                           "backend": self._backend_name(table, row)}))

    def _backend_name(self, win: Packets, row: int) -> str | None:
        gid = int(self.compiled.backend_at(akey(win["sa_hi"][row:row + 1], win["sa_lo"][row:row + 1]),
                                           win["sport"][row:row + 1])[0])
        return self.compiled.backends[gid].name if gid >= 0 else None

    # ---------------------------------------------------------- helpers for judge --

    def verdict(self, kind: d.Kind, check: CheckPlan | None, key: int, time: float, rows: list[int], build,
                witness: Witness | None = None, table: Packets | None = None) -> None:
        """Record one violation for (check, kind, flow key); ``build()`` -> (message, facts) only if new."""
        name = check.name if check is not None else "capture"
        full_key = (check.index if check is not None else -1, kind.code, key)
        if self.book.bump(full_key):
            return
        if self.book.full(kind.code, name):
            self.book.overflowed(full_key, kind.code, name)
            return
        what, facts = build()
        if check is not None:
            facts = {"property": name, "service": self.compiled.services[check.service].service.name, **facts}
        if witness is None and rows and self.options.witnesses:
            witness = witness_of(table if table is not None else self.window, rows, self.sources,
                                 self.options.neighbours)
        span = check.check.span if check is not None else None
        source = check.check.source if check is not None else None
        self.book.add(full_key, name, Verdict(kind, span, what, facts, witness, time, source))

    def _witness(self, rows: list[int]) -> Witness:
        return witness_of(self.window, rows, self.sources, self.options.neighbours)

    def flow_rows(self, key: int) -> np.ndarray:
        if self._index is None:
            order = np.argsort(self.window["ckey"], kind="stable")
            self._index = (order, self.window["ckey"][order])
        order, keys = self._index
        return order[np.searchsorted(keys, key, "left"):np.searchsorted(keys, key, "right")]

    def stick_table(self, check: CheckPlan) -> FlowTable:
        if check.index not in self.sticks:
            plan = self.compiled.services[check.service]
            self.sticks[check.index] = FlowTable(self.options.max_flows, self.affinity_timeout(plan))
        return self.sticks[check.index]

    @staticmethod
    def affinity_timeout(plan) -> float:
        affinity = plan.service.affinity
        return affinity.timeout if affinity.kind != "none" else 300.0

    def allowed_backends(self, pairs: judge.Pairs) -> np.ndarray:
        """Is each pair's backend one the evaluator could ever pick for its packet (rule, weight, family)?"""
        table = self._allowed_table(pairs.plan.index)
        family = (pairs.view["fam"] == 6).astype(np.int64)
        gid = np.maximum(pairs.gid, 0)
        return (pairs.gid >= 0) & table[family, pairs.rule + 1, gid]

    def may_choose(self, service: int, family: int, rule: int, gid: int) -> bool:
        """Could the evaluator ever pick backend ``gid`` for a packet of ``family`` (4 or 6) that ``rule`` takes?"""
        return gid >= 0 and bool(self._allowed_table(service)[int(family == 6), rule + 1, gid])

    def _allowed_table(self, service: int) -> np.ndarray:
        if service not in self._allowed:
            plan = self.compiled.services[service]
            table = np.zeros((2, len(plan.rules) + 1, len(self.compiled.backends)), bool)
            for f, family in enumerate((4, 6)):
                probe = model_packet({"proto": np.array([6]), "sa_hi": np.array([0 if family == 4 else 1], np.uint64),
                                      "sa_lo": np.array([0xFFFF00000000 if family == 4 else 1], np.uint64),
                                      "da_hi": np.array([0], np.uint64), "da_lo": np.array([0xFFFF00000000], np.uint64),
                                      "sport": np.array([1]), "dport": np.array([1]), "flags": np.array([0])}, 0)
                for rule in range(len(plan.rules)):
                    for gid in self.compiled.ever_eligible(service, rule):
                        backend = self.compiled.backends[gid].backend
                        table[f, rule + 1, gid] = backend.weight > 0 and ev.family_fits(plan.service, backend, probe)
            self._allowed[service] = table
        return self._allowed[service]

    def expected_ports(self, pairs: judge.Pairs) -> np.ndarray:
        """The port each pair's backend should be reached on (-1 where the mode keeps the port)."""
        n = len(pairs)
        if pairs.plan.mode not in ("nat", "snat", "proxy"):
            return np.full(n, -1, np.int64)
        rule_port = np.array([r.target_port or 0 for r, _p in pairs.plan.rules] + [0], np.int64)[pairs.rule]
        backend_port = np.array([b.backend.port or 0 for b in self.compiled.backends] + [0], np.int64)[pairs.gid]
        ported = (pairs.view["proto"] == TCP) | (pairs.view["proto"] == UDP)
        expected = np.where(rule_port > 0, rule_port, np.where(backend_port > 0, backend_port, pairs.view["dport"]))
        return np.where(ported & (pairs.gid >= 0) & (pairs.rule >= 0), expected, -1)

    def up_masks(self, service: int, ts: np.ndarray) -> np.ndarray:
        """Per time: a bitmask of the service's backends with no down evidence then."""
        refs = self.compiled.services[service].backends
        masks = np.full(len(ts), (1 << len(refs)) - 1 if len(refs) < 63 else -1, np.int64)
        if self.timeline.version == 0 or len(refs) >= 63:
            return masks
        for bit, ref in enumerate(refs):
            down = ~np.isnan(self.timeline.down_since(np.full(len(ts), ref.gid), ts))
            masks[down] &= ~(1 << bit)
        return masks

    def down_evidence(self, gid: int, time: float) -> str:
        backend = self.timeline.backends[gid]
        since = self.timeline.down_at(gid, time)
        for t, up, source in zip(backend.times, backend.ups, backend.sources):
            if not up and t == since:
                return f"{source} at {t:.6f}"
        return "unknown"

    # ------------------------------------------------------------------ end --

    def _trim(self) -> None:
        win = self.window
        keep = ~win["done"] | (win["ts"] >= self.watermark - 2 * self.horizon)
        if not keep.all():
            self.window = win.take(np.nonzero(keep)[0]).compact()
            self._index = None
        else:
            win.own()  # the batches it was joined from are done with (--jobs reuses their memory)
        for table in self._tables():
            table.maintain(self.watermark)

    def settle_all(self) -> None:
        """Judge everything still pending, as at the end of the traffic (but no balance test yet)."""
        self._flush()
        self._closed = True
        if self.window is not None:
            self._pair()
            self._finalize(math.inf)
            self.proxy.finish()
            self.inference.expire(self.watermark)
            self._judge_drops(math.inf)
        self.orphans.drain()
        self.traffic.finish()

    def evictions(self) -> int:
        return sum(t.evicted for t in self._tables())

    def _tables(self) -> tuple[FlowTable, ...]:
        """Every per-flow table: each expires, and is capped."""
        return (self.clients, self.client_addresses, self.openers, self.traffic.flows, self.traffic.units,
                *self.sticks.values(), self.first_fragments, self.orphans, self.datagrams, self.replies.carried)

    def _finish(self) -> None:
        self.settle_all()
        self.traffic.verdicts(self, self.options.alpha)
        self.notes.extend(self._closing_notes())

    def _closing_notes(self) -> list[Diagnostic]:
        notes = []
        evicted = self.evictions()
        if evicted:
            notes.append(d.EVICTIONS.at(None, what=f"{evicted} flow entries were evicted to stay under "
                                        f"--max-flows {self.options.max_flows}; verdicts on those flows may be "
                                        "incomplete", data={"evicted": evicted, "max_flows": self.options.max_flows}))
        by_source: dict[int, dict[str, list[int]]] = {}
        for (source, why), (count, first) in sorted(self.counts.undecodable.items()):
            by_source.setdefault(source, {})[WHY[why]] = [count, first]
        for source, reasons in by_source.items():
            total = sum(c for c, _f in reasons.values())
            name = self.sources.names[source] if source < len(self.sources.names) else str(source)
            text = ", ".join(f"{c} {why} (first: frame {f})" for why, (c, f) in reasons.items())
            notes.append(d.UNDECODABLE.at(None, what=f"{name}: {total} frame{'s' if total > 1 else ''} could not "
                                          f"be decoded: {text}",
                                          data={"file": name, "count": total,
                                                "reasons": {w: {"count": c, "first_frame": f}
                                                            for w, (c, f) in reasons.items()}}))
        if self.counts.unattributed:
            notes.append(self._unattributed())
        if self.proxy.cut:
            notes.append(d.CAPTURE_GAP.at(None, what=f"{self.proxy.cut} proxied connection"
                                          f"{'s' if self.proxy.cut > 1 else ''} carried bytes the capture cut short "
                                          "(its snapshot length is under their segments' size): what reached the "
                                          "backends, and when, was not judged; capture whole packets (tcpdump -s 0)",
                                          data={"cut_connections": self.proxy.cut}))
        one_side = self._one_side()
        if one_side is not None:
            notes.append(one_side)
        return notes

    def _unattributed(self) -> Diagnostic:
        count = self.counts.unattributed
        macs = sorted(self.counts.unattributed_macs)
        named = ", ".join(_mac_text(m) for m in macs[:MACS_NAMED])
        what = (f"{count} packet{'s' if count > 1 else ''} went (dsr) to MAC addresses nothing in the capture tied "
                f"to a backend ({named}{', ...' if len(macs) > MACS_NAMED else ''}): which backend got them is not "
                "known, so they were judged as packets (drops, duplicates, changes) but not per backend (affinity, "
                "health, balance, declared destinations). A backend is known by its MAC from its ARP, or from any "
                "packet it sends from its own address (an IPv6 neighbour advertisement for it, say): capture those "
                "too")
        return d.UNATTRIBUTED.at(None, what=what, data={"packets": count, "macs": [_mac_text(m) for m in macs]})

    def _one_side(self) -> Diagnostic | None:
        """Captures that show one side of the LB only, whatever the files were given as: packets to it and
        the answers coming back but none of what it sent on -- or no client packet to a VIP at all (the
        backend side alone, other VIPs than the spec's, the sides swapped): then nothing was judged for
        clients, and the verdicts about what is not there (drops, traffic with no cause) are the capture's."""
        roles = self.counts.roles
        proxied = any(plan.mode == "proxy" for plan in self.compiled.services)  # the proxy itself answers clients
        if roles.get(INGRESS) and roles.get(CREPLY) and not roles.get(EGRESS) and not proxied \
                and self.book.counts():
            what = (f"the captures show {roles[INGRESS]} client packets to a VIP and {roles[CREPLY]} replies "
                    "reaching clients, but nothing the LB sent toward a backend: they hold the client side only, so "
                    "the drops reported are the capture's, not the LB's (capture the backend side too)")
            return d.CAPTURE_GAP.at(None, what=what, data={"side_missing": "backend"})
        if not roles.get(INGRESS) and (roles.get(EGRESS) or roles.get(TRANSIT)):
            vips = [v for s in self.spec.services for v in s.vips]
            most = [(endpoint(*key), count) for key, count in self._elsewhere.most_common(3)]
            what = (f"no client packet to a VIP of the spec ({', '.join(map(str, vips))}) was seen, so nothing was "
                    f"judged for clients; {roles.get(EGRESS, 0)} packets went toward backends and "
                    f"{roles.get(TRANSIT, 0)} to other addresses"
                    + (f" (most to {', '.join(f'{e} ({n})' for e, n in most)})" if most else "")
                    + ": the captures hold the backend side only, the clients used other VIPs, or the sides were "
                    "swapped (verdicts about those packets are then the capture's, not the LB's)")
            if any(v.is_unspecified for v in vips):
                what += ("; a VIP of 0.0.0.0 or :: (an LB listening on every address: `bind *:80`) matches no "
                         "packet: give the addresses clients use (`lbspec import ... --vip ADDRESS`, or `vip` "
                         "in the spec)")
            return d.CAPTURE_GAP.at(None, what=what, data={"side_missing": "client",
                                                          "destinations": {e: n for e, n in most}})
        return None

    def note(self, diagnostic: Diagnostic) -> None:
        """Add a diagnostic from outside the engine (a damaged file, the clock skew...)."""
        self.notes.append(diagnostic)

    def _diagnostics(self) -> list[Diagnostic]:
        return [v.diagnostic() for v in self.book.all()] + self.notes

    def summary(self) -> dict[str, Any]:
        from lbspec.runtime.report import summarize

        return summarize(self)


# ------------------------------------------------------------------ helpers --

def _time_order(ts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The order of ``rows`` (distinct rows of a table) by time, ties by row.  The rows are put in order
    by marking them, not by a sort: the window's rows are mostly in time order already, and only where
    they are not is there a sort by time."""
    marked = np.zeros(len(ts), bool)
    marked[rows] = True
    position = np.empty(len(ts), np.int64)
    position[rows] = np.arange(len(rows))
    ordered = np.flatnonzero(marked)
    if len(ordered) != len(rows):  # a row twice: not what pairing gives, but sort rather than lose one
        return np.argsort(ts[rows], kind="stable")
    order = position[ordered]
    times = ts[ordered]
    if len(times) > 1 and (times[1:] < times[:-1]).any():
        order = order[np.argsort(times, kind="stable")]
    return order


def _datagram_bytes(win: Packets, members: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The length and CRC-32 of each datagram's transport payload, its pieces (``members``, in order) one
    after another; the CRC is 0 where a piece was captured cut short."""
    plen, pcap = win["plen"], win["pcap"]
    length = np.array([int(plen[rows].sum()) for rows in members], np.int64)
    digest = np.zeros(len(members), np.uint64)
    for k, rows in enumerate(members):
        if (pcap[rows] >= plen[rows]).all():
            crc = 0
            for row in rows.tolist():
                crc = zlib.crc32(win.payload(row), crc)
            digest[k] = crc
    return length, digest


def _mac_text(mac: int) -> str:
    return ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))


def _icmp_error(proto: np.ndarray, icmp: np.ndarray) -> np.ndarray:
    kind = icmp >> 8
    return ((proto == 1) & np.isin(kind, [3, 4, 5, 11, 12])) | ((proto == 58) & (kind >= 1) & (kind <= 4))


def _five_tuple(win: Packets, row: int) -> int:
    from lbspec.runtime.classify import flow_key

    return int(flow_key(win, np.array([row]))[0])


def _event(gid: int, time: float, up: bool):
    from lbspec.runtime.health import HealthEvent

    return HealthEvent(time, gid, up, "events")


def _raw(packet: Any, time: float | None) -> tuple[bytes, int, float]:
    """Bytes, link type and time of a packet given to :meth:`Monitor.feed`."""
    if isinstance(packet, (bytes, bytearray, memoryview)):
        if time is None:
            raise InputError("feed() needs a time for raw bytes")
        return bytes(packet), 101, float(time)
    try:
        from scapy.config import conf
    except ImportError:  # pragma: no cover - scapy is a dependency
        raise InputError("feed() takes bytes or scapy packets") from None
    linktype = conf.l2types.layer2num.get(type(packet))
    if linktype is None:
        name = type(packet).__name__
        if name not in ("IP", "IPv6"):
            raise InputError(f"feed() cannot tell the link type of a {name} packet; pass bytes of an IP packet "
                             "or a packet starting with Ether, IP, IPv6 or CookedLinux")
        linktype = 101
    return bytes(packet), int(linktype), float(packet.time if time is None else time)


def _frames(staged: list[tuple[float, bytes, int]], source: int, first: int) -> Frames:
    lengths = np.array([len(b) for _t, b, _l in staged], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    buf = b"".join(b for _t, b, _l in staged) + bytes(PAD)
    n = len(staged)
    return Frames(buf, offsets, lengths.astype(np.int32), lengths.astype(np.int32),
                  np.array([t for t, _b, _l in staged], np.float64), np.array([lt for _t, _b, lt in staged], np.uint16),
                  np.zeros(n, np.int8), np.arange(first, first + n, dtype=np.int64), source)
