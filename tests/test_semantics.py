"""The resolved model: defaults, units, addresses, filters and the properties each service is held to."""

from __future__ import annotations

import math
from ipaddress import ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lbspec
from lbspec.loader import load_text
from lbspec.semantics import evaluate as ev
from lbspec.semantics import model as m

from conftest import MINIMAL, service


def one(text: str) -> m.Service:
    (svc,) = lbspec.loads(text).services
    return svc


def test_defaults_where_the_spec_is_silent():
    svc = one(MINIMAL)
    assert svc.mode == m.Mode("nat")
    assert svc.balance == m.Balance("round_robin")
    assert svc.affinity == m.Affinity("flow", 300.0)
    assert svc.health.kind == "none" and svc.health.detection_time == math.inf
    assert svc.otherwise is None and svc.capacity is None and svc.failovers == ()
    (backend,) = svc.backends
    assert (backend.weight, backend.backup, backend.max_conn, backend.port) == (1, False, None, None)


def test_health_settings_default_individually_and_convert_units():
    health = one(service("health http \"/ok\" every 500ms fall 5")).health
    assert (health.kind, health.path, health.every, health.timeout, health.fall, health.rise) == (
        "http", "/ok", 0.5, 1.0, 5, 2)
    assert health.detection_time == pytest.approx(5 * 0.5 + 1.0)


def test_a_tcp_check_s_string_is_what_it_sends_with_its_escapes():
    health = one(service('health tcp "PING\\r\\n\\t\\"x\\"\\x00\\xFF\\q" every 1s')).health
    assert health.path == 'PING\r\n\t"x"\x00\xffq'


@pytest.mark.parametrize("text, seconds", [("250us", 250e-6), ("20ms", 0.02), ("1.5s", 1.5), ("2m", 120), ("1h", 3600)])
def test_duration_units(text, seconds):
    assert one(service(f"affinity flow timeout {text}")).affinity.timeout == pytest.approx(seconds)


def test_listen_ports_are_grouped_by_protocol_and_merged():
    svc = one("service s { vip 192.0.2.1 listen tcp 80, 81-90, udp 53, tcp 443 listen icmp, tcp 85 }")
    assert {l.protocol: l.ports for l in svc.listens} == {
        "tcp": ((80, 90), (443, 443)), "udp": ((53, 53),), "icmp": m.ALL_PORTS}


def test_protocol_without_ports_listens_on_all():
    (listen,) = one("service s { vip 192.0.2.1 listen udp }").listens
    assert listen.ports == m.ALL_PORTS


def test_addresses_become_ip_objects():
    svc = one("service s { vip 192.0.2.1, 2001:DB8::1 listen tcp 80 "
              "pool p { backend a [2001:db8::2]:8080 weight 0 backup max_conn 10 } }")
    assert svc.vips == (ip_address("192.0.2.1"), ip_address("2001:db8::1"))
    assert svc.families == {4, 6}
    (backend,) = svc.backends
    assert (backend.address, backend.port, backend.weight, backend.backup, backend.max_conn, backend.pool) == (
        ip_address("2001:db8::2"), 8080, 0, True, 10, "p")


def test_rules_keep_order_ports_sources_and_port_mapping():
    svc = one(service("forward tcp 443 from 10.0.0.0/8, 192.168.0.0/16 to p port 8443\nforward any to p"))
    first, second, third = svc.rules
    assert (first.index, first.protocol, first.ports, first.pool) == (0, "tcp", ((80, 80),), "p")
    assert second.sources == (ip_network("10.0.0.0/8"), ip_network("192.168.0.0/16"))
    assert second.target_port == 8443
    assert (third.protocol, third.ports, third.sources) == (None, (), ())


def packet(proto="tcp", src="203.0.113.7", dst="192.0.2.1", sport=40000, dport=80, flags=()):
    return m.Packet(proto, ip_address(src), ip_address(dst), sport, dport, frozenset(flags))


