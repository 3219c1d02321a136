"""Hypothesis strategies for traffic and faults, derived from a spec.

Everything generated is *listened traffic* -- to a VIP of the service, on a
protocol and port it listens on, from a client address that is neither a VIP
nor a backend -- unless ``out_of_spec=True`` asks for some that is not.  What
shrinks is small and readable: few events, the first VIP, the first listener,
low client ports, round gaps, the first backend.

* :func:`packets` -- single packets (:class:`~lbspec.harness.Segment`);
* :func:`flows` -- the packets of one connection (:class:`Flow`): a TCP SYN and
  data segments, UDP datagrams, or ICMP echo requests;
* :func:`traffic` -- a :class:`~lbspec.harness.Trace` of interleaved flows,
  bursts of new flows (sized to fill the spec's declared capacity), and
  backend failures and recoveries, with gaps chosen around the spec's own
  time constants (detection window, rise window, affinity timeout);
* :func:`health_events` -- backend failures and recoveries alone;
* :func:`lb_machine` -- a ``RuleBasedStateMachine`` that mixes new flows,
  long-lived flows, failures, recoveries, churn, bursts and IPv6, and judges
  the trace it built when it ends.

``spec`` is a loaded :class:`~lbspec.Spec` or one of its services; ``service``
picks services by name (default: all of the spec's).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, precondition, rule

from lbspec.harness.trace import Event, Fault, Send, Trace
from lbspec.harness.wire import Segment
from lbspec.semantics.model import PORTED_PROTOCOLS, Address, Service, Spec

__all__ = ["Endpoint", "Flow", "packets", "flows", "traffic", "health_events", "endpoints", "lb_machine",
           "LoadBalancerMachine", "TrafficPlan", "renumbered"]

# Clients come from the documentation ranges (RFC 5737, RFC 3849) and from the rules' source prefixes.
CLIENT_NETWORKS = {4: ("198.51.100.0/24", "203.0.113.0/24"), 6: ("2001:db8:c1::/64", "2001:db8:c2::/64")}
MAX_HOST = 250
MAX_BURST = 256  # the default cap on one burst; pass max_burst= to fill larger tables


# ------------------------------------------------------------------ flows --

@dataclass(frozen=True, slots=True)
class Endpoint:
    """Who talks to what: a client address and port, a VIP and a listened protocol and port."""

    service: str
    proto: str
    client: Address
    sport: int
    vip: Address
    dport: int

    def key(self) -> tuple:
        return (self.proto, self.client, self.sport, self.vip, self.dport)

    def moved(self, sport: int) -> Endpoint:
        return Endpoint(self.service, self.proto, self.client, sport, self.vip, self.dport)


@dataclass(frozen=True, slots=True)
class Flow:
    """One connection: its endpoint, a number (for people) and its packets so far."""

    endpoint: Endpoint
    number: int
    count: int = 1

    @property
    def isn(self) -> int:
        return 1000 * self.number

    def segment(self, index: int) -> Segment:
        """Packet ``index`` of the flow: for TCP, 0 is the SYN and then data segments."""
        e = self.endpoint
        if e.proto == "tcp":
            if index == 0:
                return Segment("tcp", e.client, e.vip, e.sport, e.dport, frozenset({"syn"}), seq=self.isn)
            seq = self.isn + 1 + sum(len(self._payload(k)) for k in range(1, index))
            return Segment("tcp", e.client, e.vip, e.sport, e.dport, frozenset({"psh", "ack"}), seq=seq, ack=1,
                           payload=self._payload(index))
        if e.proto == "udp":
            return Segment("udp", e.client, e.vip, e.sport, e.dport, payload=self._payload(index))
        return Segment("icmp", e.client, e.vip, icmp_type=128 if e.vip.version == 6 else 8, ident=self.number,
                       seq=index, payload=self._payload(index))

    def _payload(self, index: int) -> bytes:
        return f"flow {self.number} #{index}\n".encode()

    @classmethod
    def made(cls, send: Send) -> tuple[Flow, int] | None:
        """The flow (numbered ``send.flow``) and the index of the packet ``send`` is, if a flow made it."""
        s = send.segment
        flow = cls(Endpoint("", s.proto, s.src, s.sport, s.dst, s.dport), send.flow)
        index = _packet_index(s.payload, send.flow) if s.payload or s.proto != "tcp" else 0
        return (flow, index) if index is not None and flow.segment(index) == s else None

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(self.segment(i) for i in range(self.count))


def _packet_index(payload: bytes, number: int) -> int | None:
    prefix = f"flow {number} #".encode()
    index = payload[len(prefix):-1]
    return int(index) if payload.startswith(prefix) and index.isdigit() else None


def renumbered(trace: Trace) -> Trace:
    """``trace`` with its flows numbered 1, 2, ... in the order they start.  Packets a :class:`Flow` made
    (payloads, TCP sequence numbers and ICMP idents follow the number) are made anew under the new one;
    any other packet is kept as it is."""
    numbers: dict[int, int] = {}
    for send in trace.sends:
        numbers.setdefault(send.flow, len(numbers) + 1)
    return Trace(tuple(_renumbered(e, numbers[e.flow]) if isinstance(e, Send) else e for e in trace.events))


def _renumbered(send: Send, number: int) -> Send:
    made = Flow.made(send)
    segment = send.segment if made is None else Flow(made[0].endpoint, number).segment(made[1])
    return Send(send.time, segment, number)


# ------------------------------------------------------------------- plan --

def _services(spec: Spec | Service, service: str | Iterable[str] | None) -> tuple[Service, ...]:
    found = spec.services if isinstance(spec, Spec) else (spec,)
    if service is None:
        return tuple(found)
    wanted = {service} if isinstance(service, str) else set(service)
    missing = wanted - {s.name for s in found}
    if missing:
        names = ", ".join(s.name for s in found)
        raise ValueError(f"no service named {', '.join(sorted(missing))} in the spec (it has: {names})")
    return tuple(s for s in found if s.name in wanted)


@dataclass
class TrafficPlan:
    """What traffic a set of services accepts, and the strategies that generate it."""

    services: tuple[Service, ...]
    taken: frozenset = field(init=False)

    def __post_init__(self) -> None:
        if not self.services:
            raise ValueError("the spec has no service to generate traffic for")
        self.taken = frozenset(a for s in self.services for a in (*s.vips, *(b.address for b in s.backends)))

    @classmethod
    def of(cls, spec: Spec | Service, service: str | Iterable[str] | None = None) -> TrafficPlan:
        return cls(_services(spec, service))

    @property
    def backends(self) -> tuple[tuple[str, str], ...]:
        """(service, backend) of every backend, in declaration order."""
        return tuple((s.name, b.name) for s in self.services for b in s.backends)

    @property
    def families(self) -> frozenset[int]:
        return frozenset(v.version for s in self.services for v in s.vips)

    def capacity(self) -> int:
        """The most concurrent connections any service declares it carries (0: none declared)."""
        return max((s.capacity.conns for s in self.services if s.capacity), default=0)

    def gaps(self) -> list[float]:
        """Time between two steps: short, so that flows overlap (a millisecond shrinks best)."""
        return [0.001, 0.0, 0.01, 0.1, 1.0]

    def pauses(self) -> list[float]:
        """Long waits worth trying: just past each time constant of the spec (detection, rise, affinity)."""
        found = []
        for s in self.services:
            h, a = s.health, s.affinity
            if h.kind != "none":
                found += [h.fall * h.every + h.timeout + 0.001, h.rise * h.every + h.timeout + 0.001]
            if a.kind != "none" and a.timeout <= 3600:
                found += [a.timeout - 0.001, a.timeout + 0.001]
        return list(dict.fromkeys(round(g, 6) for g in found if g > 0))

    def settle(self, service: str, what: str) -> float:
        """How long until the health checks of ``service`` surely notice a failure ("fall") or a recovery."""
        health = next(s for s in self.services if s.name == service).health
        if health.kind == "none":
            return 0.0
        count = health.fall if what == "fall" else health.rise
        return round(count * health.every + health.timeout + 0.001, 6)

    def serving(self, endpoint: Endpoint) -> set[tuple[str, str]]:
        """(service, backend) of the backends the rule taking ``endpoint``'s traffic may use."""
        service = next(s for s in self.services if s.name == endpoint.service)
        rule = next((r for r in service.rules if r.matches(Flow(endpoint, 1).segment(0).packet)), None)
        if rule is None:
            return set()
        names = {b.name for b in service.pool(rule.pool).backends}
        for failover in service.failovers:
            if failover.source == rule.pool:
                names |= {b.name for p in failover.targets for b in service.pool(p).backends} \
                    if failover.to_pool else set(failover.targets)
        return {(service.name, n) for n in names}

    # ------------------------------------------------------------ endpoints --

    def endpoints(self, family: int | None = None, out_of_spec: bool = False) -> st.SearchStrategy[Endpoint]:
        listened = st.sampled_from(self.services).flatmap(lambda s: self._listened(s, family))
        if not out_of_spec:
            return listened
        return st.one_of(listened, st.sampled_from(self.services).flatmap(lambda s: self._unlistened(s, family)))

    def _vips(self, service: Service, family: int | None) -> list[Address]:
        return [v for v in service.vips if family is None or v.version == family]

    def _listened(self, service: Service, family: int | None) -> st.SearchStrategy[Endpoint]:
        vips = self._vips(service, family)
        if not vips:
            return st.nothing()
        return _listened_endpoint(self, service, vips)

    def clients(self, service: Service, family: int) -> st.SearchStrategy[Address]:
        """Client addresses of ``family``: documentation ranges first, then the rules' source prefixes."""
        networks = [ipaddress.ip_network(n) for n in CLIENT_NETWORKS[family]]
        networks += [n for r in service.rules for n in r.sources if n.version == family and n.prefixlen > 0]
        return st.builds(self._host, st.sampled_from(networks), st.integers(1, MAX_HOST)).filter(
            lambda a: a is not None)

    def _host(self, network, index: int) -> Address | None:
        if network.num_addresses == 1:
            address = network.network_address
        else:
            address = network.network_address + (index % (network.num_addresses - 1) or 1)
        return None if address in self.taken else address

    def _unlistened(self, service: Service, family: int | None) -> st.SearchStrategy[Endpoint]:
        """Traffic the service does not listen to: a port or protocol it does not serve, or a neighbour of a VIP."""
        vips = self._vips(service, family)
        if not vips:
            return st.nothing()
        return _unlistened_endpoint(self, service, vips).filter(
            lambda e: not service.listens_to(Flow(e, 1).segment(0).packet))


