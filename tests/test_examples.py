"""Every example under examples/ is run through the front end and the CLI."""

from __future__ import annotations

import pytest

import lbspec

from conftest import EXAMPLES

SPECS = sorted(EXAMPLES.glob("*.lbspec"))


def test_there_are_at_least_four_examples():
    assert {p.stem for p in SPECS} >= {"web", "dns", "tunnel", "api"}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_loads_cleanly(path, cli):
    spec = lbspec.load(path)
    assert spec.services and spec.diagnostics == ()
    assert cli("check", "--front-end-only", str(path)).code == 0
    assert cli("fmt", "--check", str(path)).code == 0


@pytest.mark.parametrize("path", [p for p in SPECS if p.stem != "api"], ids=lambda p: p.stem)
def test_complete_examples_have_no_findings(path, cli):
    run = cli("check", str(path))
    assert run.code == 0, run.out


def test_web_is_nat_and_includes_shared_properties():
    (web,) = lbspec.load(EXAMPLES / "web.lbspec").services
    assert web.mode.kind == "nat"
    assert {c.name for c in web.checks if c.origin == "required"} == {"fast_syn"}


def test_dns_is_dsr_over_both_families():
    (dns,) = lbspec.load(EXAMPLES / "dns.lbspec").services
    assert dns.mode.kind == "dsr" and dns.families == {4, 6}
    assert {b.family for b in dns.backends} == {4, 6}


def test_tunnel_example_has_gue_and_ipip_with_several_pools():
    edge, metrics = lbspec.load(EXAMPLES / "tunnel.lbspec").services
    assert (edge.mode.kind, edge.mode.encap, edge.mode.encap_port) == ("tunnel", "gue", 6080)
    assert metrics.mode.encap == "ipip"
    assert len(edge.pools) == 3 and edge.failovers[0].to_pool


def test_api_is_valid_but_incomplete_in_the_ways_the_seed_describes():
    (api,) = lbspec.load(EXAMPLES / "api.lbspec").services
    assert api.otherwise is None and all(r.sources for r in api.rules if 443 in range(r.ports[0][0], r.ports[0][1] + 1))
    assert all(b.backup for b in api.pool("legacy").backends) and not api.failovers
    assert api.affinity.kind == "none" and api.balance.algorithm == "round_robin"