def test_rule_matching():
    svc = one(service("forward tcp 443 from 10.0.0.0/8 to p\nforward any 53 to p\nforward icmp to p"))
    _, internal, dns, icmp = svc.rules
    assert internal.matches(packet(src="10.1.2.3", dport=443))
    assert not internal.matches(packet(src="11.1.2.3", dport=443))
    assert not internal.matches(packet(proto="udp", src="10.1.2.3", dport=443))
    assert dns.matches(packet(proto="udp", dport=53)) and dns.matches(packet(dport=53))
    assert not dns.matches(packet(proto="icmp", sport=0, dport=0))
    assert icmp.matches(packet(proto="icmp", sport=0, dport=0))


def test_listened_traffic():
    svc = one("service s { vip 192.0.2.1 listen tcp 80, icmp }")
    assert svc.listens_to(packet())
    assert not svc.listens_to(packet(dport=81))
    assert not svc.listens_to(packet(dst="192.0.2.2"))
    assert svc.listens_to(packet(proto="icmp", sport=0, dport=0))
    assert not svc.listens_to(packet(proto="udp"))


def scope_of(filter_text: str) -> m.Filter:
    spec = lbspec.loads(f'property p "t" {{ reply from vip for {filter_text} }}')
    return spec.property("p").pattern.scope


@pytest.mark.parametrize("text, yes, no", [
    ("tcp", packet(), packet(proto="udp")),
    ("src in 10.0.0.0/8", packet(src="10.9.9.9"), packet(src="11.0.0.1")),
    ("src == 10.0.0.1", packet(src="10.0.0.1"), packet(src="10.0.0.2")),
    ("src != 10.0.0.1", packet(src="10.0.0.2"), packet(src="10.0.0.1")),
    ("dst 2001:db8::/32", packet(src="2001:db8::9", dst="2001:db8::1"), packet()),
    ("dport 80", packet(), packet(dport=81)),
    ("dport in {80, 8000-8100}", packet(dport=8050), packet(dport=8101)),
    ("dport not in 1-1023", packet(dport=8080), packet(dport=80)),
    ("sport < 1024", packet(sport=1023), packet(sport=1024)),
    ("sport <= 1024", packet(sport=1024), packet(sport=1025)),
    ("sport > 1024", packet(sport=1025), packet(sport=1024)),
    ("sport >= 1024", packet(sport=1024), packet(sport=1023)),
    ("dport 0-65535", packet(), packet(proto="icmp", sport=0, dport=0)),  # ICMP has no ports
    ("proto in {udp, icmp}", packet(proto="udp"), packet()),
    ("family ipv6", packet(src="2001:db8::9", dst="2001:db8::1"), packet()),
    ("flags has syn", packet(flags={"syn"}), packet(flags={"ack"})),
    ("flags has {syn, ack}", packet(flags={"syn", "ack"}), packet(flags={"syn"})),
    ("syn and not ack", packet(flags={"syn"}), packet(flags={"syn", "ack"})),
    ("udp or dport 80", packet(), packet(dport=81)),
    ("not (tcp and dport 80)", packet(dport=81), packet()),
    ("ipv4", packet(), packet(src="2001:db8::9", dst="2001:db8::1")),
])
def test_filter_meaning(text, yes, no):
    scope = scope_of(text)
    assert m.matches(scope, yes) and not m.matches(scope, no)


def checks(svc: m.Service) -> dict[str, m.Check]:
    return {c.name: c for c in svc.checks}


LIBRARY = {"no_drop", "healthy_only", "declared_only", "flow_affinity", "integrity", "reverse_path", "balance",
           "no_duplicate"}


def test_every_service_is_held_to_the_whole_library():
    assert set(checks(one(MINIMAL))) == LIBRARY
    assert all(c.origin == "library" for c in one(MINIMAL).checks)


def test_library_patterns():
    spec = lbspec.loads(MINIMAL)
    assert spec.property("no_drop").pattern == m.Response(m.ANY, 0.05, True)
    assert spec.property("healthy_only").pattern == m.Absence(m.ANY, "down", True)
    assert spec.property("flow_affinity").pattern == m.Stickiness("flow", m.Test("proto", ("tcp",)), True)
    assert spec.property("balance").pattern == m.Distribution("flows", m.ANY, pytest.approx(0.1))
    assert spec.property("integrity").pattern == m.Integrity(frozenset({"payload", "headers"}), m.ANY)
    for name in LIBRARY:
        definition = spec.property(name)
        assert definition.library and definition.title and definition.doc