@st.composite
def _listened_endpoint(draw, plan: TrafficPlan, service: Service, vips: list[Address]) -> Endpoint:
    vip = draw(st.sampled_from(vips), label="vip")
    proto, port = draw(st.sampled_from(service.listens).flatmap(_port_in), label="listener")
    sport = draw(st.integers(1024, 65535), label="sport") if proto in PORTED_PROTOCOLS else 0
    client = draw(plan.clients(service, vip.version), label="client")
    return Endpoint(service.name, proto, client, sport, vip, port)


@st.composite
def _unlistened_endpoint(draw, plan: TrafficPlan, service: Service, vips: list[Address]) -> Endpoint:
    vip = draw(st.sampled_from(vips))
    if draw(st.booleans()):
        vip = _neighbour(vip, plan.taken)
    proto = draw(st.sampled_from(("tcp", "udp", "icmp")))
    ported = proto in PORTED_PROTOCOLS
    port = draw(st.integers(1, 65535)) if ported else 0
    sport = draw(st.integers(1024, 65535)) if ported else 0
    return Endpoint(service.name, proto, draw(plan.clients(service, vip.version)), sport, vip, port)


def _port_in(listen) -> st.SearchStrategy[tuple[str, int]]:
    if listen.protocol not in PORTED_PROTOCOLS:
        return st.just((listen.protocol, 0))
    ranges = [(max(low, 1), high) for low, high in listen.ports if high >= 1]
    return st.sampled_from(ranges).flatmap(lambda r: st.integers(*r)).map(lambda p: (listen.protocol, p))


