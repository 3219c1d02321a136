"""A NAT load balancer written against lbspec's in-process adapter.

``MaglevLB(service)`` takes its configuration from a resolved lbspec service
(VIPs, listeners, rules, pools, failover, health settings, affinity timeout)
and implements the adapter: ``handle(packet, time)`` returns the packets it
sends, ``backend_health`` feeds its health checks, ``advance`` expires flows.

What it does with a client packet to a VIP:

1. not listened: ignored; no rule: ``otherwise`` (a TCP RST or an ICMP port
   unreachable for ``reject``);
2. a tracked flow keeps its backend while the health checks see it up and it
   still serves the rule (so a backup keeps what it took during a failover);
3. otherwise Maglev picks among the eligible backends: the rule's pool's
   primaries seen up (of the packet's address family), plus the failover
   targets when too few primaries are up -- and the flow is tracked;
4. destination NAT to the backend's address and port, TTL - 1; the reply
   mapping is remembered so that the backend's answers leave from the VIP.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from lbspec.harness import HealthChecks, Segment, decode
from lbspec.semantics.model import Address, Backend, Packet, Rule, Service

from .maglev import Maglev, stable_hash

__all__ = ["MaglevLB", "FlowTable"]

FlowKey = tuple
Reply = tuple  # (proto, backend address, backend port, client address, client port)


class FlowTable:
    """Tracked flows, least recently used first; entries idle for longer than ``timeout`` are gone."""

    def __init__(self, capacity: int, timeout: float):
        self.capacity, self.timeout = capacity, timeout
        self.entries: OrderedDict[FlowKey, tuple[str, float]] = OrderedDict()

    def get(self, key: FlowKey, time: float) -> str | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if time - entry[1] > self.timeout:  # at exactly the timeout the flow may still keep its backend
            del self.entries[key]
            return None
        return entry[0]

    def full(self) -> bool:
        return len(self.entries) >= self.capacity

    def put(self, key: FlowKey, backend: str, time: float) -> None:
        self.entries[key] = (backend, time)
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)  # evict the least recently used flow

    def expire(self, time: float) -> None:
        while self.entries:
            key, (_backend, last) = next(iter(self.entries.items()))
            if time - last <= self.timeout:
                return
            del self.entries[key]


class MaglevLB:
    """Maglev hashing, connection tracking, health checks and failover, in NAT mode."""

    def __init__(self, service: Service, table_size: int = 65536):
        if service.mode.kind != "nat":
            raise ValueError(f"MaglevLB does destination NAT; service {service.name!r} is in mode "
                             f"{service.mode.kind}")
        self.service = service
        self.vips = frozenset(service.vips)
        self.backends = {b.name: b for b in service.backends}
        self.checks = HealthChecks(service.health, self.backends)
        self.flows = FlowTable(table_size, service.affinity.timeout)
        self.nat: OrderedDict[Reply, tuple[Address, int]] = OrderedDict()
        self.nat_size = table_size
        self.tables: dict[tuple[tuple[str, int], ...], Maglev] = {}

    # ------------------------------------------------------------- adapter --

    def handle(self, packet: bytes, time: float) -> list[bytes]:
        segment = decode(packet)
        if segment is None:
            return []
        if segment.dst in self.vips:
            return [s.encode() for s in self.forward(segment, time)]
        return [s.encode() for s in self.translate_reply(segment)]

    def backend_health(self, backend: str, up: bool, time: float) -> None:
        self.checks.change(backend, up, time)

    def advance(self, time: float) -> None:
        self.flows.expire(time)

    # ------------------------------------------------------------- forward --

    def forward(self, segment: Segment, time: float) -> list[Segment]:
        packet = segment.packet
        if not self.service.listens_to(packet):
            return []
        rule = next((r for r in self.service.rules if r.matches(packet)), None)
        if rule is None:
            return self.turn_away(segment)
        backend = self.choose(segment, rule, time)
        if backend is None:
            return []
        return [self.to_backend(segment, rule, backend)]

    def choose(self, segment: Segment, rule: Rule, time: float) -> Backend | None:
        view = self.checks.seen_up(time)
        key = self.flow_key(segment.packet)
        pinned = self.pinned(key, rule, segment, view, time)
        if pinned is not None:
            self.track(key, pinned, time)
            return self.backends[pinned]
        eligible = self.eligible(rule, segment.family, view)
        if not eligible or not self.can_track(key, time):
            return None
        name = self.maglev(eligible).lookup(self.key_hash(segment.packet))
        self.track(key, name, time)
        return self.backends[name]

    def pinned(self, key: FlowKey, rule: Rule, segment: Segment, view: frozenset[str],
               time: float) -> str | None:
        """The tracked backend of this flow, if it may keep it."""
        if key is None:
            return None
        name = self.flows.get(key, time)
        if name is None or name not in view or name not in self.candidates(rule):
            return None
        return name if self.backends[name].family == segment.family else None

    def can_track(self, key: FlowKey, time: float) -> bool:
        return True  # a full table evicts its least recently used flow

    def track(self, key: FlowKey, backend: str, time: float) -> None:
        if key is not None:
            self.flows.put(key, backend, time)

    def flow_key(self, packet: Packet) -> FlowKey | None:
        kind = self.service.affinity.kind
        if kind == "none":
            return None
        if kind == "client":
            return (packet.src,)
        return (packet.proto, packet.src, packet.sport, packet.dst, packet.dport)

    def key_hash(self, packet: Packet) -> int:
        fields = self.service.balance.fields or ("src", "dst", "sport", "dport", "proto")
        return stable_hash(repr(tuple(getattr(packet, f) for f in fields)).encode())

    # ----------------------------------------------------------- eligibility --

    def eligible(self, rule: Rule, family: int, view: frozenset[str]) -> tuple[tuple[str, int], ...]:
        """(name, weight) of the backends new flows of this rule may go to now."""
        pool = self.service.pool(rule.pool)
        chosen = [b for b in pool.primaries if self.usable(b, family, view)]
        healthy = sum(1 for b in pool.primaries if b.weight > 0 and b.name in view)
        for failover in self.service.failovers:
            if failover.source == pool.name and healthy < failover.below:
                chosen += [b for b in self.targets(failover) if self.usable(b, family, view)]
        return tuple(dict.fromkeys((b.name, b.weight) for b in chosen))

    @staticmethod
    def usable(backend: Backend, family: int, view: frozenset[str]) -> bool:
        return backend.weight > 0 and backend.name in view and backend.family == family

    def targets(self, failover) -> list[Backend]:
        if not failover.to_pool:
            return [self.backends[n] for n in failover.targets]
        return [b for pool in failover.targets for b in self.service.pool(pool).primaries]

    def candidates(self, rule: Rule) -> set[str]:
        names = {b.name for b in self.service.pool(rule.pool).backends}
        for failover in self.service.failovers:
            if failover.source == rule.pool:
                names |= {b.name for b in self.targets(failover)}
        return names

    def maglev(self, eligible: tuple[tuple[str, int], ...]) -> Maglev:
        if eligible not in self.tables:
            self.tables[eligible] = Maglev(eligible)
        return self.tables[eligible]

    # ------------------------------------------------------------------ NAT --

    def to_backend(self, segment: Segment, rule: Rule, backend: Backend) -> Segment:
        port = segment.dport
        if segment.proto in ("tcp", "udp"):
            port = rule.target_port or backend.port or segment.dport
        sent = replace(segment, dst=backend.address, dport=port, ttl=segment.ttl - 1)
        self.remember(sent, segment)
        return sent

    def remember(self, sent: Segment, original: Segment) -> None:
        self.nat[self.reply_key(sent)] = (original.dst, original.dport)
        self.nat.move_to_end(self.reply_key(sent))
        while len(self.nat) > self.nat_size:
            self.nat.popitem(last=False)

    @staticmethod
    def reply_key(sent: Segment) -> Reply:
        ident = sent.ident if sent.proto == "icmp" else sent.sport
        return (sent.proto, sent.dst, sent.dport if sent.proto != "icmp" else 0, sent.src, ident)

    def translate_reply(self, segment: Segment) -> list[Segment]:
        """A backend's answer, sent on to the client from the VIP and port it used."""
        key = (segment.proto, segment.src, segment.sport if segment.proto != "icmp" else 0, segment.dst,
               segment.ident if segment.proto == "icmp" else segment.dport)
        found = self.nat.get(key)
        if found is None:
            return []
        vip, vport = found
        return [replace(segment, src=vip, sport=vport if segment.proto != "icmp" else 0, ttl=segment.ttl - 1)]

    # ------------------------------------------------------------ otherwise --

    def turn_away(self, segment: Segment) -> list[Segment]:
        if self.service.otherwise != "reject":
            return []
        if segment.proto == "tcp":
            return [segment.reply(flags=frozenset({"rst", "ack"}), seq=0, payload=b"", ttl=64,
                                  ack=segment.seq + len(segment.payload) + ("syn" in segment.flags))]
        return [self.unreachable(segment)]

    @staticmethod
    def unreachable(segment: Segment) -> Segment:
        """ICMP port unreachable, quoting the packet (as much as fits in a minimal MTU)."""
        quoted = segment.encode()[:548 if segment.family == 4 else 1232]
        kind, code = (3, 3) if segment.family == 4 else (1, 4)
        return Segment("icmp", segment.dst, segment.src, icmp_type=kind, icmp_code=code, payload=quoted, ttl=64)

