"""Proxy mode: byte streams, not packets, are paired and judged."""

from __future__ import annotations

from .scenario import Scenario, codes, spec

SPEC = spec(mode="proxy")


def test_clean_proxied_connections():
    scenario = Scenario("proxy")
    for k in range(4):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.1)
    report = scenario.judge(SPEC)
    assert codes(report) == []
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"b1": 2, "b2": 2}


def test_segments_may_be_cut_differently_on_each_side():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(b"a" * 700, b"b" * 900, b"c" * 1500), regroup=False)
    scenario.proxy_flow("10.1.0.12", 0.2, chunks=(b"a" * 700, b"b" * 900, b"c" * 1500), regroup=True)
    assert codes(scenario.judge(SPEC)) == []


def test_client_bytes_never_sent_on_are_LB200():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", lose=1, regroup=False)
    assert codes(scenario.judge(SPEC)) == ["LB200"]


def test_client_bytes_sent_on_late_are_LB200():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", delay=0.08)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"]
    assert report.violations[0].data["forwarded"] is True


def test_changed_bytes_are_LB204():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(b"x" * 3000, b"y" * 10), alter=True)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB204"]


def test_a_backend_connection_to_an_undeclared_address_is_LB203():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.99")
    assert codes(scenario.judge(SPEC)) == ["LB203"]


def test_a_backend_connection_no_client_explains_is_LB208():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11")
    lone = Scenario("proxy")
    lone.proxy_flow("10.1.0.12", 0.3, chunks=(b"POST /x",))
    scenario.packets += [p for p in lone.packets if p.side == "backend"]
    assert codes(scenario.judge(SPEC)) == ["LB208"]


def test_health_checks_of_the_proxy_are_not_LB208():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11")
    probe = Scenario("proxy")
    probe.proxy_flow("10.1.0.12", 0.3, chunks=(b"GET /healthz HTTP/1.0\r\n\r\n",))
    scenario.packets += [p for p in probe.packets if p.side == "backend"]
    text = spec(mode="proxy", health='health http "/healthz" every 1s timeout 500ms')
    assert codes(scenario.judge(text)) == []


def test_a_client_connection_the_proxy_never_serves_is_LB200():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", open_backend=False)
    assert codes(scenario.judge(SPEC)) == ["LB200"]
    excused = scenario.judge(SPEC, events=[(-1.0, "b1", False), (-1.0, "b2", False)])
    assert codes(excused) == []


def test_connections_that_carry_nothing_pair_by_time():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=())
    assert codes(scenario.judge(SPEC)) == []