def _neighbour(vip: Address, taken: frozenset) -> Address:
    """The nearest address after ``vip`` that the spec does not use."""
    candidate = vip + 1
    while candidate in taken:
        candidate += 1
    return candidate


# ------------------------------------------------------------------ trace --

@dataclass
class TraceBuilder:
    """Turns steps (open, more, burst, fail, recover, wait) into a trace, keeping flows unique."""

    plan: TrafficPlan
    time: float = 0.0
    events: list[Event] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    down: list[tuple[str, str]] = field(default_factory=list)
    keys: set = field(default_factory=set)

    def wait(self, gap: float) -> None:
        self.time = round(self.time + gap, 6)

    def open(self, endpoint: Endpoint) -> Flow:
        # One client port, one flow: a port reused toward another VIP or port is legal TCP, but
        # lbspec monitor keys replies by the client's end alone and would misjudge them.
        while endpoint.proto in PORTED_PROTOCOLS and _client_end(endpoint) in self.keys:
            endpoint = endpoint.moved(endpoint.sport % 65535 + 1)
        self.keys.add(_client_end(endpoint))
        flow = Flow(endpoint, len(self.flows) + 1)
        self.flows.append(flow)
        self._send(flow, 0)
        return flow

    def more(self, index: int, count: int = 1) -> None:
        if not self.flows:
            return
        number = index % len(self.flows)
        flow = self.flows[number]
        for k in range(count):
            self.wait(0.001 if k else 0.0)  # segments of one flow 1ms apart
            self._send(flow, flow.count)
            flow = Flow(flow.endpoint, flow.number, flow.count + 1)
        self.flows[number] = flow

    def all(self) -> None:
        """Every flow opened so far sends its next packet (long-lived connections keep talking)."""
        for index in range(len(self.flows)):
            self.more(index)

    def churn(self, index: int, settle: bool = True) -> None:
        """A backend fails and comes back while every flow keeps talking (each change noticed, if ``settle``)."""
        before = len(self.down)
        self.fail(index, settle)
        self.all()
        if len(self.down) > before:
            self.recover(len(self.down) - 1, settle)
            self.all()

    def burst(self, endpoint: Endpoint, size: int) -> None:
        for k in range(size):
            port = endpoint.sport + k if endpoint.proto in PORTED_PROTOCOLS else 0
            self.open(endpoint.moved((port - 1) % 65535 + 1 if port else 0))

    def fail(self, index: int, settle: bool = False) -> None:
        """Fail a backend that is up -- one that may serve a flow opened so far, if any -- and maybe wait
        until health checks notice.  ``index`` picks the flow, then the backend."""
        up = [b for b in self.plan.backends if b not in self.down]
        if self.flows:
            flow = self.flows[index % len(self.flows)]
            index //= len(self.flows)
            up = [b for b in up if b in self.plan.serving(flow.endpoint)] or up
        if up:
            chosen = up[index % len(up)]
            self.down.append(chosen)
            self._add(Fault(self.time, chosen[1], False, chosen[0]))
            self.wait(self.plan.settle(chosen[0], "fall") if settle else 0.0)

    def recover(self, index: int, settle: bool = False) -> None:
        """Bring a failed backend back, and maybe wait until health checks see it up again."""
        if self.down:
            chosen = self.down.pop(index % len(self.down))
            self._add(Fault(self.time, chosen[1], True, chosen[0]))
            self.wait(self.plan.settle(chosen[0], "rise") if settle else 0.0)

    def _add(self, event: Event) -> None:
        """Append an event; a fault never shares its instant with a packet or with a fault of its backend,
        so that which came first is never a matter of interpretation."""
        last = self.events[-1] if self.events else None
        if last is not None and last.time == self.time and (isinstance(event, Fault) or isinstance(last, Fault)):
            both_packets = isinstance(event, Send) and isinstance(last, Send)
            both_faults = isinstance(event, Fault) and isinstance(last, Fault)
            if not both_packets and not (both_faults and last.backend != event.backend):
                self.wait(0.001)
                event = replace(event, time=self.time)
        self.events.append(event)

    def _send(self, flow: Flow, index: int) -> None:
        self._add(Send(self.time, flow.segment(index), flow.number))

    def trace(self) -> Trace:
        return Trace(tuple(self.events))

    def apply(self, step: tuple) -> None:
        gap, (kind, *args) = step
        self.wait(gap)
        getattr(self, kind)(*args)


