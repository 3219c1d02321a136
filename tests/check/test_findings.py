"""Each finding code: a spec that triggers it (with a replayed witness) and a close variant that does not."""

from __future__ import annotations

import itertools

import textwrap
from pathlib import Path

import pytest

import lbspec
from lbspec.check import CheckOptions, check_spec
from lbspec.check.findings import FinderOptions, ServiceFinder
from lbspec.diagnostics import Severity
from lbspec.semantics import evaluate as ev
from lbspec.smt.queries import Answer
from lbspec.smt.solver import SolverSettings

from conftest import CLEAN, EXAMPLES, service

FINDINGS = EXAMPLES / "findings"
TRIGGERS = sorted(p for p in FINDINGS.glob("LB*.lbspec") if not p.name.endswith(".ok.lbspec"))
WITNESSED = {"LB100", "LB101", "LB102", "LB104"}


def findings(spec: lbspec.Spec, **options) -> list:
    found = check_spec(spec, CheckOptions(jobs=1, **options))
    assert not [x for x in found if x.code == "LB099"], "a witness did not replay"
    return found


def serious(found) -> set[str]:
    return {x.code for x in found if x.severity is not Severity.INFO}


def check_text(text: str, **options) -> list:
    return findings(lbspec.loads(textwrap.dedent(text)), **options)


def test_every_finding_code_has_an_example_pair():
    codes = {p.name[:5] for p in TRIGGERS}
    assert codes >= {f"LB{n}" for n in range(100, 111)}
    for trigger in TRIGGERS:
        assert trigger.with_name(trigger.name.replace(".lbspec", ".ok.lbspec")).exists()


@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda p: p.stem)
def test_example_triggers_its_code_and_its_variant_does_not(trigger: Path):
    code = trigger.name[:5]
    found = findings(lbspec.load(trigger))
    hits = [x for x in found if x.code == code and x.severity is not Severity.INFO]
    assert hits, sorted((x.code, x.message) for x in found)
    if code in WITNESSED:
        assert all(x.witness is not None and x.witness.steps for x in hits)
    near = findings(lbspec.load(trigger.with_name(trigger.name.replace(".lbspec", ".ok.lbspec"))))
    assert code not in serious(near), sorted((x.code, x.message) for x in near)


def test_the_api_example_yields_the_seeded_gaps():
    found = findings(lbspec.load(EXAMPLES / "api.lbspec"))
    codes = serious(found)
    assert {"LB100", "LB101", "LB104"} <= codes
    broken = {x.data["property"] for x in found if x.code == "LB100"}
    assert "no_drop" in broken and "flow_affinity" in broken
    (no_drop,) = [x for x in found if x.code == "LB100" and x.data["property"] == "no_drop"]
    steps = no_drop.witness.steps
    assert steps[-1].packet is not None and steps[-1].choice.__class__.__name__ == "Drop"


def test_witnesses_show_only_the_failures_they_need():
    # the solver may fail any backend; a drop in the legacy pool or a flow moving needs none of it
    found = findings(lbspec.load(EXAMPLES / "api.lbspec"))
    for broken in [x for x in found if x.code == "LB100"]:
        assert not [s for s in broken.witness.steps if s.fail], broken.data["property"]
    # a packet to a dead backend needs its failure
    (dead,) = [x for x in findings(lbspec.load(FINDINGS / "LB105-no-health.lbspec")) if x.code == "LB100"]
    assert [s.fail for s in dead.witness.steps if s.fail]


@pytest.mark.parametrize("name", ["web", "dns", "tunnel"])
def test_complete_examples_have_no_findings(name):
    assert serious(findings(lbspec.load(EXAMPLES / f"{name}.lbspec"))) == set()


# --- each pattern breaks, each with its own witness --------------------------

def broken(found) -> dict[str, object]:
    return {x.data["property"]: x for x in found if x.code == "LB100"}


def test_response_excused_when_no_backend_is_healthy():
    # one backend, health checked: a drop happens only when it is dead, which no_drop excuses
    assert "no_drop" not in broken(check_text(CLEAN))


