"""Every construct of the language parses into the expected tree, with spans on the right text."""

from __future__ import annotations

import pytest

import lbspec
from lbspec import ir

P = ir.PortRange


def only_service(text: str) -> ir.Service:
    (item,) = lbspec.parse(text).items
    return item


def body(statements: str) -> tuple:
    return only_service("service s {\n" + statements + "\n}").body


def test_service_with_name_and_statements_in_order():
    tree = lbspec.parse("service web { vip 192.0.2.10 listen tcp 80 }")
    assert tree.items == (ir.Service(ir.Ident("web"), (
        ir.Vip((ir.Address("192.0.2.10"),)),
        ir.Listen((ir.ListenItem("tcp", P(80, 80)),)),
    )),)


def test_vip_takes_ipv4_and_ipv6_addresses():
    assert body("vip 192.0.2.10, 2001:db8::10, ::1, fe80::1") == (
        ir.Vip(tuple(ir.Address(a) for a in ("192.0.2.10", "2001:db8::10", "::1", "fe80::1"))),)


def test_listen_items_keep_protocols_ports_lists_and_ranges():
    (listen,) = body("listen tcp 80, 443, 8000-8100, udp 53, icmp")
    assert listen.items == (
        ir.ListenItem("tcp", P(80, 80)), ir.ListenItem(None, P(443, 443)),
        ir.ListenItem(None, P(8000, 8100)), ir.ListenItem("udp", P(53, 53)), ir.ListenItem("icmp", None))


@pytest.mark.parametrize("text, mode", [
    ("mode nat", ir.Mode("nat")),
    ("mode snat", ir.Mode("snat")),
    ("mode dsr", ir.Mode("dsr")),
    ("mode proxy", ir.Mode("proxy")),
    ("mode tunnel ipip", ir.Mode("tunnel", "ipip")),
    ("mode tunnel gre", ir.Mode("tunnel", "gre")),
    ("mode tunnel gue", ir.Mode("tunnel", "gue")),
    ("mode tunnel gue port 5555", ir.Mode("tunnel", "gue", 5555)),
])
def test_modes(text, mode):
    assert body(text) == (mode,)


def test_pool_and_backends_with_every_option():
    (pool,) = body("""pool app {
        backend a 10.0.0.1:8080 weight 3 max_conn 100
        backend b [2001:db8::2]:8080 backup
        backend c 2001:db8::3
        backend d 10.0.0.4 weight -2 backup weight 1
    }""")
    assert pool == ir.Pool(ir.Ident("app"), (
        ir.Backend(ir.Ident("a"), ir.Endpoint(ir.Address("10.0.0.1"), 8080), (ir.Weight(3), ir.MaxConn(100))),
        ir.Backend(ir.Ident("b"), ir.Endpoint(ir.Address("2001:db8::2"), 8080), (ir.Backup(),)),
        ir.Backend(ir.Ident("c"), ir.Endpoint(ir.Address("2001:db8::3"))),
        ir.Backend(ir.Ident("d"), ir.Endpoint(ir.Address("10.0.0.4")), (ir.Weight(-2), ir.Backup(), ir.Weight(1))),
    ))


def test_forward_rules_with_protocol_ports_sources_and_port_mapping():
    rules = body("""forward tcp 80 to app
    forward tcp 443, 8443 from 10.0.0.0/8, 2001:db8::/32 to app port 8443
    forward udp to dns
    forward any 53 from 192.0.2.1 to dns""")
    assert rules == (
        ir.Forward(ir.Traffic("tcp", (P(80, 80),)), (), ir.Ident("app")),
        ir.Forward(ir.Traffic("tcp", (P(443, 443), P(8443, 8443))),
                   (ir.Prefix(ir.Address("10.0.0.0"), 8), ir.Prefix(ir.Address("2001:db8::"), 32)),
                   ir.Ident("app"), 8443),
        ir.Forward(ir.Traffic("udp"), (), ir.Ident("dns")),
        ir.Forward(ir.Traffic("any", (P(53, 53),)), (ir.Prefix(ir.Address("192.0.2.1")),), ir.Ident("dns")),
    )


