"""Proxy mode: the LB ends the client's TCP connection and opens its own to a backend.

Packets are not forwarded one by one, bytes are: each client connection is
paired with the backend connection that carries its byte stream -- the one
whose first bytes are the client's first bytes: of the clients that agree with
it on at least the first 64 bytes, the one that agrees longest (up to a KiB),
then the latest opened before it (with none, the earliest opened just after
it, within the clocks' tolerance), unpaired ones first -- so requests that
start alike pair by what follows, and a stream changed on the way still pairs
with its client (connections that carry no bytes pair by the order they were
opened, once they are over).  Clients are found by the first bytes of their
streams (an index), not by comparing every client: with thousands of
connections open, pairing costs what the few alike cost.  Then:

* every client byte must reach the backend within the response deadline
  (LB200, late or never);
* the backend stream must be the client stream, block by block (LB204);
* the backend connection is judged like a forwarded packet: declared backend
  and port (LB203), down backend (LB202), assertions (LB213), balance;
* a backend connection no client connection explains is LB208 (unless it is a
  health check), and a second one carrying the same client bytes LB205;
* once the LB has closed the client's connection, bytes the backend sent back
  that never reached the client are LB215 (`reply from vip`: replies reach the
  client), unless the client or the backend had reset its connection, the
  client had closed it having sent nothing (a probe), or the LB closed it idle
  at its timeout before they came.

Connection failures are attributed.  A backend connection the LB opened that
never got a SYN-ACK is a *failed attempt*: ``refused`` (the backend answered
the SYN with a RST) or ``timeout`` (no answer).  Each is given to the client
connection it was made for -- the latest one opened before it that the LB had
not closed and that no backend was yet carrying bytes for -- and judged like a
forwarded connection: to a backend down longer than its detection window it
is LB202, within the window it is allowed.  A client connection whose bytes
never reached a backend is then:

* ``backend_refused`` / ``backend_timeout``: its attempts failed -- the LB did
  try, so not a drop (LB202 judges the attempts);
* ``lb_reset``: the LB reset it (a RST from the VIP, also to its SYN) and tried
  no backend;
* ``not_relayed``: the LB closed it, or said nothing, and tried no backend;

the last two are drops (LB200) unless no backend was healthy.  Every outcome is
counted in the summary's ``proxy`` entry with the bytes relayed each way.

One backend connection per client connection is assumed (HAProxy ``mode tcp``,
nginx ``stream``); connection pools that reuse backend connections for other
clients' requests are not modelled.  A health check the LB sends to a dead
backend looks exactly like a refused attempt: in services with health checks,
failed attempts of client connections that were served in the end are counted
but not judged.
"""

from __future__ import annotations

import collections
import itertools
import math
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from lbspec import diagnostics as d
from lbspec.runtime import judge
from lbspec.runtime.classify import BREPLY, CREPLY, EGRESS, INGRESS, flow_key
from lbspec.runtime.compiled import CheckPlan, akey
from lbspec.runtime.decode import TCP, Packets
from lbspec.runtime.evidence import Sources, endpoint, flow_text, packet_ref
from lbspec.runtime.inference import http_check
from lbspec.runtime.proxy_protocol import Ends, proxy_header
from lbspec.runtime.verdicts import PacketRef, Witness

__all__ = ["ProxyTracker", "Stream", "OUTCOMES"]

OUTCOMES = ("backend_refused", "backend_timeout", "lb_reset", "not_relayed", "backends_full")

BLOCK = 1024
PREFIX = BLOCK  # the first bytes kept of each stream, to pair connections on
ALIKE = 64  # first bytes a client's and a backend's stream must share to be paired (more if the stream is shorter)
_SYN, _FIN, _RST, _ACK = 2, 1, 4, 16
_OPEN_WITHIN = 1.0  # seconds: a backend connection carrying nothing pairs with a client one opened this long before


@dataclass
class Stream:
    """One direction of a connection's bytes, reassembled and hashed in blocks of BLOCK bytes."""

    isn: int | None = None
    next: int = 0
    pending: dict[int, bytes] = field(default_factory=dict)
    partial: bytearray = field(default_factory=bytearray)
    blocks: list[int] = field(default_factory=list)
    prefix: bytes = b""

    def offset(self, seq: int) -> int:
        """Where ``seq`` falls in the stream (the first byte seen is byte 0 when the SYN was not)."""
        if self.isn is None:
            self.isn = (seq - 1) & 0xFFFFFFFF
        return (seq - self.isn - 1) & 0xFFFFFFFF

    def add(self, seq: int, data: bytes) -> int:
        """Add a segment; returns how many bytes are now contiguous from the start."""
        offset = self.offset(seq)
        if offset >= 1 << 31 or offset + len(data) <= self.next:
            return self.next  # old data, retransmitted
        if offset > self.next:
            if len(self.pending) < 4096:
                self.pending[offset] = data
            return self.next
        self._append(data[self.next - offset:])
        while self.next in self.pending:
            chunk = self.pending.pop(self.next)
            self._append(chunk)
        return self.next

    def _append(self, data: bytes) -> None:
        if len(self.prefix) < PREFIX:
            self.prefix += data[:PREFIX - len(self.prefix)]
        self.next += len(data)
        self.partial += data
        while len(self.partial) >= BLOCK:
            self.blocks.append(zlib.crc32(self.partial[:BLOCK]))
            del self.partial[:BLOCK]


class _Row:
    """One row of a table: of the batch being read while it is read, then of the copy of the rows the tracker
    keeps of it (:meth:`ProxyTracker._keep`): a batch's memory is reused once it is judged."""

    __slots__ = ("index", "table")

    def __init__(self, table: Packets, index: int):
        self.table, self.index = table, index

    def packets(self) -> Packets:
        """The row as a table of its own (views)."""
        return self.table.slice(self.index, self.index + 1)

    def value(self, column: str) -> int:
        return int(self.table[column][self.index])

    def ref(self, sources: Sources) -> PacketRef:
        return packet_ref(self.table, self.index, sources, True)


def _gather(rows: list[_Row]) -> Packets:
    """The rows, in this order, as a table of their own (a copy): a take from each table they are in."""
    groups: dict[int, tuple[Packets, list[int], list[int]]] = {}
    for position, row in enumerate(rows):
        table, positions, indices = groups.setdefault(id(row.table), (row.table, [], []))
        positions.append(position)
        indices.append(row.index)
    parts = [table.take(np.array(indices)) for table, _positions, indices in groups.values()]
    if len(parts) == 1:
        return parts[0]
    order = np.argsort(np.concatenate([positions for _table, positions, _indices in groups.values()]))
    return Packets.concat(parts).take(order)