def test_absence_down_without_health_check():
    hit = broken(check_text(service("")))["healthy_only"]
    fail, packet = hit.witness.steps
    assert fail.fail == ("b1",) and packet.choice.backend == "b1"


def test_absence_down_with_a_strict_user_property():
    text = 'property strict "never a dead backend, even undetected" { never forward to down backend }\n' + \
        service("health tcp\nrequire strict")
    assert "strict" in broken(check_text(text))
    relaxed = text.replace("never forward to down backend", "never forward to down backend after detection")
    assert "strict" not in broken(check_text(relaxed))


def test_stickiness_breaks_with_client_hashing_but_not_with_tracking():
    two = CLEAN.replace("backend b1 10.0.0.1", "backend b1 10.0.0.1\n        backend b2 10.0.0.2")
    assert "flow_affinity" in broken(check_text(two.replace("health tcp", "health tcp\n    affinity none")))
    assert "flow_affinity" not in broken(check_text(two))


def test_distribution_breaks_with_client_affinity():
    two = CLEAN.replace("backend b1 10.0.0.1", "backend b1 10.0.0.1\n        backend b2 10.0.0.2")
    hit = broken(check_text(two.replace("health tcp", "health tcp\n    affinity client timeout 1h")))["balance"]
    first, second = [s.packet for s in hit.witness.steps if s.packet is not None]
    assert first.src == second.src and (first.sport, first.dport) != (second.sport, second.dport) or \
        first.dst != second.dst
    assert "balance" not in broken(check_text(two))


def test_integrity_of_a_rewritten_port():
    text = 'property keep_port "the port is not translated" { preserve dport }\n' + CLEAN.replace(
        "listen tcp 80", "listen tcp 80, 81").replace(
        "forward tcp 80 to p", "forward tcp 80 to p port 8080\n    forward tcp 81 to p").replace(
        "health tcp", "health tcp\n    require keep_port")
    hit = broken(check_text(text))["keep_port"]
    assert hit.witness.steps[-1].choice.packet.dport == 8080
    assert "keep_port" not in broken(check_text(text.replace(" port 8080", "")))
    # when every packet is rewritten, the property can never hold: a contradiction
    always = text.replace("forward tcp 81 to p", "forward tcp 81 to p port 8081")
    assert "LB107" in {x.code for x in check_text(always)}


def test_library_integrity_holds_in_every_mode():
    for mode in ("nat", "snat", "dsr", "proxy", "tunnel gue"):
        assert "integrity" not in broken(check_text(CLEAN.replace("health tcp", f"health tcp\n    mode {mode}")))


# --- services with no backend -------------------------------------------------

def no_backend(body: str) -> str:
    """A service with no backend, held also to a property that asks about backends' addresses."""
    return 'property keep_dst "the destination is kept" { preserve dst }\n' + \
        "service s {\n    vip 192.0.2.1\n    listen tcp 80\n    require keep_dst\n" + body + "}\n"


@pytest.mark.parametrize("body", [
    "    otherwise reject\n",  # what the importers write for a service without endpoints
    "    otherwise drop\n",
    "    pool p {\n    }\n    forward tcp 80 to p\n",
    "    mode snat\n    pool p {\n    }\n    forward tcp 80 to p\n    otherwise drop\n",
], ids=["reject", "drop", "empty-pool", "empty-pool-snat"])
def test_a_service_with_no_backend_is_checked(body):
    # every property is asked of it; nothing is forwarded, so none can break
    found = check_text(no_backend(body))
    assert broken(found) == {}
    assert not [x for x in found if x.code == "LB111"]


# --- --explain, unknown ------------------------------------------------------

def test_explain_names_the_lines_a_property_rests_on():
    found = findings(lbspec.load(EXAMPLES / "findings" / "LB107-contradiction.ok.lbspec"), explain=True)
    holds = {x.data["property"]: x for x in found if x.code == "LB112"}
    assertion = next(v for k, v in holds.items() if k.startswith("assert"))
    lines = {n.span.line for n in assertion.notes}
    assert {8, 12} <= lines  # pool ops, forward tcp 9000 to ops