@pytest.mark.parametrize("text, node", [
    ("otherwise drop", ir.Otherwise("drop")),
    ("otherwise reject", ir.Otherwise("reject")),
    ("balance round_robin", ir.Balance("round_robin")),
    ("balance random", ir.Balance("random")),
    ("balance least_conn", ir.Balance("least_conn")),
    ("balance maglev", ir.Balance("maglev")),
    ("balance hash(src, dst, sport, dport, proto)", ir.Balance("hash", ("src", "dst", "sport", "dport", "proto"))),
    ("affinity flow timeout 300s", ir.Affinity("flow", ir.Quantity("300", "s"))),
    ("affinity client timeout 1.5h", ir.Affinity("client", ir.Quantity("1.5", "h"))),
    ("affinity none", ir.Affinity("none")),
    ("health none", ir.Health("none")),
    ("health http \"/healthz\" every 2s timeout 500ms fall 3 rise 2", ir.Health("http", "/healthz", (
        ir.HealthSetting("every", ir.Quantity("2", "s")), ir.HealthSetting("timeout", ir.Quantity("500", "ms")),
        ir.HealthSetting("fall", 3), ir.HealthSetting("rise", 2)))),
    ("health udp rise 5", ir.Health("udp", None, (ir.HealthSetting("rise", 5),))),
    ("failover to spare when healthy < 1", ir.Failover(None, (ir.Ident("spare"),), 1)),
    ("failover from app to dr, dr2 when healthy < 2",
     ir.Failover(ir.Ident("app"), (ir.Ident("dr"), ir.Ident("dr2")), 2)),
    ("capacity 1000 conns", ir.Capacity(1000)),
    ("capacity 1000 conns with 1 down", ir.Capacity(1000, 1)),
    ("require no_drop", ir.Require(ir.Ident("no_drop"))),
    ("require no_drop within 20ms", ir.Require(ir.Ident("no_drop"), ir.Quantity("20", "ms"))),
    ("waive balance \"canary\"", ir.Waive(ir.Ident("balance"), None, "canary")),
    ("waive balance", ir.Waive(ir.Ident("balance"), None, None)),
    ("waive no_drop for udp \"best effort\"",
     ir.Waive(ir.Ident("no_drop"), ir.FilterWord(ir.Ident("udp")), "best effort")),
])
def test_single_statements(text, node):
    assert body(text) == (node,)


def test_assertions_of_each_form():
    statements = body("""assert from 10.9.0.0/16 to tcp 443 only app1
    assert only app1, app2
    assert to udp only dns
    assert never forward for dport 22 to app2""")
    assert statements == (
        ir.Assert(ir.OnlyRoute((ir.Prefix(ir.Address("10.9.0.0"), 16),), ir.Traffic("tcp", (P(443, 443),)),
                               (ir.Ident("app1"),))),
        ir.Assert(ir.OnlyRoute((), None, (ir.Ident("app1"), ir.Ident("app2")))),
        ir.Assert(ir.OnlyRoute((), ir.Traffic("udp"), (ir.Ident("dns"),))),
        ir.Assert(ir.Absence(ir.FilterTest("dport", None, P(22, 22)), "names", names=(ir.Ident("app2"),))),
    )


def pattern(text: str) -> ir.Pattern:
    (prop,) = lbspec.parse(f'property p "title" {{ {text} }}').items
    assert prop.name == ir.Ident("p") and prop.title == "title"
    return prop.pattern


@pytest.mark.parametrize("text, expected", [
    ("forward every packet within 50ms", ir.Response(None, ir.Quantity("50", "ms"))),
    ("forward every packet for udp within 1s unless no backend healthy",
     ir.Response(ir.FilterWord(ir.Ident("udp")), ir.Quantity("1", "s"), True)),
    ("never forward to down backend", ir.Absence(None, "down")),
    ("never forward to down backend after detection", ir.Absence(None, "down", True)),
    ("never forward to undeclared", ir.Absence(None, "undeclared")),
    ("never forward twice", ir.Absence(None, "twice")),
    ("never forward for tcp to a, b", ir.Absence(ir.FilterWord(ir.Ident("tcp")), "names",
                                                 names=(ir.Ident("a"), ir.Ident("b")))),
    ("stick flow", ir.Stickiness("flow", None)),
    ("stick client for tcp while backend healthy", ir.Stickiness("client", ir.FilterWord(ir.Ident("tcp")), True)),
    ("balance flows within 10%", ir.Distribution("flows", None, ir.Quantity("10", "%"))),
    ("balance bytes for udp within 5%", ir.Distribution("bytes", ir.FilterWord(ir.Ident("udp")),
                                                        ir.Quantity("5", "%"))),
    ("balance packets within 2.5%", ir.Distribution("packets", None, ir.Quantity("2.5", "%"))),
    ("preserve payload, headers", ir.Integrity(("payload", "headers"), None)),
    ("preserve src, sport, ttl for tcp", ir.Integrity(("src", "sport", "ttl"), ir.FilterWord(ir.Ident("tcp")))),
    ("reply from vip", ir.ReversePath(None)),
    ("reply from vip for ipv6", ir.ReversePath(ir.FilterWord(ir.Ident("ipv6")))),
])
def test_each_pattern(text, expected):
    assert pattern(text) == expected


def scope(filter_text: str) -> ir.Filter:
    return pattern(f"reply from vip for {filter_text}").scope


def test_filter_precedence_not_binds_tighter_than_and_than_or():
    a, b, c = (ir.FilterWord(ir.Ident(x)) for x in ("tcp", "udp", "icmp"))
    assert scope("tcp or udp and not icmp") == ir.FilterOr((a, ir.FilterAnd((b, ir.FilterNot(c)))))
    assert scope("(tcp or udp) and icmp") == ir.FilterAnd((ir.FilterOr((a, b)), c))