class _Batch:
    """The columns the tracker reads of a batch's rows, as Python values: read once a batch, not a packet."""

    def __init__(self, p: Packets, rows: np.ndarray):
        self.table, self.rows = p, rows.tolist()
        self.ts, self.flags, self.seq, self.ack, self.ckey, self.gid, self.svc = (
            p[k][rows].tolist() for k in ("ts", "flags", "seq", "ack", "ckey", "gid", "svc"))
        self._buf, self._start, self._size = (p[k][rows].tolist() for k in ("buf", "poff", "pcap"))
        self.cut = (p["pcap"][rows] < p["plen"][rows]).tolist()  # the capture's snapshot length cut its payload

    def payload(self, i: int) -> bytes:
        """As :meth:`Packets.payload` says of the ``i``-th row."""
        size = self._size[i]
        if size <= 0:
            return b""
        start = self._start[i]
        return bytes(self.table.buffers[self._buf[i]][start:start + size])


@dataclass
class _Client:
    key: int  # its flow (the 5-tuple): later connections may reuse it
    service: int
    rule: int
    row: _Row  # its first packet
    start: float
    last: float
    stream: Stream = field(default_factory=Stream)
    waiting: deque = field(default_factory=deque)  # (end offset, time, checks, _Row of the packet)
    backend: _Backend | None = None
    compared: int = 0
    mutated: bool = False
    reply: Stream = field(default_factory=Stream)  # what the LB sent the client
    syn_checks: list = field(default_factory=list)  # the response checks its SYN is held to
    accepted: bool = False  # the LB answered its SYN
    first_byte: float | None = None  # when its first byte came
    reset_at: float | None = None  # the LB reset it
    closed_at: float | None = None  # the LB closed it (FIN or RST)
    attempts: list = field(default_factory=list)  # failed backend connection attempts made for it
    outcome: str | None = None
    indexed: tuple[bool, bytes] = (False, b"")  # carried yet, and the first bytes of its stream (ProxyTracker._index)
    framed: bool | None = None  # its stream began with a PROXY protocol header (a proxy before the LB sent it)
    named: Ends | None = None  # the connection that header names
    cut: bool = False  # the capture cut short a segment of its bytes, or of its backend connection's: not judged
    moved: float = -math.inf  # when bytes last went either way on it
    sent_after: bool = False  # the client sent bytes after the LB closed it, when it was over
    ack: int | None = None  # the acknowledgement number of its latest packet
    fin: int | None = None  # the sequence number of the LB's FIN to it
    aborted_at: float | None = None  # the client reset it
    done_at: float | None = None  # ... or closed it having sent nothing: a probe, which waits for no answer
    ident: int = 0  # this connection, among every client connection: what the tracker's tables are keyed by
    syn: int | None = None  # the sequence number of its SYN (None: not seen)

    @property
    def first(self) -> Packets:
        """Its first packet (a table of one row)."""
        return self.row.packets()


@dataclass
class _Backend:
    key: int
    gid: int
    row: _Row  # its first packet
    start: float
    last: float
    stream: Stream = field(default_factory=Stream)
    client: _Client | None = None
    first_data: float | None = None
    first_data_row: _Row | None = None
    judged: bool = False  # found unexplained already
    reply: Stream = field(default_factory=Stream)  # what the backend sent the LB
    answered: bool = False  # the backend answered the SYN with a SYN-ACK
    refused: bool = False  # ... with a RST
    syn: bool = False  # the LB's SYN was seen
    closed_at: float | None = None  # the first FIN or RST on it, either way
    ended_at: float | None = None  # the backend's first FIN or RST on it
    reset_at: float | None = None  # the backend's first RST on it
    replies: deque = field(default_factory=deque)  # (end offset, time) of its bytes back not yet relayed
    reply_row: _Row | None = None  # the packet that brought the first of them

    attributed: bool = False  # a failed attempt, counted and given to a client (or found to be none's)
    framed: bool | None = None  # its stream began with a PROXY protocol header (None: its first byte not seen)
    named: Ends | None = None  # the connection the header names (see proxy_header)
    counted: bool = False  # its client's connection is in the traffic accounting: the bytes it carries count
    entry: list | None = None  # ... in this entry of it (see Traffic.entries), while the entry lives
    cut: bool = False  # the capture cut short a segment of its bytes

    @property
    def first(self) -> Packets:
        """Its first packet (a table of one row)."""
        return self.row.packets()

    @property
    def ident(self) -> int:
        """What the tracker's tables of backend connections are keyed by: its 5-tuple (a later connection on it
        replaces it)."""
        return self.key

    def failed(self, cutoff: float) -> str | None:
        """``refused`` or ``timeout`` if this is an attempt opened before ``cutoff`` that got no SYN-ACK
        (by the time the monitor has read, at least a horizon later), else None."""
        if not self.syn or self.answered or self.first_data is not None or self.start >= cutoff:
            return None
        return "refused" if self.refused else "timeout"


def _ends(row: _Row) -> Ends:
    """A client connection's ends as :func:`proxy_header` names them."""
    return tuple(row.value(column) for column in ("sa_hi", "sa_lo", "sport", "da_hi", "da_lo", "dport"))


def _named_by(backend: _Backend, client: _Client) -> bool:
    """Whether the backend connection's PROXY protocol header names the client's connection (or the one the
    client's own header named)."""
    return backend.named == (client.named or _ends(client.row))


def _named(backend: _Backend, matches: list[tuple[int, float, _Client]]) -> list[tuple[int, float, _Client]]:
    """Of the clients a backend connection's bytes match, the one its PROXY protocol header names, if it
    names one of them (requests alike, a millisecond apart, are told apart by it); else all."""
    if backend.named is None or len(matches) < 2:
        return matches
    return [m for m in matches if _named_by(backend, m[2])] or matches


def _ends_text(ends: Ends) -> str:
    return f"{endpoint(*ends[:3])} -> {endpoint(*ends[3:])}"


def _is_check(health, head: bytes) -> bool:
    """Whether a connection's first bytes are what the LB's checks send, where the spec says (a check may
    also carry nothing): a request of the health path, or the bytes of ``health tcp "..."``."""
    if health.kind == "http":
        return http_check(health.path).match(head) is not None
    return health.kind == "tcp" and bool(health.path) and head.startswith(_check_bytes(health.path))


