"""The monitor's vectorised filters, rules and listeners mean exactly what the model says, packet by packet."""

from __future__ import annotations

from ipaddress import ip_address

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import lbspec
from lbspec.runtime import compiled as compiled_module
from lbspec.runtime.compiled import address_parts, akey, compile_filter, compile_spec
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m

FILTERS = ["tcp", "udp and dport 53", "not icmp", "syn and not ack", "src in 10.0.0.0/8", "dst 192.0.2.10",
           "sport >= 1024 and dport < 100", "dport in {80, 443, 8000-8100}", "family ipv6 or proto udp",
           "src in {2001:db8::/32, 198.51.100.0/24} and not dport 22", "flags has {syn, ack}", "any",
           "(tcp or udp) and not (sport 53 or dport != 80)", "src != 203.0.113.0/24", "dport not in {1-1023}"]
ADDRESSES = ["10.1.2.3", "192.0.2.10", "198.51.100.7", "203.0.113.9", "2001:db8::10", "2001:db8:1::5", "fe80::1"]
SPEC = """
service s {
    vip 192.0.2.10, 2001:db8::10
    listen tcp 80, 443, 8000-8100, udp 53, icmp
    pool p {
        backend b 10.0.0.1
        backend c 2001:db8:2::1
    }
    pool q {
        backend d 10.0.0.2
    }
    forward tcp 443 from 10.0.0.0/8, 2001:db8::/32 to q
    forward any 80, 53 to p
    forward icmp to q
    forward tcp to p port 8080
    otherwise reject
%s
}
"""


def _filters():
    found = []
    for text in FILTERS:
        service = lbspec.loads(SPEC % f'    waive balance for {text} "testing"').services[0]
        found.append(next(w.scope for w in service.waivers if w.property == "balance"))
    return found


PARSED = _filters()
SERVICE = lbspec.loads(SPEC % "").services[0]
PLAN = compile_spec(lbspec.loads(SPEC % "")).services[0]

packets = st.builds(
    lambda proto, src, dst, sport, dport, flags: m.Packet(
        proto, ip_address(src), ip_address(dst if (":" in dst) == (":" in src) else src),
        sport if proto in ("tcp", "udp") else 0, dport if proto in ("tcp", "udp") else 0,
        frozenset(f for i, f in enumerate(m.FLAGS) if flags >> i & 1) if proto == "tcp" else frozenset()),
    st.sampled_from(["tcp", "udp", "icmp"]), st.sampled_from(ADDRESSES), st.sampled_from(ADDRESSES),
    st.sampled_from([0, 22, 53, 80, 443, 1023, 1024, 8000, 8050, 8100, 8101, 65535]),
    st.sampled_from([0, 22, 53, 80, 99, 443, 1023, 1024, 8000, 8050, 8100, 8101, 65535]), st.integers(0, 255))


def _columns(batch: list[m.Packet]) -> dict[str, np.ndarray]:
    parts = {"sa": [address_parts(p.src) for p in batch], "da": [address_parts(p.dst) for p in batch]}
    number = {"tcp": 6, "udp": 17, "icmp": 1}
    return {"proto": np.array([number[p.proto] if not (p.proto == "icmp" and p.family == 6) else 58
                               for p in batch], np.uint8),
            "fam": np.array([p.family for p in batch], np.uint8),
            "sa_hi": np.array([h for h, _ in parts["sa"]], np.uint64), "sa_lo": np.array([lo for _, lo in parts["sa"]],
                                                                                     np.uint64),
            "da_hi": np.array([h for h, _ in parts["da"]], np.uint64), "da_lo": np.array([lo for _, lo in parts["da"]],
                                                                                     np.uint64),
            "sport": np.array([p.sport for p in batch], np.int32),
            "dport": np.array([p.dport for p in batch], np.int32),
            "flags": np.array([sum(1 << m.FLAGS.index(f) for f in p.flags) for p in batch], np.uint8)}


@settings(max_examples=60)
@given(st.lists(packets, min_size=1, max_size=40))
def test_filters_agree_with_the_model(batch):
    columns = _columns(batch)
    for filter_ in PARSED:
        assert compile_filter(filter_)(columns).tolist() == [m.matches(filter_, p) for p in batch]


@settings(max_examples=60)
@given(st.lists(packets, min_size=1, max_size=40))
def test_listeners_and_rules_agree_with_the_model(batch):
    columns = _columns(batch)
    assert PLAN.listened(columns).tolist() == [SERVICE.listens_to(p) for p in batch]
    expected = []
    for packet in batch:
        rule = ev.first_rule(SERVICE, packet)
        expected.append(-1 if rule is None else SERVICE.rules.index(rule))
    assert PLAN.rule_index(columns).tolist() == expected


@given(st.lists(st.sampled_from(ADDRESSES + ["10.0.0.1", "10.0.0.2", "2001:db8:2::1"]), min_size=1, max_size=40))
def test_the_address_table_answers_the_same_by_comparison_and_by_search(addresses):
    compiled = compile_spec(lbspec.loads(SPEC % ""))
    keys = np.array([akey(*(np.array([v], np.uint64) for v in address_parts(ip_address(a))))[0]
                     for a in addresses], np.uint64)
    small = compiled.address_of(keys)
    expected = (compiled.vip_of(keys), compiled.backend_of(keys))
    original = compiled_module.SMALL_TABLE
    compiled_module.SMALL_TABLE = 0  # every table is "large": binary search
    try:
        large = compiled.address_of(keys)
    finally:
        compiled_module.SMALL_TABLE = original
    for found in (small, large):
        assert [a.tolist() for a in found] == [e.tolist() for e in expected]
