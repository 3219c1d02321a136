"""The Z3 encoding and the concrete evaluator agree: the guard against false alarms and missed findings.

Random specs, random packets, random backend failures, random flow-table
entries: every decision the evaluator allows, the encoding allows, and the
other way round.  Then the whole checker runs on random specs, and every
witness it finds must replay through the evaluator (no LB099).
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lbspec.check import CheckOptions, check_spec
from lbspec.loader import load_text
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m
from lbspec.smt import ServiceQueries
from lbspec.syntax.format import format_tree

from specgen import spec_files


def resolved(tree) -> m.Spec:
    loaded = load_text(format_tree(tree, ""), "generated.lbspec")
    assert loaded.ok, [(x.code, x.message) for x in loaded.diagnostics]
    return loaded.spec


def _targets(service: m.Service) -> list[tuple[str, tuple[int, int] | None, m.Rule]]:
    """(protocol, port range, rule) for listened traffic each rule takes."""
    found = []
    for rule in service.rules:
        for listen in service.listens:
            if rule.protocol not in (None, listen.protocol):
                continue
            if listen.protocol == "icmp":
                if not rule.ports:
                    found.append(("icmp", None, rule))
                continue
            for low, high in listen.ports:
                for a, b in rule.ports or m.ALL_PORTS:
                    if max(low, a) <= min(high, b):
                        found.append((listen.protocol, (max(low, a), min(high, b)), rule))
    return found


@st.composite
def packets_for(draw, service: m.Service) -> m.Packet:
    """A packet to a VIP: mostly one a rule takes, sometimes anything (to cover misses)."""
    targets = _targets(service)
    if targets and draw(st.integers(0, 3)):
        proto, ports, rule = draw(st.sampled_from(targets))
        sources = list(rule.sources)
    else:
        proto, ports, sources = draw(st.sampled_from(["tcp", "udp", "icmp"])), None, []
    vips = [v for v in service.vips if not sources or any(n.version == v.version for n in sources)]
    dst = draw(st.sampled_from(vips or service.vips))
    family = dst.version
    sources = [n for n in sources if n.version == family]
    if sources and draw(st.integers(0, 3)):
        network = draw(st.sampled_from(sources))
        src = network.network_address + draw(st.integers(0, min(network.num_addresses - 1, 2 ** 16)))
    else:
        src = ipaddress.ip_address(draw(st.integers(1, 2 ** 32 - 2)) if family == 4 else
                                   (0x20010DB8 << 96) + draw(st.integers(1, 2 ** 64)))
    if proto == "icmp":
        return m.Packet(proto, src, dst)
    dport = draw(st.integers(*ports)) if ports else draw(st.integers(0, 65535))
    flags = draw(st.frozensets(st.sampled_from(m.FLAGS), max_size=2)) if proto == "tcp" else frozenset()
    return m.Packet(proto, src, dst, draw(st.integers(0, 65535)), dport, flags)


@st.composite
def situations(draw):
    spec = resolved(draw(spec_files()))
    service = draw(st.sampled_from(spec.services))
    packet = draw(packets_for(service))
    names = [b.name for b in service.backends]
    failed = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
    shortest, longest = ev.detection_bounds(service.health)
    edges = [x for x in (shortest, longest) if x != float("inf")]
    since = st.sampled_from([0.0, 0.5, 1.0, 100.0, *edges, *(x + 0.25 for x in edges), *(max(0, x - 0.25) for x in edges)])
    down = {name: draw(since) for name in failed}
    pinned = draw(st.none() | st.sampled_from(names))
    hashed = draw(st.none() | st.sampled_from(names))
    return service, packet, down, pinned, hashed


def evaluator_allows(service, packet, down, pinned, hashed) -> tuple[bool, frozenset]:
    pin = pinned if service.affinity.kind != "none" else None
    memory = hashed if service.balance.algorithm in ("hash", "maglev") else None
    outcomes = [ev.decide(service, packet, view, pin, memory) for view in ev.views(service, down)]
    return outcomes[0].listened, frozenset().union(*(o.allowed for o in outcomes))


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], deadline=None)
@given(situations())
def test_encoding_and_evaluator_allow_the_same_decisions(situation):
    service, packet, down, pinned, hashed = situation
    assume(sum(1 for _ in ev.views(service, down)) <= 64)
    listened, expected = evaluator_allows(service, packet, down, pinned, hashed)
    queries = ServiceQueries(service)
    pin = pinned if service.affinity.kind != "none" else None
    memory = hashed if service.balance.algorithm in ("hash", "maglev") else None
    encoded_listened, allowed = queries.decisions_for(packet, down, pin, memory)
    assert encoded_listened == listened == service.listens_to(packet)
    if listened:
        assert allowed == expected


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(spec_files())
def test_every_witness_of_a_random_spec_replays(tree):
    spec = resolved(tree)
    found = check_spec(spec, CheckOptions(jobs=1, timeout=30))
    internal = [(x.message) for x in found if x.code == "LB099"]
    assert not internal
    for diagnostic in found:
        if diagnostic.code in ("LB100", "LB101", "LB102", "LB104"):
            assert diagnostic.witness is not None and diagnostic.witness.steps