def _check_bytes(text: str) -> bytes:
    """The bytes of ``health tcp "..."``: a character each (``\\xNN`` any byte), or UTF-8 beyond them."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode()


def _outcome(client: _Client) -> str:
    return "backend_refused" if any(c == "refused" for _b, c in client.attempts) else "backend_timeout"


def _common_length(one: bytes, other: bytes) -> int:
    """How many first bytes the two have alike (a binary search of slice comparisons: C speed)."""
    size = min(len(one), len(other))
    if one[:size] == other[:size]:
        return size
    low, high = 0, size  # one[:low] == other[:low], one[:high] != other[:high]
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if one[:middle] == other[:middle] else (low, middle)
    return low


def _discard(table: dict, connection) -> None:
    """Take ``connection`` out of ``table`` -- if it is there, and not a later connection of the same flow."""
    if table.get(connection.ident) is connection:
        del table[connection.ident]


def _rank(opened: float):
    """How clients that agree with a backend connection opened at ``opened`` rank: the longest agreement,
    then one opened before it (the latest), then one opened just after it, within the clocks' tolerance
    (the earliest).  Taking the latest within the tolerance instead would pair each of many identical
    requests, a millisecond apart, with the next client's backend connection, and leave the first client
    looking dropped."""
    def rank(match: tuple[int, float, _Client]) -> tuple[int, bool, float]:
        length, start, _client = match
        return length, start <= opened, start if start <= opened else -start
    return rank


class ProxyTracker:
    """Pairs client and backend connections of proxy services and judges their byte streams."""

    def __init__(self, engine):
        self.engine = engine
        self.compiled = engine.compiled
        self.services = {s.index for s in self.compiled.services if s.mode == "proxy"}
        # client connections, each by its ``ident``: a connection is kept when a later one reuses its 5-tuple (it
        # may have a backend connection still to pair, its bytes or replies to judge) until it is idle
        self.clients: dict[int, _Client] = {}
        self.current: dict[int, _Client] = {}  # the latest connection of each client flow (5-tuple)
        self.idents = itertools.count(1)
        # clients by whether a backend connection carries them, the length of the first bytes of their streams
        # indexed (up to ALIKE) and those bytes
        self.by_prefix: dict[bool, dict[int, dict[bytes, dict[int, _Client]]]] = {}
        self.free: dict[int, _Client] = {}  # clients no backend connection carries yet (these four: by ident)
        self.paired: list[tuple[_Client, _Backend]] = []  # connections paired and not judged yet
        self.unsettled: dict[int, _Client] = {}  # clients with bytes (or a reset SYN) not judged yet
        self.unpaired: dict[int, _Backend] = {}  # backend connections with bytes no client has shown yet
        self.unrelayed: dict[int, _Client] = {}  # clients whose backend sent bytes the LB has not relayed yet
        self.forgot = float("-inf")  # when idle connections were last forgotten
        self.backends: dict[int, _Backend] = {}
        self.occupying: dict[int, list[_Backend]] = {}  # per backend with `max_conn`: the connections it carried
        self.connections = 0
        self.carried = 0  # client connections a backend connection carried (the packet counts are other modes')
        self.cut = 0  # client connections whose bytes (or their backend connection's) the capture cut short
        self.sent_after = 0  # client connections that sent bytes after the LB closed them when they were over
        self.framed = {"from_clients": 0, "to_backends": 0}  # connections that began with a PROXY protocol header
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.attempts = {"refused": 0, "timeout": 0}
        self.volume = {"client_to_lb": 0, "lb_to_backend": 0, "backend_to_lb": 0, "lb_to_client": 0}
        self._kept: list[_Row] = []  # rows of the batch being read that connections keep (first packets, first bytes)
        self._shown: list[_Row] = []  # ... that verdicts may show (client packets waiting to be passed on)

    def wanted(self, p: Packets) -> np.ndarray:
        """Rows this tracker takes: TCP to or from proxy services' connections (replies too: they are
        counted, and say whether a backend answered and whether the LB reset a client)."""
        if not self.services:
            return np.zeros(len(p), bool)
        tcp = p["proto"] == TCP
        services = list(self.services)
        ingress = (p["role"] == INGRESS) & np.isin(p["svc"], services)
        replies = np.nonzero(tcp & (p["role"] == CREPLY))[0]
        to_client = np.zeros(len(p), bool)
        hi, lo = p["sa_hi"][replies], p["sa_lo"][replies]
        vips = self.compiled.service_at(hi, lo, p["proto"][replies], p["sport"][replies],
                                        self.compiled.vip_of(akey(hi, lo)))
        to_client[replies] = np.isin(vips, services)
        backend_service = self.compiled.backend_service[p["gid"]]
        ours = np.isin(backend_service, services)
        egress = (p["role"] == EGRESS) & (ours | ((p["gid"] < 0) & ~self.engine.known_clients(p)))
        return tcp & (ingress | to_client | egress | ((p["role"] == BREPLY) & ours))

    def observe(self, p: Packets, rows: np.ndarray) -> None:
        roles = p["role"][rows]
        checks, rules = self._response_checks(p, rows[roles == INGRESS])
        keys = self._connection_keys(p, rows, roles).tolist()
        batch = _Batch(p, rows)
        position = 0
        for i, (role, key) in enumerate(zip(roles.tolist(), keys)):
            if role == INGRESS:
                self._client_packet(batch, i, checks[position], rules[position])
                position += 1
            elif role == EGRESS:
                self._backend_packet(batch, i, key)
            elif role == CREPLY:
                self._to_client(batch, i)
            else:
                self._from_backend(batch, i, key)
        self._keep(p)
        if self.paired:
            self._judge_pairs()

    def _hold(self, batch: _Batch, i: int, rows: list[_Row]) -> _Row:
        """A handle on the ``i``-th row of the batch, which :meth:`_keep` points at a copy at its end."""
        row = _Row(batch.table, batch.rows[i])
        rows.append(row)
        return row

    def _keep(self, p: Packets) -> None:
        """Copy the rows of ``p`` held on to (one take each: connections' first packets, which live as long
        as their connections, and packets verdicts may show, which live a horizon or two) and point their
        handles there."""
        for rows in (self._kept, self._shown):
            if rows:
                table = p.take(np.array([row.index for row in rows]))
                for index, row in enumerate(rows):
                    row.table, row.index = table, index
                rows.clear()

    @staticmethod
    def _connection_keys(p: Packets, rows: np.ndarray, roles: np.ndarray) -> np.ndarray:
        """The backend connection each backend-side row is on, as the LB's packets on it are keyed (their
        5-tuple; a backend's packets with their ends swapped); 0 for client-side rows."""
        keys = np.zeros(len(rows), np.uint64)
        sides = np.nonzero((roles == EGRESS) | (roles == BREPLY))[0]
        keys[sides] = flow_key(p, rows[sides], reverse=roles[sides] == BREPLY)
        return keys

    def _response_checks(self, p: Packets, rows: np.ndarray) -> tuple[list[list[CheckPlan]], list[int]]:
        """For each row, the response checks it is held to (listened, a rule takes it, in scope), and the rule
        of its service that takes it (-1: none)."""
        out: list[list[CheckPlan]] = [[] for _ in rows]
        rules = np.full(len(rows), -1, np.int64)
        view = {k: p[k][rows] for k in judge.VIEW_COLUMNS}
        for service in self.services:
            plan = self.compiled.services[service]
            mine, rule = p["svc"][rows] == service, plan.rule_index(view)
            rules[mine] = rule[mine]
            base = mine & plan.listened(view) & (rule >= 0)
            for check in plan.of_kind("response"):
                for j in np.nonzero(base & check.scope(view))[0].tolist():
                    out[j].append(check)
        return out, rules.tolist()

    # ---------------------------------------------------------- clients --

    def _client_packet(self, batch: _Batch, i: int, checks: list[CheckPlan], rule: int) -> None:
        key, time, flags, seq = batch.ckey[i], batch.ts[i], batch.flags[i], batch.seq[i]
        client = self.current.get(key)
        if client is None or (flags & _SYN and not flags & _ACK and seq != client.syn):
            client = self._open_client(batch, i, rule)  # a new connection (a SYN sent again repeats its number)
        client.last = time
        if flags & _SYN:
            client.syn = seq
            client.stream.isn = seq
            client.syn_checks = client.syn_checks or checks
            return
        if flags & _RST and client.aborted_at is None:
            client.aborted_at = time
        if flags & _FIN and client.done_at is None and not client.stream.next:
            client.done_at = time
        if flags & _ACK:
            client.ack = batch.ack[i]
        data = batch.payload(i)
        if batch.cut[i]:
            self._blind(client)
        if client.framed is None and data and client.stream.offset(seq) == 0:
            data, seq = self._unframe(client, data, seq)
        if not data:
            return
        if client.closed_at is None:
            client.moved = time
        if client.first_byte is None:
            client.first_byte = time
        end = client.stream.offset(seq) + len(data)
        before = client.stream.next
        self.volume["client_to_lb"] += client.stream.add(seq, data) - before
        if len(client.indexed[1]) < ALIKE and client.stream.prefix[:ALIKE] != client.indexed[1]:
            self._unindex(client)
            self._index(client)
            if self.unpaired and client.backend is None:
                self._retry_unpaired()
        if checks and not client.cut:
            client.waiting.append((end, time, checks, self._hold(batch, i, self._shown)))
            self.unsettled[client.ident] = client
        if client.backend is not None:
            self._deliver(client, client.backend.stream.next, client.backend.last)

    def _open_client(self, batch: _Batch, i: int, rule: int) -> _Client:
        key, time = batch.ckey[i], batch.ts[i]
        client = _Client(key, batch.svc[i], rule, self._hold(batch, i, self._kept), time, time, moved=time,
                         ident=next(self.idents))
        self.current[key] = self.clients[client.ident] = self.free[client.ident] = client
        self.connections += 1
        return client

    def _index(self, client: _Client) -> None:
        carried, prefix = client.indexed = (client.backend is not None, client.stream.prefix[:ALIKE])
        if prefix:
            by_length = self.by_prefix.setdefault(carried, {})
            by_length.setdefault(len(prefix), {}).setdefault(prefix, {})[client.ident] = client

    def _unindex(self, client: _Client) -> None:
        carried, prefix = client.indexed
        by_length = self.by_prefix.get(carried, {})
        buckets = by_length.get(len(prefix), {})
        bucket = buckets.get(prefix)
        if bucket is not None and bucket.get(client.ident) is client:
            del bucket[client.ident]
            if not bucket:
                del buckets[prefix]
                if not buckets:
                    del by_length[len(prefix)]

    def _drop(self, client: _Client) -> None:
        """A client forgotten."""
        self._unindex(client)
        del self.clients[client.ident]
        if self.current.get(client.key) is client:
            del self.current[client.key]
        _discard(self.unsettled, client)
        _discard(self.free, client)
        _discard(self.unrelayed, client)

    def _to_client(self, batch: _Batch, i: int) -> None:
        """What the LB sends a client: its SYN-ACK, its bytes, its FIN or RST."""
        client = self.current.get(batch.ckey[i])
        if client is None:
            return
        time, flags = batch.ts[i], batch.flags[i]
        if flags & _SYN:
            client.accepted = True
            client.reply.isn = batch.seq[i]
        if flags & _RST and client.reset_at is None:
            client.reset_at = time
            self.unsettled[client.ident] = client
        if flags & (_RST | _FIN) and client.closed_at is None:
            client.closed_at = time
        data = batch.payload(i)
        if flags & _FIN:
            client.fin = batch.seq[i] + len(data)
        if data:
            client.moved = time
            before = client.reply.next
            self.volume["lb_to_client"] += client.reply.add(batch.seq[i], data) - before
            if client.ident in self.unrelayed:
                self._relayed(client)

    # --------------------------------------------------------- backends --

    def _backend_packet(self, batch: _Batch, i: int, key: int) -> None:
        time, flags, seq = batch.ts[i], batch.flags[i], batch.seq[i]
        backend = self.backends.get(key)
        if backend is None or (flags & _SYN and not flags & _ACK and backend.stream.next):
            backend = _Backend(key, batch.gid[i], self._hold(batch, i, self._kept), time, time)
            self.backends[key] = backend
            self.unpaired.pop(key, None)  # a connection before it on the same ports, if any, is gone
        backend.last = time
        if flags & _SYN:
            backend.stream.isn = seq
            backend.syn = True
            return
        if flags & (_FIN | _RST) and backend.closed_at is None:
            backend.closed_at = time
        data = batch.payload(i)
        if batch.cut[i] and not backend.cut:
            backend.cut = True
            if backend.client is not None:
                self._blind(backend.client)
        if backend.framed is None and data and backend.stream.offset(seq) == 0:
            data, seq = self._unframe(backend, data, seq)
        if not data:
            return
        if backend.first_data is None:
            backend.first_data = time
            backend.first_data_row = self._hold(batch, i, self._kept)
        before = backend.stream.next
        reached = backend.stream.add(seq, data)
        self.volume["lb_to_backend"] += reached - before
        if backend.counted:
            self.engine.traffic.carried(backend.entry, backend.gid, reached - before, time)
        if backend.client is None and not backend.judged:
            self._try_pair(backend)
        if backend.client is not None and backend.client.backend is backend:
            self._deliver(backend.client, reached, time)

    def _unframe(self, connection: _Client | _Backend, data: bytes, seq: int) -> tuple[bytes, int]:
        """The first bytes of a connection without the PROXY protocol header they may start with -- the LB's
        word to a backend on whose connection it is (or a proxy's before it, to the LB) -- and where the
        rest, the relayed bytes, starts.  The stream is counted from after the header."""
        found = proxy_header(data)
        connection.framed = found is not None
        if found is None:
            return data, seq
        length, connection.named = found
        stream = connection.stream
        stream.isn = (stream.isn + length) & 0xFFFFFFFF
        stream.pending = {offset - length: chunk for offset, chunk in stream.pending.items() if offset >= length}
        self.framed["to_backends" if isinstance(connection, _Backend) else "from_clients"] += 1
        return data[length:], (seq + length) & 0xFFFFFFFF

    def _try_pair(self, backend: _Backend) -> None:
        """Pair a backend connection with the client whose bytes it carries.  One whose bytes no client has
        shown yet (two captures' clocks a hair apart) waits in ``unpaired`` until a client's stream grows."""
        self._pair_by_bytes(backend)
        if backend.client is None and not backend.judged:
            self.unpaired[backend.key] = backend
        else:
            _discard(self.unpaired, backend)

    def _retry_unpaired(self) -> None:
        for backend in list(self.unpaired.values()):
            self._try_pair(backend)
            if backend.client is not None:
                self._deliver(backend.client, backend.stream.next, backend.last)

    def _from_backend(self, batch: _Batch, i: int, key: int) -> None:
        """What a backend sends the LB: its SYN-ACK or RST to the LB's SYN, its bytes (``key``: the key of the
        LB's packets on this connection)."""
        backend = self.backends.get(key)
        if backend is None:
            return
        flags = batch.flags[i]
        if flags & _SYN and flags & _ACK:
            backend.answered = True
            backend.reply.isn = batch.seq[i]
        elif flags & _RST and not backend.answered:
            backend.refused = True
        if flags & (_FIN | _RST):
            if backend.closed_at is None:
                backend.closed_at = batch.ts[i]
            if backend.ended_at is None:
                backend.ended_at = batch.ts[i]
            if flags & _RST and backend.reset_at is None:
                backend.reset_at = batch.ts[i]
        data = batch.payload(i)
        if data:
            before = backend.reply.next
            after = backend.reply.add(batch.seq[i], data)
            self.volume["backend_to_lb"] += after - before
            client = backend.client
            if after > before and (client is None or client.reply.next < after):  # (the client's side may be read
                if not backend.replies:  # first: the bytes relayed already)
                    backend.reply_row = self._hold(batch, i, self._kept)
                backend.replies.append((after, batch.ts[i]))
                if client is not None:
                    self.unrelayed[client.ident] = client

    def _pair_by_bytes(self, backend: _Backend) -> None:
        """The client connection whose stream starts like this one (at least its first ``ALIKE`` bytes): the
        one that agrees with it longest, then as :func:`_rank` says; unpaired ones first."""
        head = backend.stream.prefix
        if not head:
            return
        limit = backend.start + self.engine.options.tolerance
        free = _named(backend, self._matching(head, limit, self._candidates(head, False)))
        if free:
            self._pair(max(free, key=_rank(backend.start))[2], backend)
            return
        carried = self._candidates(head, True) if len(head) >= ALIKE else self.clients.values()
        matching = self._matching(head, limit, carried)
        if matching:
            client = max(matching, key=_rank(backend.start))[2]
            backend.judged = True
            self._duplicate(client, backend)

    def _candidates(self, head: bytes, carried: bool) -> list[_Client]:
        """Clients (carried by a backend connection or not) that may agree with ``head`` on the bytes the rule
        asks (see :meth:`_matching`), by the first bytes of their streams: every one where ``head`` has ALIKE
        bytes; with a shorter head, those whose streams are no longer than it (and, not carried, the rest)."""
        longest = min(len(head), ALIKE)
        by_length = self.by_prefix.get(carried, {})
        found = [c for size in sorted(by_length) if size <= longest
                 for c in by_length[size].get(head[:size], {}).values()]
        if len(head) < ALIKE and not carried:
            found += [c for c in self.free.values() if len(c.indexed[1]) > len(head)]
        return found

    @staticmethod
    def _matching(head: bytes, limit: float, clients) -> list[tuple[int, float, _Client]]:
        """The clients opened by ``limit`` whose streams start like ``head``: on its first ALIKE bytes, or all
        of the shorter of the two."""
        ranked = [(_common_length(head, c.stream.prefix), c.start, c) for c in clients if c.start <= limit]
        return [(length, start, c) for length, start, c in ranked
                if length and length >= min(ALIKE, len(head), len(c.stream.prefix))]

    def _pair(self, client: _Client, backend: _Backend) -> None:
        self._unindex(client)
        client.backend, backend.client = backend, client
        self._index(client)
        _discard(self.free, client)
        self.paired.append((client, backend))
        if backend.gid >= 0 and self.compiled.backends[backend.gid].backend.max_conn is not None:
            self.occupying.setdefault(backend.gid, []).append(backend)
        self.carried += 1
        if backend.replies:
            self._relayed(client)
        if backend.cut:
            self._blind(client)
        if backend.named is not None and not _named_by(backend, client):
            self._misnamed(client, backend)

    def _judge_pairs(self) -> None:
        """The connections paired since last time, judged together (per service) as the packet pairs of the
        other modes are: one table of their first packets, not a table per connection."""
        for service in sorted({client.service for client, _backend in self.paired}):
            mine = [(c, b) for c, b in self.paired if c.service == service]
            table = _gather([c.row for c, _b in mine] + [b.row for _c, b in mine])
            table["gid"][len(mine):] = [b.gid for _c, b in mine]
            ii, ee = np.arange(len(mine)), np.arange(len(mine), 2 * len(mine))
            pairs = judge.Pairs.gather(table, self.compiled.services[service], ii, ee, 1)
            judge.run_checks(self.engine, pairs, ("undeclared", "backends", "down", "stick"))
            counted = np.nonzero(pairs.listened & (pairs.gid >= 0) & (pairs.rule >= 0))[0]
            traffic = self.engine.traffic
            traffic.account(self.engine, pairs, counted)
            for row, entry in zip(counted.tolist(), traffic.entries(pairs, counted)):
                backend = mine[row][1]
                backend.counted, backend.entry = True, entry
                traffic.carried(entry, backend.gid, backend.stream.next, backend.last)  # what it carried so far
        self.paired = []

    def _deliver(self, client: _Client, reached: int, time: float) -> None:
        """The backend has ``reached`` bytes at ``time``: settle the client bytes now delivered."""
        while client.waiting and client.waiting[0][0] <= reached:
            end, sent, checks, ref = client.waiting.popleft()
            late = [c for c in checks if time - sent > c.pattern.within]
            if late:
                room = self._room(client, sent, time)
                late = [c for c in late if room > c.pattern.within]
            if late and self._failed_before(client, time):
                continue  # late because the attempts before this one failed: judged as attempts
            for check in late:
                self._late(client, check, sent, time - sent, ref)
        self._compare(client)

    def _failed_before(self, client: _Client, time: float) -> bool:
        """Whether attempts for ``client`` failed before ``time`` (a retry on the next server came late)."""
        self._attribute(time)
        if client.attempts:
            self._fail(client, _outcome(client))
        return bool(client.attempts)

    def _compare(self, client: _Client) -> None:
        if client.cut:
            return
        backend = client.backend
        mine, theirs = client.stream.blocks, backend.stream.blocks
        upto = min(len(mine), len(theirs))
        for index in range(client.compared, upto):
            if mine[index] != theirs[index] and not client.mutated:
                client.mutated = True
                self._mutated(client, index * BLOCK)
        client.compared = upto

    # ---------------------------------------------------------- verdicts --

    def _checks(self, client: _Client, kind: str) -> list[CheckPlan]:
        return self.compiled.services[client.service].of_kind(kind)

    def _late(self, client: _Client, check: CheckPlan, sent: float, latency: float, ref: _Row) -> None:
        name = self.compiled.backends[client.backend.gid].name if client.backend.gid >= 0 else None
        self.engine.verdict(d.DROP, check, client.key, sent, [], lambda: (
            f"{flow_text(client.first, 0)}: bytes reached {name or 'the backend'} after {latency * 1e3:.3f}ms, "
            f"later than the {check.pattern.within * 1e3:g}ms deadline",
            {"flow": flow_text(client.first, 0), "backend": name, "latency_ms": latency * 1e3,
             "deadline_ms": check.pattern.within * 1e3, "forwarded": True}), witness=self._witness(client, [ref]))

    def _mutated(self, client: _Client, offset: int) -> None:
        backend = client.backend
        name = self.compiled.backends[backend.gid].name if backend.gid >= 0 else None
        for check in self._checks(client, "integrity"):
            if "payload" in check.pattern.fields or "headers" in check.pattern.fields:
                self.engine.verdict(d.MUTATION, check, client.key, backend.last, [], lambda: (
                    f"the bytes {name or 'the backend'} got differ from what the client sent, from byte {offset}",
                    {"flow": flow_text(client.first, 0), "backend": name, "fields": ["payload"],
                     "offset": offset}), witness=self._witness(client, []))

    def _misnamed(self, client: _Client, backend: _Backend) -> None:
        """A PROXY protocol header that names another connection than the client's (or than the one the
        client's own header named): the backend is told a wrong client (or VIP)."""
        name = self.compiled.backends[backend.gid].name if backend.gid >= 0 else None
        named = _ends_text(backend.named)
        for check in self._checks(client, "integrity"):
            if "headers" in check.pattern.fields:
                self.engine.verdict(d.MUTATION, check, client.key, backend.first_data or backend.start, [], lambda: (
                    f"the PROXY protocol header {name or 'the backend'} got names {named}, not the client's "
                    f"connection", {"flow": flow_text(client.first, 0), "backend": name, "fields": ["proxy_header"],
                                    "named": named}), witness=self._witness(client, []))

    def _duplicate(self, client: _Client, backend: _Backend) -> None:
        name = self.compiled.backends[backend.gid].name if backend.gid >= 0 else None
        for check in self._checks(client, "twice"):
            self.engine.verdict(d.DUPLICATE, check, backend.key, backend.start, [], lambda: (
                f"a second backend connection ({name or 'undeclared'}) carries the bytes of "
                f"{flow_text(client.first, 0)}", {"flow": flow_text(client.first, 0), "backend": name}),
                witness=self._witness(client, [], backend))

    def _witness(self, client: _Client, rows: list[_Row], backend: _Backend | None = None) -> Witness | None:
        """The connections' first packets, the backend connection's first bytes and ``rows``."""
        if not self.engine.options.witnesses:
            return None
        backend = backend or client.backend
        shown = [client.row]
        if backend is not None:
            shown.append(backend.row)
            if backend.first_data_row is not None:
                shown.append(backend.first_data_row)
        refs = [row.ref(self.engine.sources) for row in shown + rows]
        return Witness(sorted(refs, key=lambda r: r.time))

    # ------------------------------------------------------------- ageing --

    def finalize(self, cutoff: float) -> None:
        """Failed attempts are given to their clients; client bytes older than ``cutoff`` never delivered
        are failures, and drops when the LB tried no backend; lone backend connections LB208."""
        self._attribute(cutoff)
        for client in list(self.unsettled.values()):  # a horizon later: attempts made just after the bytes came
            self._settle_client(client, cutoff - self.engine.horizon)
            if not client.waiting and not self._reset_unjudged(client):
                del self.unsettled[client.ident]
        ending = cutoff == float("inf")
        for backend in list(self.backends.values()):
            if backend.client is not None or backend.judged:
                continue
            if backend.first_data is None:
                if ending or (backend.closed_at is not None and backend.closed_at < cutoff):  # a horizon on
                    self._carried_nothing(backend, ending)
            elif backend.first_data < cutoff:
                self._unexplained(backend)
        if self.paired:
            self._judge_pairs()
        if self.unrelayed:
            self._judge_replies(cutoff)
        self._forget(cutoff)

    def _attribute(self, cutoff: float) -> None:
        """Each attempt that failed before ``cutoff``: to the client connection it was made for."""
        for backend in self.backends.values():
            if backend.attributed or backend.client is not None or backend.judged:
                continue
            cause = backend.failed(cutoff)
            if cause is None:
                continue
            backend.attributed = True
            self.attempts[cause] += 1
            client = self._made_for(backend)
            if client is not None:
                backend.judged = True
                client.attempts.append((backend, cause))
                self._judge_attempt(client, backend)
            elif self._health(backend) != "none":
                backend.judged = True  # a health check of a dead backend looks the same
                self.engine.counts.probes += 1

    def _health(self, backend: _Backend) -> str:
        if backend.gid < 0:
            return "none"
        return self.compiled.services[self.compiled.backends[backend.gid].service].service.health.kind

    def _made_for(self, backend: _Backend) -> _Client | None:
        """The latest client connection opened before the attempt, still open, and not yet carried.

        Where the LB checks its backends, an attempt that fails may be a check as well as a client's: it
        is a client's only if the spec lets the LB send that client to this backend, and -- its first --
        only if it came within the pairing window of the client's SYN or first byte (the LB connects as
        it accepts, or once the first bytes say where to).  Otherwise each check of a dead backend of
        one pool made while a client of another was being connected would be that client sent where its
        rule does not go, and a check made while a client waited in vain would be the LB trying for it
        (hiding the drop).  A retry comes when the attempt before fails, however late."""
        limit = backend.start + self.engine.options.tolerance
        checked = backend.gid >= 0 and self._health(backend) != "none"
        soon = self.engine.horizon
        open_then = [c for c in self.clients.values()
                     if c.start <= limit and (c.closed_at is None or c.closed_at >= backend.start)
                     and (c.backend is None or c.backend.start >= backend.start)
                     and (backend.gid < 0 or self.compiled.backends[backend.gid].service == c.service)
                     and (not checked or (self.engine.may_choose(c.service, c.row.value("fam"), c.rule, backend.gid)
                                          and (c.attempts or backend.start <= max(c.start, c.first_byte or 0) + soon)))]
        return max(open_then, key=lambda c: c.start) if open_then else None

    def _judge_attempt(self, client: _Client, backend: _Backend) -> None:
        """A failed attempt is a forwarded connection: judged for its destination and the backend's health
        (on what was known just before it: its own silence is evidence recorded at its SYN)."""
        table = _gather([client.row, backend.row])
        table["gid"][1] = backend.gid
        table["ts"][1] = backend.start - 1e-6
        pairs = judge.Pairs.gather(table, self.compiled.services[client.service], np.array([0]), np.array([1]), 1)
        kinds = ("undeclared", "backends")
        # the backend is chosen once per client connection: retries to the same one (HAProxy without
        # `redispatch`) carry out that choice; an attempt for a client served in the end may be a health check
        again = any(b.gid == backend.gid for b, _c in client.attempts[:-1])
        if not again and (client.backend is None or self._health(backend) == "none"):
            kinds += ("down",)
        judge.run_checks(self.engine, pairs, kinds)

    def _settle_client(self, client: _Client, cutoff: float) -> None:
        """Client bytes (or a SYN the LB reset) older than ``cutoff`` and never delivered."""
        while client.waiting and client.waiting[0][1] < cutoff:
            end, sent, checks, ref = client.waiting[0]
            within = max(c.pattern.within for c in checks)
            if not self.engine.seen_since(1) <= sent <= self.engine.seen_until(1) - within:
                client.waiting.popleft()  # the backend-side capture started after them, or stopped too soon
                self.engine.counts.unjudged += 1
                continue
            if client.closed_at is not None and client.closed_at < sent and self._over(client):
                client.waiting.popleft()
                self._sent_after_close(client)
                continue
            now = self.engine.watermark
            room = self._room(client, sent, now)
            held = room < now - sent and room <= within  # the backends were full, with room no longer than that
            if held and cutoff < math.inf and not client.attempts:
                break  # every backend it could go to is full: the LB may hold it until one has room
            client.waiting.popleft()
            if client.attempts:
                self._fail(client, _outcome(client))
            elif held:
                self._fail(client, "backends_full")
            else:
                self._fail(client, "lb_reset" if client.reset_at is not None else "not_relayed")
                self.engine.proxy_drop(client, sent, checks, self._witness(client, [ref]))
        if self._reset_unjudged(client) and client.reset_at < cutoff:
            self._fail(client, "lb_reset")  # refused at once: its SYN is what was dropped
            self.engine.proxy_drop(client, client.start, client.syn_checks,
                                   self._witness(client, []))

    def _room(self, client: _Client, start: float, end: float) -> float:
        """Seconds of [start, end] in which a backend the spec lets the LB send ``client`` to had room for it:
        all of them, unless those backends have `max_conn`.  A proxy holds a client while every one of them
        carries as many connections as it may (HAProxy queues it): the deadline runs only while one has room."""
        capped = {gid: self.compiled.backends[gid].backend.max_conn
                  for gid in self.compiled.candidates(client.service, client.rule)}
        if end <= start or not any(capped.values()):
            return max(end - start, 0.0)
        carried = [b for gid in capped for b in self.occupying.get(gid, ())
                   if b.start < end and (b.closed_at is None or b.closed_at > start)]
        edges = sorted({start, end, *(t for b in carried for t in (b.start, b.closed_at)
                                      if t is not None and start < t < end)})
        plan, family = self.compiled.services[client.service], client.row.value("fam")
        room = 0.0
        for lo, hi in zip(edges, edges[1:]):
            at = (lo + hi) / 2
            up = frozenset(r.name for r in plan.backends if self.engine.timeline.down_at(r.gid, at) is None)
            open_then = collections.Counter(b.gid for b in carried
                                            if b.start <= at and (b.closed_at is None or at < b.closed_at))
            if any(capped[gid] is None or open_then[gid] < capped[gid]
                   for gid in self.compiled.eligible(client.service, client.rule, family, up)):
                room += hi - lo
        return room

    @staticmethod
    def _reset_unjudged(client: _Client) -> bool:
        """A client the LB reset without accepting it, not judged yet."""
        return bool(client.syn_checks) and client.reset_at is not None and not client.accepted \
            and client.outcome is None and not client.attempts

    def _blind(self, client: _Client) -> None:
        """The capture cut short bytes of ``client``'s connection or its backend connection (its snapshot length
        is under the segments' size): what reached the backend, and when, cannot be told; nothing more of
        it is judged, and it is counted."""
        if client.cut:
            return
        client.cut = True
        self.cut += 1
        self.engine.counts.unjudged += len(client.waiting)
        client.waiting.clear()

    def _over(self, client: _Client) -> bool:
        """Was ``client``'s connection over when the LB closed it: had the backend ended the connection carrying
        it (a server that closed, or died), or had it been idle as long as the spec lets the LB keep an idle
        connection (its flow timeout: HAProxy's `timeout client`, nginx's `proxy_timeout`)?  Asked when bytes the
        client sent after the close are judged: by then the backend's end, seen on the other side, has been read."""
        backend = client.backend
        if backend is not None and backend.ended_at is not None and \
                backend.ended_at <= client.closed_at + self.engine.options.tolerance:
            return True
        return self._idle_at_close(client)

    def _idle_at_close(self, client: _Client) -> bool:
        """Had no byte gone either way on ``client``'s connection for its flow timeout when the LB closed it?"""
        affinity = self.compiled.services[client.service].service.affinity
        return affinity.kind != "none" and \
            client.closed_at - client.moved >= affinity.timeout - self.engine.options.tolerance

    def _relayed(self, client: _Client, got: int | None = None) -> None:
        """Take off what the client has got of its backend's bytes back (``got``: that many, else what the capture
        shows relayed); a client with some not relayed yet waits in ``unrelayed``."""
        replies = client.backend.replies
        got = client.reply.next if got is None else got
        while replies and replies[0][0] <= got:
            replies.popleft()
        if replies:
            self.unrelayed[client.ident] = client
        else:
            _discard(self.unrelayed, client)

    @staticmethod
    def _got(client: _Client) -> int:
        """How many of the LB's bytes the client got: those seen on their way, or acknowledged (where the
        capture missed some) -- up to the LB's FIN, which takes a sequence number of its own."""
        if client.ack is None or client.reply.isn is None:
            return client.reply.next
        acked = client.reply.offset(client.ack)
        if client.fin is not None:
            acked = min(acked, client.reply.offset(client.fin))
        return max(client.reply.next, acked if acked < 1 << 31 else 0)

    def _judge_replies(self, cutoff: float) -> None:
        """Clients the LB closed before ``cutoff`` with bytes of their backend's, sent before it too, never relayed:
        LB215, unless the client was gone first (it reset the connection, or closed it having sent nothing: a
        probe that connects and leaves, before a server's greeting), the backend reset its own (which discards
        what it sent), the LB closed an idle connection at its timeout before they came, or the client-side
        capture started after them.  A connection still open is not judged: a client that reads
        slowly holds the LB's bytes back as long as it likes."""
        for client in list(self.unrelayed.values()):
            backend = client.backend
            if client.closed_at is None or client.closed_at >= cutoff or backend.replies[0][1] >= cutoff:
                continue
            got = self._got(client)
            self._relayed(client, got)  # what the client acknowledged, too
            if not backend.replies:
                continue
            _discard(self.unrelayed, client)
            sent, lost = backend.replies[0][1], backend.reply.next - got
            backend.replies.clear()
            soon = sent + self.engine.horizon
            # before the client-side capture started, where they went is not shown (the capture's end needs no such
            # care: once the LB has closed the connection, nothing more can reach the client)
            if client.cut or backend.cut or sent < self.engine.seen_since(0):
                self.engine.counts.unjudged += 1
            elif (client.aborted_at is not None and client.aborted_at <= soon) or \
                    (client.done_at is not None and client.done_at <= soon) or \
                    (backend.reset_at is not None and backend.reset_at <= soon) or \
                    (client.closed_at <= sent and self._idle_at_close(client)):
                continue
            else:
                self._unrelayed(client, sent, lost)

    def _unrelayed(self, client: _Client, sent: float, lost: int) -> None:
        name = self.compiled.backends[client.backend.gid].name if client.backend.gid >= 0 else None
        closed = client.closed_at
        for check in self._checks(client, "reverse"):
            self.engine.verdict(d.REPLY_NOT_RELAYED, check, client.key, sent, [], lambda: (
                f"{flow_text(client.first, 0)}: {lost} bytes {name or 'the backend'} sent back were never relayed; "
                f"the LB closed the client's connection {abs(closed - sent) * 1e3:.3f}ms "
                f"{'after' if closed >= sent else 'before'} they came",
                {"flow": flow_text(client.first, 0), "backend": name, "bytes": lost, "sent": sent,
                 "closed": closed}), witness=self._witness(client, [client.backend.reply_row]))

    def _sent_after_close(self, client: _Client) -> None:
        """Bytes a client sent after the LB closed its connection once it was over (:meth:`_over`): there is
        nothing to pass them on to.  Not judged; the connection is counted."""
        if not client.sent_after:
            client.sent_after = True
            self.sent_after += 1

    def _fail(self, client: _Client, outcome: str) -> None:
        if client.outcome is None:
            client.outcome = outcome
            self.outcomes[outcome] += 1

    def summary(self) -> dict:
        """The summary's ``proxy`` entry (docs/monitor.md)."""
        return {"client_connections": self.connections, "carried": self.carried, "failed": dict(self.outcomes),
                "failed_attempts": dict(self.attempts), "bytes": dict(self.volume), "proxy_protocol": dict(self.framed),
                "cut": self.cut, "sent_after_close": self.sent_after}

    def _carried_nothing(self, backend: _Backend, ending: bool) -> None:
        """A backend connection that is over and carried nothing: paired with the last client connection opened
        just before it that is over too (``ending``: the run is) and sent nothing -- of those no backend
        connection carries (a few, where every open client connection is many), and whose rule may send it
        to that backend (a client the LB rejects is not the client of a check made just after) -- else
        unexplained.

        Not sooner: two clients that connect at once get a backend connection each, and which is whose shows
        only when one of them sends (HAProxy relays a request a client sends seconds later over the connection
        it opened second as readily as the first).  Paired by time a second in, the connection the request
        then went over belonged to the other client, and the request looked dropped."""
        opened = [c for c in self.free.values() if 0 <= backend.start - c.start <= _OPEN_WITHIN and not c.stream.next
                  and (ending or c.closed_at is not None)
                  and (backend.gid < 0 or self.engine.may_choose(c.service, c.row.value("fam"), c.rule, backend.gid))]
        if backend.named is not None:  # a PROXY protocol header says whose it is (a check's names none of them)
            opened = [c for c in opened if _named_by(backend, c)]
        if opened:
            self._pair(max(opened, key=lambda c: c.start), backend)
        else:
            self._unexplained(backend)

    def _unexplained(self, backend: _Backend) -> None:
        backend.judged = True
        _discard(self.unpaired, backend)
        if backend.gid < 0:
            return
        plan = self.compiled.services[self.compiled.backends[backend.gid].service]
        health = plan.service.health
        probe = backend.first_data is None or _is_check(health, backend.stream.prefix)
        if health.kind != "none" and probe:
            self.engine.counts.probes += 1
            return
        if backend.cut or (backend.start if backend.first_data is None else backend.first_data) > \
                self.engine.seen_until(0):
            self.engine.counts.unjudged += 1  # its bytes are cut short, or its client came after the capture
            return
        name = self.compiled.backends[backend.gid].name
        for check in plan.of_kind("twice"):
            self.engine.verdict(d.EGRESS_WITHOUT_INGRESS, check, backend.key, backend.start, [], lambda: (
                f"a connection to {name} that no client connection explains",
                {"flow": flow_text(backend.first, 0), "backend": name}),
                witness=Witness([backend.row.ref(self.engine.sources)]))

    def _forget(self, cutoff: float) -> None:
        if cutoff - self.forgot < 10.0:  # connections idle for 300 s: a look every 10 s of traffic will do
            return
        self.forgot = cutoff
        idle = cutoff - 300.0
        for backend in [b for b in self.backends.values() if b.last < idle and b.client is None and not b.judged
                        and b.first_data is None]:
            self._carried_nothing(backend, True)  # over, as its idle clients are
        for gid, carried in self.occupying.items():  # over, or idle as long: a close the capture missed
            self.occupying[gid] = [b for b in carried if b.last >= idle]
        for client in [c for c in self.clients.values() if c.last < idle]:
            self._drop(client)
        for key in [k for k, b in self.backends.items() if b.last < idle]:
            _discard(self.unpaired, self.backends.pop(key))

    def finish(self) -> None:
        for client in self.clients.values():
            if client.backend is not None and not client.mutated:
                self._final_compare(client)
        self.finalize(float("inf"))

    def _final_compare(self, client: _Client) -> None:
        """The last partial block: compare the bytes both sides have."""
        if client.cut:
            return
        mine, theirs = client.stream, client.backend.stream
        if len(mine.blocks) != len(theirs.blocks):
            return
        size = min(len(mine.partial), len(theirs.partial))
        if size and mine.partial[:size] != theirs.partial[:size]:
            client.mutated = True
            self._mutated(client, len(mine.blocks) * BLOCK)