def test_a_waiver_removes_a_property():
    svc = one(service('waive balance "canary pool"'))
    assert "balance" not in checks(svc)
    (waiver,) = svc.waivers
    assert (waiver.property, waiver.reason, waiver.scope) == ("balance", "canary pool", None)


def test_a_scoped_waiver_narrows_a_property():
    svc = one(service('waive no_drop for udp "best effort"'))
    check = checks(svc)["no_drop"]
    assert not m.matches(check.scope, packet(proto="udp"))
    assert m.matches(check.scope, packet())


def test_require_tightens_library_parameters():
    svc = one(service("require no_drop within 20ms\nrequire balance within 5%"))
    assert checks(svc)["no_drop"].pattern.within == pytest.approx(0.02)
    assert checks(svc)["balance"].pattern.tolerance == pytest.approx(0.05)
    assert checks(svc)["no_drop"].source is not None


def test_user_properties_apply_only_when_required():
    text = 'property quick "quick" { forward every packet within 1ms }\n'
    assert "quick" not in checks(one(text + MINIMAL))
    check = checks(one(text + service("require quick")))["quick"]
    assert check.origin == "required" and check.pattern.within == pytest.approx(0.001)


def test_assertions_become_checks():
    svc = one(service("assert from 10.9.0.0/16 to tcp 443 only b1\nassert never forward for udp to p"))
    only, never = (c for c in svc.checks if c.origin == "assert")
    assert only.title == "from 10.9.0.0/16 to tcp 443 only b1"
    assert only.pattern == m.Absence(m.And((m.Test("src", (ip_network("10.9.0.0/16"),)), m.Test("proto", ("tcp",)),
                                            m.Test("dport", ((443, 443),)))),
                                     "backends", backends=frozenset({"b1"}), complement=True)
    assert never.pattern.backends == {"b1"}  # the pool `p` expanded to its backends


def test_failover_to_a_backup_backend_belongs_to_its_pool():
    svc = one("service s { vip 192.0.2.1 listen tcp 80 pool p { backend a 10.0.0.1 backend b 10.0.0.2 backup }"
              " failover to b when healthy < 1 }")
    assert svc.failovers == (m.Failover("p", ("b",), False, 1),)
    assert [b.name for b in svc.pool("p").backups] == ["b"]


def test_failover_to_a_pool_infers_the_only_other_pool():
    svc = one("service s { vip 192.0.2.1 listen tcp 80 pool p { backend a 10.0.0.1 } pool dr { backend b 10.0.0.2 }"
              " failover to dr when healthy < 1 }")
    assert svc.failovers == (m.Failover("p", ("dr",), True, 1),)


def test_gue_port_defaults_to_6080():
    assert one(service("mode tunnel gue")).mode == m.Mode("tunnel", "gue", 6080)


def test_mode_rewrites():
    assert m.Mode("nat").rewrites == {"dst", "dport"}
    assert m.Mode("dsr").rewrites == frozenset()


def test_warnings_do_not_stop_loading():
    spec = lbspec.loads(service("health tcp every 1s timeout 2s").replace("vip 192.0.2.1", "vip 192.0.2.1, 192.0.2.1"))
    assert sorted(x.code for x in spec.diagnostics) == ["LB024", "LB038"]
    assert all(x.severity is lbspec.Severity.WARNING for x in spec.diagnostics)


def test_load_raises_spec_error_with_diagnostics(tmp_path):
    path = tmp_path / "bad.lbspec"
    path.write_text(service("forward tcp 80 to nowhere"))
    with pytest.raises(lbspec.SpecError) as raised:
        lbspec.load(path)
    assert [x.code for x in raised.value.diagnostics] == ["LB020"]
    assert "LB020" in str(raised.value)


def test_packet_text():
    assert str(packet(flags={"syn"})) == "TCP 203.0.113.7:40000 -> 192.0.2.1:80 [SYN]"
    assert str(packet(src="2001:db8::9", dst="2001:db8::1")) == "TCP [2001:db8::9]:40000 -> [2001:db8::1]:80"


