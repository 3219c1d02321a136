"""Backend health read off the traffic itself.

* a backend that answers a SYN with a SYN-ACK, or an echo request with a
  reply, is up; an HTTP health probe answered 2xx/3xx says up, 4xx/5xx down;
* a backend that answers a SYN with a RST, or that an ICMP unreachable names
  (the backend itself, or a router on the way to it), is down;
* a SYN forwarded to a backend that gets no answer within ``answer_timeout``
  says the backend was down when the SYN was sent -- in modes whose replies
  come back through the LB (nat, snat, proxy), where the answer would be seen,
  and unless the LB then acknowledges on that connection (the answer happened;
  the capture did not show it).
"""

from __future__ import annotations

import collections
import itertools
import re
import struct
from ipaddress import IPv4Address, IPv6Address

import numpy as np

from lbspec.runtime.classify import BREPLY, EGRESS, mix, syn_only
from lbspec.runtime.compiled import Compiled, address_parts, akey
from lbspec.runtime.decode import ICMP, ICMP6, TCP, Packets
from lbspec.runtime.health import HealthTimeline

__all__ = ["HealthInference"]

_SYN, _RST, _ACK = 2, 4, 16
_REPLY_MODES = ("nat", "snat", "proxy")


class HealthInference:
    def __init__(self, compiled: Compiled, timeline: HealthTimeline, answer_timeout: float):
        self.compiled = compiled
        self.timeline = timeline
        self.answer_timeout = answer_timeout
        self.syns: dict[int, tuple[float, int, int]] = {}  # flow key -> (first SYN time, backend, source port)
        self.echoes: dict[int, tuple[float, int]] = {}
        self.probes: dict[int, float] = {}  # HTTP probe flows -> when seen
        routed = [compiled.services[b.service].mode in _REPLY_MODES for b in compiled.backends]
        self.routed = np.array(routed or [False])
        self.paths = {s.index: http_check(s.service.health.path) for s in compiled.services
                      if s.service.health.kind == "http"}

    def observe(self, p: Packets) -> None:
        """Take the evidence in newly classified rows."""
        role, gid, proto = p["role"], p["gid"], p["proto"]
        out = (role == EGRESS) & (gid >= 0)
        back = (role == BREPLY) & (gid >= 0)
        self._syns(p, np.nonzero(out & (proto == TCP) & syn_only(p["flags"]))[0])
        self._answers(p, np.nonzero(back & (proto == TCP) & ((p["flags"] & (_SYN | _RST)) != 0))[0])
        if self.syns:
            self._established(p, np.nonzero(out & (proto == TCP) & ((p["flags"] & (_SYN | _ACK)) == _ACK))[0])
        icmp = (proto == ICMP) | (proto == ICMP6)
        if icmp.any():
            self._echo(p, out & icmp, back & icmp)
            self._unreachable(p, icmp)
        if self.paths:
            self._http(p, out, back)

    def expire(self, now: float) -> None:
        """SYNs and echo requests unanswered for too long: the backend was down when they went."""
        for table in (self.syns, self.echoes):
            late = [k for k, entry in table.items() if now - entry[0] > self.answer_timeout]
            for key in late:
                time, gid = table.pop(key)[:2]
                self.timeline.record(gid, time, False, "silence")
        if len(self.probes) > 10_000:
            cutoff = now - 60
            self.probes = {k: t for k, t in self.probes.items() if t >= cutoff}

    # -------------------------------------------------------------- tcp --

    def _syns(self, p: Packets, rows: np.ndarray) -> None:
        rows = rows[self.routed[p["gid"][rows]] & (p["side"][rows] != 0)]
        if not len(rows):
            return
        keys = _forward_key(p, rows).tolist()
        collections.deque(map(self.syns.setdefault, keys, zip(p["ts"][rows].tolist(), p["gid"][rows].tolist(),
                                                             p["sport"][rows].tolist())), 0)

    def _answers(self, p: Packets, rows: np.ndarray) -> None:
        if not len(rows):
            return
        pending = list(map(self.syns.pop, _reverse_key(p, rows).tolist(), itertools.repeat(None)))
        flags, times, gids = p["flags"][rows], p["ts"][rows], p["gid"][rows]
        synack = ((flags & _SYN) != 0) & ((flags & _ACK) != 0)
        refused = ~synack & ((flags & _RST) != 0) & np.array([x is not None for x in pending], bool)
        if not refused.any():  # the common case: only answers, recorded in bulk
            self.timeline.record_many(gids[synack], times[synack], True, "synack")
            return
        for up, down, time, gid in zip(synack.tolist(), refused.tolist(), times.tolist(), gids.tolist()):
            if up or down:
                self.timeline.record(gid, time, up, "synack" if up else "rst")

    def _established(self, p: Packets, rows: np.ndarray) -> None:
        """The LB acknowledging on a connection it opened: the backend answered its SYN, even where the
        capture does not show the answer (a capture of one direction, or one that lost the SYN-ACK)."""
        waiting = np.array([entry[2] for entry in self.syns.values()], np.int64)  # few SYNs wait
        # ports index a table; numpy's other way imports numpy.ma, a sixtieth of a second of a run
        rows = rows[np.isin(p["sport"][rows], waiting, kind="table")]
        if len(rows):
            collections.deque(map(self.syns.pop, _forward_key(p, rows).tolist(), itertools.repeat(None)), 0)

    # ------------------------------------------------------------- icmp --

    def _echo(self, p: Packets, out: np.ndarray, back: np.ndarray) -> None:
        """ICMP echo requests to backends and their replies (``out`` and ``back``: ICMP rows only)."""
        kind = p["icmp"] >> 8
        requests = np.nonzero(out & ((kind == 8) | (kind == 128)))[0]
        for key, time, gid in zip(_forward_key(p, requests, echo=True).tolist(), p["ts"][requests].tolist(),
                                  p["gid"][requests].tolist()):
            self.echoes.setdefault(key, (time, gid))
        replies = np.nonzero(back & ((kind == 0) | (kind == 129)))[0]
        for key, time, gid in zip(_reverse_key(p, replies, echo=True).tolist(), p["ts"][replies].tolist(),
                                  p["gid"][replies].tolist()):
            self.echoes.pop(key, None)
            self.timeline.record(gid, time, True, "reply")

    def _unreachable(self, p: Packets, icmp: np.ndarray) -> None:
        rows = np.nonzero(icmp)[0]
        kind, code, proto = p["icmp"][rows] >> 8, p["icmp"][rows] & 255, p["proto"][rows]
        v4 = (proto == ICMP) & (kind == 3) & (code != 4)
        v6 = (proto == ICMP6) & (kind == 1)
        for row in rows[v4 | v6].tolist():
            for gid in self._named(p, row):
                self.timeline.record(gid, float(p["ts"][row]), False, "icmp")

    def _named(self, p: Packets, row: int) -> set[int]:
        """Backends an ICMP error names: its sender, or the destination of the packet it quotes."""
        found = set()
        quoted, port = _quoted_destination(p.payload(row))
        keys = akey(p["sa_hi"][row:row + 1], p["sa_lo"][row:row + 1])
        sender = int(self.compiled.backend_at(keys, np.array([port]))[0])
        if sender >= 0:
            found.add(sender)
        if quoted is not None:
            keys = np.array([akey(*address_parts(quoted))], np.uint64)
            target = int(self.compiled.backend_at(keys, np.array([port]))[0])
            if target >= 0:
                found.add(target)
        return found

    # ------------------------------------------------------------- http --

    def _http(self, p: Packets, out: np.ndarray, back: np.ndarray) -> None:
        tcp_data = (p["proto"] == TCP) & (p["pcap"] >= 5)
        for row in np.nonzero(out & tcp_data)[0].tolist():
            service = self.compiled.backends[int(p["gid"][row])].service
            check = self.paths.get(service)
            if check is not None and check.match(p.payload(row)):
                self.probes[int(_forward_key(p, np.array([row]))[0])] = float(p["ts"][row])
        if not self.probes:
            return
        for row in np.nonzero(back & tcp_data)[0].tolist():
            if int(_reverse_key(p, np.array([row]))[0]) in self.probes:
                self._status(p, row)

    def _status(self, p: Packets, row: int) -> None:
        head = p.payload(row)[:12]
        if head.startswith(b"HTTP/1.") and len(head) >= 12 and head[9:12].isdigit():
            good = int(head[9:12]) < 400
            self.timeline.record(int(p["gid"][row]), float(p["ts"][row]), good, "probe")