def test_explain_lists_clauses_of_a_failure():
    found = findings(lbspec.load(EXAMPLES / "api.lbspec"), explain=True)
    no_drop = next(x for x in found if x.code == "LB100" and x.data["property"] == "no_drop")
    assert any("would have to change" in n.message for n in no_drop.notes)


def test_solver_giving_up_is_unknown_never_ok():
    found = findings(lbspec.load(EXAMPLES / "web.lbspec"), rlimit=1)
    unknown = [x for x in found if x.code == "LB111"]
    assert unknown and "seconds" in unknown[0].data
    assert {x.data["limit"] for x in unknown} == {"rlimit"}
    assert not [x for x in found if x.code == "LB112"]


@pytest.mark.parametrize(("seconds", "limit"), [(9.99, "timeout"), (10.0, "timeout"), (3.7, "rlimit")])
def test_unknown_says_which_limit_stopped_the_solver(seconds, limit):
    """Z3 says "canceled" whether its time or its work limit ran out; a question of 1,000 backends stopped by
    the work limit after 3.7 s said "raise --timeout", which changed nothing."""
    finder = ServiceFinder(lbspec.load(EXAMPLES / "web.lbspec").services[0], FinderOptions(SolverSettings(10_000)))
    found = finder._unknown("`no_drop`", Answer("unknown", seconds, reason="canceled"), None)
    assert found.code == "LB111" and found.data["limit"] == limit


def test_parallel_and_serial_runs_agree():
    spec = lbspec.load(EXAMPLES / "tunnel.lbspec")
    text = spec.sources["examples/tunnel.lbspec" if "examples/tunnel.lbspec" in spec.sources else next(iter(spec.sources))]
    doubled = lbspec.loads("\n".join(  # each copy on VIPs of its own: services may not share a listener
        text.replace("service edge", f"service edge{i}").replace("service metrics", f"service metrics{i}")
            .replace("vip 203.0.113.", f"vip 203.0.{113 + i}.").replace(", 203.0.113.", f", 203.0.{113 + i}.")
            .replace("vip 10.99.0.1", f"vip 10.{99 - i}.0.1") for i in range(3)))
    serial = check_spec(doubled, CheckOptions(jobs=1))
    parallel = check_spec(doubled, CheckOptions(jobs=2))
    assert [(x.code, x.message) for x in serial] == [(x.code, x.message) for x in parallel]


# --- structural witnesses ----------------------------------------------------

OVERLAP = """
service shop {
    vip 192.0.2.60
    listen tcp 8000-8100
    pool web {
        backend w1 10.6.0.1
    }
    pool tools {
        backend t1 10.6.9.1
    }
    forward tcp 8000-8100 from 10.0.0.0/8 to tools
    forward tcp 8000-8050 to web
    otherwise drop
    health http "/" every 3s timeout 1s fall 2 rise 2
}
"""


def test_overlap_witness_replays_and_shows_the_first_rule_taking_the_packet():
    spec = lbspec.loads(OVERLAP)
    (overlap,) = [x for x in findings(spec) if x.code == "LB102"]
    replay = ev.Replay(spec.service("shop")).run(overlap.witness.steps)  # raises if the spec cannot do this
    assert replay.outcomes[-1].rule.pool == "tools"
    assert [s.choice.backend for s in overlap.witness.steps] == ["t1"]


def test_structural_questions_the_solver_gives_up_on_are_unknown_never_silent():
    text = OVERLAP.replace("    otherwise drop\n", '    otherwise drop\n    waive healthy_only for dport 8000 "tools"\n')
    found = findings(lbspec.loads(text), rlimit=1)
    undecided = {x.span.line for x in found if x.code == "LB111"}
    lines = text.split("\n")
    expected = {n for n, line in enumerate(lines, 1) if line.lstrip().startswith(("forward", "backend", "waive"))}
    assert expected <= undecided  # each rule, backend and scoped waiver whose question ran out
    assert not {x.code for x in found} & {"LB102", "LB103", "LB106", "LB108"}