@pytest.mark.parametrize("text, expected", [
    ("src in 10.0.0.0/8", ir.FilterTest("src", "in", ir.Prefix(ir.Address("10.0.0.0"), 8))),
    ("dst == 2001:db8::1", ir.FilterTest("dst", "==", ir.Prefix(ir.Address("2001:db8::1")))),
    ("dport 443", ir.FilterTest("dport", None, P(443, 443))),
    ("sport not in 0-1023", ir.FilterTest("sport", "not in", P(0, 1023))),
    ("dport >= 1024", ir.FilterTest("dport", ">=", P(1024, 1024))),
    ("dport != 80", ir.FilterTest("dport", "!=", P(80, 80))),
    ("dport < 80", ir.FilterTest("dport", "<", P(80, 80))),
    ("dport <= 80", ir.FilterTest("dport", "<=", P(80, 80))),
    ("dport > 80", ir.FilterTest("dport", ">", P(80, 80))),
    ("proto == tcp", ir.FilterTest("proto", "==", ir.Ident("tcp"))),
    ("family ipv6", ir.FilterTest("family", None, ir.Ident("ipv6"))),
    ("flags has syn", ir.FilterTest("flags", "has", ir.Ident("syn"))),
    ("dport in {80, 443, 8000-8100}", ir.FilterTest("dport", "in", ir.ValueSet((P(80, 80), P(443, 443), P(8000, 8100))))),
    ("any", ir.FilterWord(ir.Ident("any"))),
])
def test_filter_tests(text, expected):
    assert scope(text) == expected


def test_include_and_comments():
    tree = lbspec.parse('# top\ninclude "common.lbspec"  # shared\n')
    assert tree.items == (ir.Include("common.lbspec"),)
    assert [c.text for c in tree.comments] == ["# top", "# shared"]


def test_string_escapes():
    (waiver,) = body(r'waive balance "say \"why\" \\ here"')
    assert waiver.reason == 'say "why" \\ here'


def test_keywords_can_be_names_where_no_keyword_fits():
    (pool, rule) = body("pool backup { backend flow 10.0.0.1 } forward tcp to backup")
    assert pool.name.name == "backup" and pool.backends[0].name.name == "flow"
    assert rule.pool.name == "backup"


def test_names_may_contain_hyphens():
    (pool,) = body("pool app-east { backend app-1 10.0.0.1 }")
    assert pool.backends[0].name.name == "app-1"


# ------------------------------------------------------------------- spans --

SPANNED = '''service web {
    vip 192.0.2.10, 2001:db8::10
    pool app {
        backend app1 10.1.0.11:8080 weight 3
    }
    forward tcp 443 from 10.0.0.0/8 to app port 8443
    assert from 10.9.0.0/16 to tcp 443 only app1
}
property fast "quick" {
    forward every packet for dport 80 within 5ms
}
'''


def text_of(span: ir.Span, source: str = SPANNED) -> str:
    lines = source.split("\n")
    if span.line == span.end_line:
        return lines[span.line - 1][span.column - 1:span.end_column - 1]
    return "\n".join([lines[span.line - 1][span.column - 1:], *lines[span.line:span.end_line - 1],
                      lines[span.end_line - 1][:span.end_column - 1]])


def test_spans_point_at_the_text_of_each_node():
    tree = lbspec.parse(SPANNED, "web.lbspec")
    service, prop = tree.items
    vip, pool, rule, assertion = service.body
    backend = pool.backends[0]
    assert service.span.file == "web.lbspec"
    assert text_of(service.name.span) == "web"
    assert text_of(vip.span) == "vip 192.0.2.10, 2001:db8::10"
    assert text_of(vip.addresses[1].span) == "2001:db8::10"
    assert text_of(pool.span).startswith("pool app {") and text_of(pool.span).endswith("}")
    assert text_of(backend.span) == "backend app1 10.1.0.11:8080 weight 3"
    assert text_of(backend.endpoint.span) == "10.1.0.11:8080"
    assert text_of(backend.options[0].span) == "weight 3"
    assert text_of(rule.span) == "forward tcp 443 from 10.0.0.0/8 to app port 8443"
    assert text_of(rule.sources[0].span) == "10.0.0.0/8"
    assert text_of(rule.pool.span) == "app"
    assert text_of(rule.traffic.ports[0].span) == "443"
    assert text_of(assertion.body.span) == "from 10.9.0.0/16 to tcp 443 only app1"
    assert text_of(prop.pattern.span) == "forward every packet for dport 80 within 5ms"
    assert text_of(prop.pattern.scope.span) == "dport 80"
    assert text_of(prop.pattern.within.span) == "5ms"
    assert (service.span.line, service.span.column) == (1, 1)


def test_ir_equality_ignores_spans():
    one = lbspec.parse("service s { vip 192.0.2.1 }")
    two = lbspec.parse("\n\nservice   s {\n  vip   192.0.2.1\n}\n")
    assert one.items == two.items
    assert one.items[0].span != two.items[0].span


def test_syntax_error_raises_spec_error_from_public_parse():
    with pytest.raises(lbspec.SpecError) as raised:
        lbspec.parse("service {")
    assert [x.code for x in raised.value.diagnostics] == ["LB001"]
    assert isinstance(raised.value, ValueError)