def _client_end(endpoint: Endpoint) -> tuple:
    return (endpoint.proto, endpoint.client, endpoint.sport)


# How often each kind of step is drawn, out of 20.
_WEIGHTS = (("open", 4), ("more", 2), ("all", 3), ("fail", 2), ("recover", 1), ("churn", 3), ("wait", 2),
            ("burst", 3))


def _kinds(plan: TrafficPlan, faults: bool, max_burst: int) -> list[str]:
    """The kinds of step this plan allows, each repeated by its weight."""
    allowed = {"open", "more", "all"}
    allowed |= {"fail", "recover", "churn"} if faults and plan.backends else set()
    allowed |= {"wait"} if plan.pauses() else set()
    allowed |= {"burst"} if max_burst >= 2 else set()
    return [kind for kind, weight in _WEIGHTS if kind in allowed for _ in range(weight)]


@st.composite
def _step(draw, plan: TrafficPlan, kinds: list[str], out_of_spec: bool, max_burst: int) -> tuple:
    """One step of a trace: a gap, then open, more, all, fail, recover, wait or burst."""
    gap = draw(st.sampled_from(plan.gaps()), label="gap")
    kind = kinds[draw(st.integers(0, len(kinds) - 1), label="kind")]  # shrinks toward "open"
    if kind == "open":
        return gap, ("open", draw(plan.endpoints(out_of_spec=out_of_spec)))
    if kind == "more":
        return gap, ("more", draw(st.integers(0, 1 << 16)), draw(st.integers(1, 3)))
    if kind == "all":
        return gap, ("all",)
    if kind == "churn":
        return gap, ("churn", draw(st.integers(0, 1 << 16)))
    if kind in ("fail", "recover"):  # and, unless drawn otherwise, wait until health checks notice
        return gap, (kind, draw(st.integers(0, 1 << 16)), not draw(st.booleans(), label="quick"))
    if kind == "wait":
        return gap, ("wait", draw(st.sampled_from(plan.pauses())))
    return gap, ("burst", draw(plan.endpoints(out_of_spec=out_of_spec)), draw(_burst_sizes(plan, max_burst)))


