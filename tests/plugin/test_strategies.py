"""lbspec.strategies: listened traffic only (unless asked), consistent flows and faults, small shrunk examples."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import lbspec
from lbspec import strategies
from lbspec.harness import Fault, Send, Trace
from lbspec.loader import load_text
from lbspec.syntax.format import format_tree

from conftest import EXAMPLES
from specgen import spec_files

SPECS = {name: lbspec.load(path) for name, path in {
    "pylb": EXAMPLES / "pylb" / "service.lbspec", "web": EXAMPLES / "web.lbspec",
    "tunnel": EXAMPLES / "tunnel.lbspec", "dns": EXAMPLES / "dns.lbspec", "api": EXAMPLES / "api.lbspec"}.items()}
QUICK = settings(max_examples=60, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def taken(spec) -> set:
    return {a for s in spec.services for a in (*s.vips, *(b.address for b in s.backends))}


def listened(spec, segment) -> bool:
    return any(s.listens_to(segment.packet) for s in spec.services)


def assert_client_traffic(spec, segments) -> None:
    for segment in segments:
        assert listened(spec, segment), segment
        assert segment.src not in taken(spec), segment
        assert segment.src.version == segment.dst.version


@pytest.mark.parametrize("name", sorted(SPECS))
@QUICK
@given(data=st.data())
def test_packets_are_listened_traffic_from_clients(name, data):
    spec = SPECS[name]
    assert_client_traffic(spec, [data.draw(strategies.packets(spec))])


@pytest.mark.parametrize("name", sorted(SPECS))
@QUICK
@given(data=st.data())
def test_traces_hold_only_listened_traffic_in_time_order(name, data):
    spec = SPECS[name]
    trace = data.draw(strategies.traffic(spec, max_steps=15))
    assert_client_traffic(spec, [e.segment for e in trace.sends])
    times = [e.time for e in trace.events]
    assert times == sorted(times)
    backends = {(s.name, b.name) for s in spec.services for b in s.backends}
    assert {(f.service, f.backend) for f in trace.faults} <= backends


@settings(QUICK, max_examples=25)
@given(spec_files(), st.data())
def test_random_specs_get_only_their_listened_traffic(tree, data):
    loaded = load_text(format_tree(tree, ""), "generated.lbspec")
    assert loaded.ok
    trace = data.draw(strategies.traffic(loaded.spec, max_steps=6))
    assert_client_traffic(loaded.spec, [e.segment for e in trace.sends])


@QUICK
@given(strategies.flows(SPECS["pylb"], max_packets=5))
def test_a_flow_is_one_connection_opened_first(flow):
    segments = flow.segments
    assert len({(s.proto, s.src, s.sport, s.dst, s.dport) for s in segments}) == 1
    if segments[0].proto == "tcp":
        assert segments[0].flags == {"syn"}
        assert all(s.flags == {"psh", "ack"} and s.payload for s in segments[1:])
        assert [s.seq for s in segments[1:]] == sorted({s.seq for s in segments[1:]})
    assert len({s.payload for s in segments}) == len(segments)  # packets of a flow are told apart


@QUICK
@given(strategies.traffic(SPECS["pylb"], max_steps=20))
def test_each_flow_has_its_own_client_end_and_backends_fail_before_they_recover(trace):
    ends: dict[tuple, int] = {}
    for send in trace.sends:
        s = send.segment
        assert ends.setdefault((s.proto, s.src, s.sport), send.flow) == send.flow
    down: set[str] = set()
    for fault in trace.faults:
        assert (fault.backend in down) == fault.up  # fail only what is up, recover only what is down
        (down.discard if fault.up else down.add)(fault.backend)


@QUICK
@given(strategies.health_events(SPECS["pylb"]))
def test_health_events_alternate_per_backend(faults):
    state: dict[str, bool] = {}
    for fault in faults:
        assert isinstance(fault, Fault)
        assert state.get(fault.backend, True) != fault.up
        state[fault.backend] = fault.up
    assert [f.time for f in faults] == sorted(f.time for f in faults)


def test_out_of_spec_traffic_comes_only_when_asked():
    spec = SPECS["pylb"]
    stray = find(strategies.packets(spec, out_of_spec=True), lambda s: not listened(spec, s),
                 settings=settings(database=None, max_examples=500, derandomize=True))
    assert not listened(spec, stray)
    assert stray.src not in taken(spec)
    wanted = find(strategies.packets(spec, out_of_spec=True), lambda s: listened(spec, s),
                  settings=settings(database=None, max_examples=500, derandomize=True))
    assert listened(spec, wanted)


def test_ipv6_traffic_for_ipv6_vips():
    spec = SPECS["pylb"]
    segment = find(strategies.packets(spec, family=6), lambda s: True, settings=settings(database=None))
    assert segment.family == 6 and segment.dst == ipaddress.ip_address("2001:db8::80")


def test_traces_shrink_to_a_few_readable_events():
    """The smallest trace with a fault between two packets: a few events, the first addresses, backend and gap.

    (Hypothesis shrinks the choices; the harness then drops whole flows from a failing trace, see test_harness.)"""
    spec = SPECS["pylb"]

    def interesting(trace: Trace) -> bool:
        events = trace.events
        return any(isinstance(e, Fault) and any(isinstance(x, Send) for x in events[:i])
                   and any(isinstance(x, Send) for x in events[i:]) for i, e in enumerate(events))

    smallest = find(strategies.traffic(spec, max_steps=3), interesting,
                    settings=settings(database=None, max_examples=1000, derandomize=True))
    assert len(smallest) <= 5 and smallest.flows == 1 and 1 <= len(smallest.faults) <= 2
    first = smallest.sends[0]
    assert (str(first.segment.src), str(first.segment.dst), first.segment.sport) == ("198.51.100.1", "192.0.2.80", 1024)
    assert first.time == 0.001 and {f.backend for f in smallest.faults} == {"web1"}


def test_bursts_reach_past_the_declared_capacity():
    spec = SPECS["pylb"]  # capacity 8 conns
    largest = []

    @settings(max_examples=100, database=None, deadline=None, derandomize=True)
    @given(strategies.traffic(spec))
    def record(trace):
        opened: dict[float, set] = {}
        for send in trace.sends:
            if send.segment.flags == {"syn"}:
                opened.setdefault(send.time, set()).add(send.flow)
        largest.append(max((len(f) for f in opened.values()), default=0))

    record()
    assert max(largest) > 8  # a burst opens more flows at one instant than the spec says it must carry


def test_unknown_service_names_the_services_there_are():
    with pytest.raises(ValueError, match="pylb"):
        strategies.traffic(SPECS["pylb"], service="nope")


def test_the_state_machine_builds_listened_traces_and_judges_each():
    spec = SPECS["pylb"]
    judged: list[Trace] = []

    def judge(trace: Trace) -> None:
        assert_client_traffic(spec, [e.segment for e in trace.sends])
        judged.append(trace)

    machine = strategies.lb_machine(spec, judge)
    run_state_machine_as_test(machine, settings=settings(max_examples=25, stateful_step_count=15, deadline=None,
                                                         database=None))
    assert judged and any(t.faults for t in judged) and any(s.segment.family == 6 for t in judged for s in t.sends)
    assert max(t.flows for t in judged) >= 2


def test_renumbering_remakes_the_packets_of_each_flow_under_its_new_number():
    client, vip = ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("192.0.2.80")
    late, early = (strategies.Endpoint("pylb", proto, client, 1024, vip, port) for proto, port in (("tcp", 80),
                                                                                                 ("udp", 53)))
    foreign = Send(0.003, strategies.Flow(early, 3).segment(0), 12)  # flow 12's label on flow 3's bytes
    trace = Trace((Send(0.0, strategies.Flow(late, 7).segment(0), 7), foreign,
                   Send(0.004, strategies.Flow(late, 7).segment(2), 7)))
    renumbered = strategies.renumbered(trace)
    assert [e.flow for e in renumbered.sends] == [1, 2, 1]
    assert [e.segment for e in renumbered.sends] == [strategies.Flow(late, 1).segment(0), foreign.segment,
                                                     strategies.Flow(late, 1).segment(2)]
    assert [e.time for e in renumbered] == [e.time for e in trace]