def test_a_required_property_that_can_never_hold_points_at_the_require_and_the_mode():
    text = 'property keep_src "the client address arrives" { preserve src }\n' + \
        CLEAN.replace("health tcp", "health tcp\n    mode snat\n    require keep_src")
    (contradiction,) = [x for x in check_text(text) if x.code == "LB107"]
    lines = text.split("\n")
    assert lines[contradiction.span.line - 1].strip() == "require keep_src"
    noted = {lines[n.span.line - 1].strip() for n in contradiction.notes if n.span.file == contradiction.span.file}
    assert "mode snat" in noted


# --- capacity ------------------------------------------------------------------

CAPACITY = """
service web {
    vip 192.0.2.10
    listen tcp 80
    pool app {
        backend a1 10.0.0.1 max_conn 10
        backend a2 10.0.0.2 max_conn 10
        backend spare 10.0.0.3 backup SPARE_LIMIT
    }
    forward tcp 80 to app
    health tcp
    failover to spare when healthy < 2
    capacity 2000000000000 conns with 1 down
}
"""


def test_a_failover_target_without_max_conn_has_no_limit():
    # a backend without max_conn is not a large limit but none: no load exceeds what it carries
    assert "LB110" not in serious(check_text(CAPACITY.replace("SPARE_LIMIT", "")))
    (short,) = [x for x in check_text(CAPACITY.replace("SPARE_LIMIT", "max_conn 5")) if x.code == "LB110"]
    assert short.data["available"] == 15 and short.span.line == 13


SPILL = """
service web {
    vip 192.0.2.10
    listen tcp 80-81
    pool p {
        backend p1 10.0.0.1 max_conn 500
        backend p2 10.0.0.2 max_conn 100
        backend f 10.0.0.9 backup max_conn 1000
    }
    pool q {
        backend q1 10.0.1.1 max_conn 400
    }
    forward tcp 80 to p
    forward tcp 81 to q
    health tcp
    failover from p to f when healthy < 2
    capacity 1000 conns with 1 down
}
"""


def test_the_worst_case_is_not_always_losing_the_largest_limit():
    # losing p1 (500) starts the failover to f (1000): 1500 carried; losing q1 (400) starts nothing: 600
    (short,) = [x for x in check_text(SPILL) if x.code == "LB110"]
    assert (short.data["available"], short.data["down"]) == (600, ["q1"])
    assert "LB110" not in {x.code for x in check_text(SPILL.replace("capacity 1000", "capacity 600"))}


@pytest.mark.parametrize("down", [0, 1, 2])
def test_the_worst_case_is_the_least_over_every_choice_of_backends_down(down):
    limits = {"p1": 500, "p2": 100, "q1": 400}
    def carried(lost) -> int:  # what is left, and f's 1000 while fewer than 2 of p's primaries are up
        up_in_p = len({"p1", "p2"} - set(lost))
        return sum(v for k, v in limits.items() if k not in lost) + (1000 if up_in_p < 2 else 0)
    least = min(carried(lost) for lost in itertools.combinations(limits, down))
    text = SPILL.replace("with 1 down", f"with {down} down").replace("capacity 1000", "capacity 100000")
    (short,) = [x for x in check_text(text) if x.code == "LB110"]
    assert short.data["available"] == least == carried(short.data["down"]) and len(short.data["down"]) == down


# --- witness clients -----------------------------------------------------------

CLIENTS = """
service a {
    vip 192.0.2.1
    listen tcp 80
    pool p { backend b1 10.9.9.9 }
    pool q { backend b2 10.9.9.10 }
    forward tcp 80 from 10.0.0.0/8 to p
    forward tcp 80 from 10.1.0.0/16, 172.16.0.0/12 to q
    forward tcp 80 from 10.2.0.4 to q
    otherwise drop
    affinity none
}
"""


def test_witness_clients_are_hosts_not_network_addresses():
    spec = lbspec.loads(CLIENTS)
    rules = spec.services[0].rules
    networks = {n.network_address for r in rules for n in r.sources if n.num_addresses > 1}
    witnessed = [x for x in findings(spec) if x.witness is not None]
    assert "LB102" in {x.code for x in witnessed}
    for diagnostic in witnessed:
        for packet in diagnostic.witness.packets:
            assert packet.src not in networks, (diagnostic.code, str(packet))