def http_check(path: str | None) -> re.Pattern[bytes]:
    """The request line of an HTTP check of ``path`` (`health http "PATH"`), whatever its method: HAProxy's
    `option httpchk` asks `OPTIONS / HTTP/1.0` unless told otherwise, others `GET` or `HEAD`."""
    return re.compile(rb"[A-Z]{3,10} " + re.escape((path or "/").encode()) + rb"[ ?]")


def _forward_key(p: Packets, rows: np.ndarray, echo: bool = False) -> np.ndarray:
    extra = [p["echo"][rows]] if echo else [p["sport"][rows], p["dport"][rows]]
    return mix([p["proto"][rows] % 57, p["sa_hi"][rows], p["sa_lo"][rows], p["da_hi"][rows], p["da_lo"][rows], *extra])


def _reverse_key(p: Packets, rows: np.ndarray, echo: bool = False) -> np.ndarray:
    extra = [p["echo"][rows]] if echo else [p["dport"][rows], p["sport"][rows]]
    return mix([p["proto"][rows] % 57, p["da_hi"][rows], p["da_lo"][rows], p["sa_hi"][rows], p["sa_lo"][rows], *extra])


def _quoted_destination(data: bytes) -> tuple[IPv4Address | IPv6Address | None, int]:
    """The destination address of the IP packet an ICMP error quotes, and its TCP or UDP destination port
    (-1: none quoted)."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        header, proto, address = (data[0] & 15) * 4, data[9], IPv4Address(struct.unpack_from("!I", data, 16)[0])
    elif len(data) >= 40 and data[0] >> 4 == 6:
        header, proto, address = 40, data[6], IPv6Address(data[24:40])
    else:
        return None, -1
    ported = proto in (6, 17) and len(data) >= header + 4
    return address, struct.unpack_from("!H", data, header + 2)[0] if ported else -1