@st.composite
def _trace(draw, plan: TrafficPlan, max_steps: int, faults: bool, out_of_spec: bool, max_burst: int) -> Trace:
    kinds = _kinds(plan, faults, max_burst)
    steps = draw(st.lists(_step(plan, kinds, out_of_spec, max_burst), min_size=1, max_size=max_steps))
    return _build(plan, steps)


def _burst_sizes(plan: TrafficPlan, max_burst: int) -> st.SearchStrategy[int]:
    """New flows in one burst: mostly sizes around the declared capacity (a table sized to it fills up)."""
    capacity = plan.capacity()
    sizes = {2, max_burst, *((capacity // 2, capacity, capacity + 1) if capacity else (max_burst // 2,))}
    return st.sampled_from(sorted(n for n in sizes if 2 <= n <= max(max_burst, 2)))


def _max_burst(plan: TrafficPlan, max_burst: int | None) -> int:
    if max_burst is not None:
        return max_burst
    capacity = plan.capacity()
    return min(capacity + max(2, capacity // 8), MAX_BURST) if capacity else 16


# ------------------------------------------------------------- strategies --

def endpoints(spec: Spec | Service, *, service: str | Iterable[str] | None = None, family: int | None = None,
              out_of_spec: bool = False) -> st.SearchStrategy[Endpoint]:
    """Flow endpoints: a client address and port, a VIP and a listened protocol and port."""
    return TrafficPlan.of(spec, service).endpoints(family, out_of_spec)


def flows(spec: Spec | Service, *, service: str | Iterable[str] | None = None, family: int | None = None,
          max_packets: int = 4, out_of_spec: bool = False) -> st.SearchStrategy[Flow]:
    """One connection each: a TCP SYN and data segments, UDP datagrams or ICMP echo requests."""
    if max_packets < 1:
        raise ValueError(f"max_packets must be at least 1, not {max_packets}")
    return st.builds(lambda e, n: Flow(e, 1, n), endpoints(spec, service=service, family=family,
                                                            out_of_spec=out_of_spec), st.integers(1, max_packets))


def packets(spec: Spec | Service, *, service: str | Iterable[str] | None = None, family: int | None = None,
            out_of_spec: bool = False) -> st.SearchStrategy[Segment]:
    """Single packets a client sends: any packet of a flow (a SYN, a data segment, a datagram, an echo)."""
    return st.builds(lambda f, i: f.segment(i), flows(spec, service=service, family=family, max_packets=1,
                                                      out_of_spec=out_of_spec), st.integers(0, 3))


def traffic(spec: Spec | Service, *, service: str | Iterable[str] | None = None, max_steps: int = 12,
            faults: bool = True, max_burst: int | None = None, out_of_spec: bool = False) -> st.SearchStrategy[Trace]:
    """Traces: flows opened and continued, bursts of new flows, backend failures and recoveries, over time.

    ``max_burst`` (default: the declared capacity plus an eighth, at most
    256; 16 without a capacity) bounds the new flows one burst opens at one
    instant.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps}")
    plan = TrafficPlan.of(spec, service)
    return _trace(plan, max_steps, faults, out_of_spec, _max_burst(plan, max_burst))


def _build(plan: TrafficPlan, steps: list[tuple]) -> Trace:
    builder = TraceBuilder(plan)
    for step in steps:
        builder.apply(step)
    return builder.trace()


def health_events(spec: Spec | Service, *, service: str | Iterable[str] | None = None,
                  max_events: int = 6) -> st.SearchStrategy[tuple[Fault, ...]]:
    """Backend failures and recoveries in time order; a backend only recovers after it failed."""
    plan = TrafficPlan.of(spec, service)
    if not plan.backends:
        return st.just(())
    step = st.tuples(st.sampled_from(plan.gaps() + plan.pauses()),
                     st.tuples(st.sampled_from(("fail", "recover")), st.integers(0, 1 << 16), st.booleans()))
    return st.lists(step, max_size=max_events).map(lambda found: _build(plan, found).faults)


# ----------------------------------------------------------------- machine --

class LoadBalancerMachine(RuleBasedStateMachine):
    """The environment of a load balancer as a state machine; :func:`lb_machine` makes one for a spec.

    Rules open flows (IPv4 and IPv6), continue long-lived ones, burst new
    flows, fail and recover backends (apart, or churned while every flow talks)
    and let time pass.  The trace they build
    is handed to ``judge`` when the run ends; ``judge`` raises on a violation.
    """

    plan: TrafficPlan
    judge: Callable[[Trace], Any]

    def __init__(self) -> None:
        super().__init__()
        self.builder = TraceBuilder(self.plan)

    def teardown(self) -> None:
        if self.builder.events:
            type(self).judge(self.builder.trace())


def lb_machine(spec: Spec | Service, judge: Callable[[Trace], Any], *, service: str | Iterable[str] | None = None,
               max_burst: int | None = None) -> type[LoadBalancerMachine]:
    """A state machine class for ``spec``'s traffic; ``judge(trace)`` is called at the end of every run.

    Run it with ``hypothesis.stateful.run_state_machine_as_test`` or expose
    ``lb_machine(...).TestCase`` to unittest/pytest.
    """
    plan = TrafficPlan.of(spec, service)
    largest = _max_burst(plan, max_burst)
    gaps = st.sampled_from(plan.gaps() + plan.pauses())
    index = st.integers(0, 1 << 16)
    v6 = 6 in plan.families

    class Machine(LoadBalancerMachine):
        opened = Bundle("flows")

        @rule(target=opened, endpoint=plan.endpoints(4 if v6 and 4 in plan.families else None))
        def new_flow(self, endpoint: Endpoint) -> int:
            return self.builder.open(endpoint).number - 1

        @precondition(lambda self: v6)
        @rule(target=opened, endpoint=plan.endpoints(6) if v6 else st.nothing())
        def new_ipv6_flow(self, endpoint: Endpoint) -> int:
            return self.builder.open(endpoint).number - 1

        @rule(flow=opened, count=st.integers(1, 3))
        def continue_flow(self, flow: int, count: int) -> None:
            self.builder.more(flow, count)

        @rule()
        def keep_alive(self) -> None:
            self.builder.all()

        @rule(endpoint=plan.endpoints(), size=_burst_sizes(plan, largest))
        def burst(self, endpoint: Endpoint, size: int) -> None:
            self.builder.burst(endpoint, size)

        @precondition(lambda self: len(self.builder.down) < len(plan.backends))
        @rule(which=index, settle=st.booleans())
        def fail_backend(self, which: int, settle: bool) -> None:
            self.builder.fail(which, settle)

        @precondition(lambda self: bool(self.builder.down))
        @rule(which=index, settle=st.booleans())
        def recover_backend(self, which: int, settle: bool) -> None:
            self.builder.recover(which, settle)

        # Flows that move when a backend goes and comes back show only if they talk while it is down and
        # after it is back, each change noticed: four rules in order, rarely drawn so; churn is one.
        @precondition(lambda self: bool(self.builder.flows) and len(self.builder.down) < len(plan.backends))
        @rule(which=index)
        def churn(self, which: int) -> None:
            self.builder.churn(which)

        @rule(gap=gaps)
        def wait(self, gap: float) -> None:
            self.builder.wait(gap)

    Machine.plan = plan
    Machine.judge = staticmethod(judge)
    Machine.__name__ = Machine.__qualname__ = "LoadBalancerMachine"
    return Machine