def test_a_spec_and_its_loading_show_their_files_and_services_not_their_text():
    # a traceback that shows a Spec would otherwise print every source file, the library's too
    loaded = load_text(MINIMAL, "x.lbspec")
    for shown in (repr(loaded.spec), repr(loaded)):
        assert "x.lbspec" in shown and "'s'" in shown
        assert "vip 192.0.2.1" not in shown and "property" not in shown


def test_a_replayed_view_is_checked_backend_by_backend():
    """The LB's view in a witness must be one health allows: each backend failing within its detection window
    may be seen up or down, one down past it only down, one that never failed only up, and no other name.
    (Checked backend by backend: the views are 2 ** failing, and a witness with 40 failing took minutes.)"""
    names = [f"b{k}" for k in range(24)]
    pool = "\n".join(f"        backend {n} 10.0.0.{k + 1}" for k, n in enumerate(names))
    svc = one(MINIMAL.replace("        backend b1 10.0.0.1", pool).replace(
        "forward tcp 80 to p\n", "forward tcp 80 to p\n    health tcp every 2s timeout 1s fall 3\n"))
    packet = m.Packet("tcp", ip_address("203.0.113.7"), ip_address("192.0.2.1"), 40000, 80)
    failed = ev.Step(0.0, fail=tuple(names[:16]))  # detected 5 to 7 s later
    some = frozenset(names[:8] + names[16:])

    def replays(at: float, view: frozenset[str]) -> bool:
        try:
            ev.Replay(svc).run([failed, ev.Step(at, packet, view=view)])
        except ev.ReplayError:
            return False
        return True

    assert replays(6.0, some) and replays(6.0, frozenset(names[16:])) and replays(6.0, frozenset(names))
    assert not replays(6.0, some - {"b20"})  # b20 never failed
    assert not replays(6.0, some | {"b99"})
    assert not replays(10.0, some) and replays(10.0, frozenset(names[16:]))
    assert not replays(1.0, some) and replays(1.0, frozenset(names))


_NETWORKS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16", "2001:db8::/32", "2001:db8:1::/48"]
_RULES = st.builds(
    lambda protocol, ports, sources: m.Rule(0, protocol, m.merge_ranges(ports), tuple(map(ip_network, sources)),
                                            "p", None),
    st.sampled_from([None, "tcp", "udp", "icmp"]),
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, 30)).map(lambda t: (t[0], t[0] + t[1])), max_size=3),
    st.lists(st.sampled_from(_NETWORKS), max_size=2, unique=True))
_PACKETS = st.builds(
    lambda proto, src, dport: m.Packet(proto, ip_address(src), ip_address("2001:db8::ff" if ":" in src else
                                                                          "192.0.2.1"), 40000, dport),
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.sampled_from(["10.1.2.3", "10.1.9.9", "10.200.0.1", "192.168.1.1", "203.0.113.7", "2001:db8:1::7",
                     "2001:db8:2::7", "2001:db9::7"]),
    st.integers(0, 140))


@settings(max_examples=500, deadline=None)
@given(_RULES, _RULES, _PACKETS)
def test_rules_said_to_be_disjoint_match_no_packet_both(first, second, packet):
    """The checker skips the solver for pairs of rules `disjoint` says no packet can match both: it must never
    be wrong (it may say False of rules that are disjoint: the solver then says so)."""
    if first.disjoint(second):
        assert not (first.matches(packet) and second.matches(packet))
    assert first.disjoint(second) == second.disjoint(first)


def test_rules_with_nothing_in_common_are_disjoint():
    rule = lambda protocol, ports, sources: m.Rule(0, protocol, ports, tuple(map(ip_network, sources)), "p", None)  # noqa
    assert rule("tcp", (), ()).disjoint(rule("udp", (), ()))
    assert rule(None, ((80, 80),), ()).disjoint(rule(None, ((443, 443),), ()))
    assert rule(None, (), ("10.1.0.0/16",)).disjoint(rule(None, (), ("10.2.0.0/16", "2001:db8::/32")))
    assert not rule(None, (), ("10.1.0.0/16",)).disjoint(rule(None, (), ("10.0.0.0/8",)))
    assert not rule("tcp", ((80, 90),), ()).disjoint(rule(None, ((90, 95),), ()))
    assert not rule("tcp", (), ("10.1.0.0/16",)).disjoint(rule(None, (), ()))
