"""The harness without pytest around it: the wire codec, health checks, the in-process driver, judging,
trace reduction, and captures that reproduce what was judged in memory."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis.errors import HypothesisWarning
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

import lbspec
from lbspec import strategies
from lbspec.harness import (EPOCH, Failure, Fault, Harness, HealthChecks, InProcess, LoadBalancerError, Outer,
                            SearchSettings, Segment, Send, Trace, UnsupportedMode, decode)
from lbspec.harness.artifacts import replay, write_recording
from lbspec.harness.judge import judge
from lbspec.harness.reduce import reduce_trace
from lbspec.harness.wire import GUE_PORT
from lbspec.semantics.evaluate import detection_bounds
from lbspec.semantics.model import Health

from conftest import EXAMPLES, example_pylb

SPEC_PATH = EXAMPLES / "pylb" / "service.lbspec"
SPEC = lbspec.load(SPEC_PATH)
SERVICE = SPEC.service("pylb")
CLIENT, VIP, VIP6 = ip_address("198.51.100.7"), ip_address("192.0.2.80"), ip_address("2001:db8::80")


pylb = example_pylb("harness_pylb")


def syn(time: float, sport: int = 40000, flow: int = 1, src=CLIENT, dst=VIP) -> Send:
    return Send(time, Segment("tcp", src, dst, sport, 80, frozenset({"syn"}), seq=1000 * flow), flow)


def data(time: float, k: int, sport: int = 40000, flow: int = 1, src=CLIENT, dst=VIP) -> Send:
    return Send(time, Segment("tcp", src, dst, sport, 80, frozenset({"psh", "ack"}), seq=1000 * flow + 1 + 4 * k,
                              ack=1, payload=b"d%03d" % k), flow)


# -------------------------------------------------------------------- wire --

addresses4 = st.integers(1, 2 ** 32 - 2).map(IPv4Address)
addresses6 = st.integers(1, 2 ** 128 - 2).map(IPv6Address)
flags = st.frozensets(st.sampled_from(["fin", "syn", "rst", "psh", "ack", "urg"]))


@st.composite
def segments(draw):
    six = draw(st.booleans())
    src, dst = draw(addresses6 if six else addresses4), draw(addresses6 if six else addresses4)
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    payload = draw(st.binary(max_size=64))
    if proto == "icmp":
        return Segment("icmp", src, dst, icmp_type=128 if six else 8, ident=draw(st.integers(0, 65535)),
                       seq=draw(st.integers(0, 65535)), payload=payload, ttl=draw(st.integers(1, 255)))
    ports = draw(st.integers(1, 65535)), draw(st.integers(1, 65535))
    if proto == "udp":
        return Segment("udp", src, dst, *ports, payload=payload, ttl=draw(st.integers(1, 255)))
    return Segment("tcp", src, dst, *ports, draw(flags), draw(st.integers(0, 2 ** 32 - 1)),
                   draw(st.integers(0, 2 ** 32 - 1)), payload, draw(st.integers(1, 255)))


@settings(max_examples=150, deadline=None)
@given(segments())
@example(Segment("udp", IPv4Address(1), IPv4Address(1), 1, GUE_PORT)).via("a datagram to the GUE port, no tunnel")
def test_segments_round_trip_with_the_checksums_scapy_computes(segment):
    data_ = segment.encode()
    assert decode(data_) == segment
    packet = (IPv6 if segment.family == 6 else IP)(data_)
    rebuilt = packet.__class__(bytes(packet.__class__(data_)))  # scapy keeps checksums it read
    fresh = packet.copy()
    for layer in (fresh, fresh.payload):
        if hasattr(layer, "chksum"):
            layer.chksum = None
        if hasattr(layer, "cksum"):
            layer.cksum = None
    assert bytes(fresh.__class__(bytes(fresh))) == bytes(rebuilt) == data_


@pytest.mark.parametrize("kind", ["ipip", "gre", "gue"])
def test_tunnelled_segments_decode_to_their_inner_packet(kind):
    inner = syn(0.0).segment
    outer = Outer(kind, ip_address("10.9.0.1"), ip_address("10.2.0.1"), 50000 if kind == "gue" else 0)
    found = decode(Segment(**{**{f: getattr(inner, f) for f in inner.__slots__}, "outer": outer}).encode())
    assert found.outer.kind == kind and found.outer.dst == ip_address("10.2.0.1")
    assert found.packet == inner.packet


def test_scapy_reads_what_the_codec_writes():
    packet = IP(syn(0.0).segment.encode())
    assert packet[TCP].flags == "S" and packet[TCP].dport == 80 and packet.dst == "192.0.2.80"
    assert UDP in IP(Segment("udp", CLIENT, VIP, 5353, 53, payload=b"q").encode())


# ------------------------------------------------------------------ health --

@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5000).map(lambda ms: ms / 1000), st.sampled_from([(1.0, 0.5, 2, 2), (2.0, 1.0, 3, 2),
                                                                        (0.5, 0.5, 1, 1)]))
def test_health_checks_notice_a_failure_within_the_detection_window(failed_at, settings_):
    every, timeout, fall, rise = settings_
    health = Health("tcp", every=every, timeout=timeout, fall=fall, rise=rise)
    checks = HealthChecks(health, ["a"])
    checks.change("a", False, failed_at)
    shortest, longest = detection_bounds(health)
    assert checks.up("a", failed_at + shortest - 0.001)
    assert not checks.up("a", failed_at + longest - 0.000001)
    checks.change("a", True, failed_at + 10)
    assert checks.up("a", failed_at + 10 + rise * every)


def test_health_none_never_notices():
    checks = HealthChecks(Health("none"), ["a"])
    checks.change("a", False, 0.0)
    assert checks.up("a", 1e6)


# --------------------------------------------------------------- in process --

def test_backends_answer_through_the_lb_and_dead_ones_do_not():
    trace = Trace((syn(0.0), Fault(0.01, "web1", False), Fault(0.01, "web2", False), Fault(0.01, "web3", False),
                   syn(0.02, 40001, 2)))
    recording = InProcess(lambda: pylb.MaglevLB(SERVICE)).run(SPEC, trace)
    client = [decode(p.data) for p in recording.on("client")]
    backend = [decode(p.data) for p in recording.on("backend")]
    synacks = [s for s in client if s.flags == {"syn", "ack"}]
    assert len(synacks) == 1 and synacks[0].src == VIP and synacks[0].sport == 80  # translated back
    to_backends = [s for s in backend if s.flags == {"syn"} and s.src == CLIENT]
    assert len(to_backends) == 2 and all(s.dport == 8080 for s in to_backends)
    assert [(f.backend, f.up, f.service) for f in recording.faults][:1] == [("web1", False, "pylb")]
    markers = [p for p in recording.packets if decode(p.data).src == ip_address("198.18.0.1")]
    assert [p.side for p in markers] == ["client", "backend", "client", "backend"]


def test_dsr_and_proxy_services_cannot_be_driven_in_process():
    text = SPEC_PATH.read_text().replace("mode nat", "mode dsr")
    dsr = lbspec.loads(text, "dsr.lbspec")
    with pytest.raises(UnsupportedMode, match="mode dsr"):
        InProcess(lambda: None).run(dsr, Trace((syn(0.0),)))


def test_a_search_needs_a_fresh_lb_per_trace():
    with pytest.raises(TypeError, match="MaglevLB"):
        Harness(SPEC).check(pylb.MaglevLB(SERVICE))


def test_unknown_properties_are_named_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean `no_drop`"):
        Harness(SPEC, properties=["no_drops"])



class Misbehaving:
    """A load balancer that forwards nothing and gets its adapter wrong in one way."""

    def __init__(self, wrong: str):
        self.wrong = wrong

    def handle(self, packet: bytes, time: float):
        returned = {"raises": None, "bytes": packet, "str": "sent", "ints": [1, 2], "segments": [decode(packet)]}
        if self.wrong == "raises":
            raise RuntimeError("table corrupt")
        return returned.get(self.wrong, [])

    def advance(self, time: float):
        return 5 if self.wrong == "advance" else None


@pytest.mark.parametrize("wrong", ["raises", "bytes", "str", "ints", "segments", "advance"])
def test_a_misbehaving_adapter_is_an_error_with_the_trace_not_a_verdict(wrong):
    trace = Trace((syn(0.0),))
    with pytest.raises(LoadBalancerError) as raised:
        Harness(SPEC).run(Misbehaving(wrong), trace)
    assert raised.value.trace == trace
    assert isinstance(raised.value.__cause__, RuntimeError) == (wrong == "raises")


def test_a_search_reports_a_misbehaving_adapter_with_a_trace_it_fails_on():
    harness = Harness(SPEC, search=SearchSettings(examples=5, seed=1))
    with pytest.raises(LoadBalancerError) as raised:
        harness.check(lambda: Misbehaving("raises"), traffic=strategies.traffic(SPEC, max_steps=3))
    assert len(raised.value.trace) >= 1


def test_a_search_leaves_hypothesis_no_warning_about_a_long_trace(recwarn):
    """Hypothesis writes a failing example's repr for a report the harness replaces with its own; a trace of
    hundreds of packets made it warn that the repr is large."""
    long = Trace(tuple(syn(k / 1000, 1024 + k, k + 1) for k in range(120)))  # a repr of 37 kB
    harness = Harness(SPEC, search=SearchSettings(examples=5, seed=1))
    with pytest.raises(Failure):
        harness.check(lambda: Misbehaving("drops"), traffic=st.just(long))
    assert [str(w.message) for w in recwarn if issubclass(w.category, HypothesisWarning)] == []


class PingPong:
    """Sends every packet it gets, the backend's answers too, to dns1: the two answer each other for ever."""

    def handle(self, packet: bytes, time: float) -> list[bytes]:
        return [replace(decode(packet), dst=ip_address("10.2.1.1")).encode()]


def test_an_lb_and_a_backend_answering_each_other_stop_when_the_capture_ends():
    query = Send(0.0, Segment("udp", ip_address("10.0.0.7"), VIP, 40000, 53, payload=b"q"), 1)
    recording = InProcess(PingPong()).run(SPEC, Trace((query,)))
    assert len(recording.on("backend")) > 100  # it did bounce
    assert max(p.time for p in recording.packets) < 10.0  # simulated seconds: the bouncing was cut off

# ---------------------------------------------------------------- judging --

def test_the_correct_lb_passes_a_failover_and_back():
    trace = Trace((syn(0.0), data(0.001, 0), *(Fault(0.002, b, False) for b in ("web1", "web2", "web3")),
                   data(3.0, 1), syn(3.1, 40001, 2), Fault(4.0, "web1", True), data(7.0, 2), data(7.1, 0, 40001, 2)))
    judgement = Harness(SPEC).run(lambda: pylb.MaglevLB(SERVICE), trace)
    assert judgement.codes == []
    assert judgement.report.summary["paired"] >= 6


def test_properties_narrow_what_counts():
    trace = Trace((syn(0.0, src=ip_address("2001:db8:c1::7"), dst=VIP6),))
    def lb():
        return pylb.VARIANTS["ipv6-replies"](SERVICE)

    assert Harness(SPEC).run(lb, trace).codes == ["LB207"]
    assert Harness(SPEC, properties=["no_drop"]).run(lb, trace).codes == []


def port_landing_on(backend: str) -> int:
    """A client port whose flow the (deterministic) Maglev table sends to ``backend``."""
    address = SERVICE.backend(backend).address
    for sport in range(40000, 40200):
        out = decode(pylb.MaglevLB(SERVICE).handle(syn(0.0, sport).segment.encode(), 0.0)[0])
        if out.dst == address:
            return sport
    raise AssertionError(f"no port in 40000-40199 lands on {backend}")


def test_verify_writes_captures_that_reproduce_the_verdict(tmp_path):
    port = port_landing_on("web1")
    trace = Trace((syn(0.0, port), Fault(0.001, "web1", False), data(3.0, 0, port)))
    harness = Harness(SPEC, path=SPEC_PATH, artifacts=tmp_path)
    with pytest.raises(Failure) as caught:
        harness.verify(lambda: pylb.VARIANTS["stale-flows"](SERVICE), trace)
    failure = caught.value
    assert failure.codes == ["LB202"] and failure.reproduced
    assert {p.name for p in tmp_path.iterdir()} == {"client.pcap", "backend.pcap", "events.jsonl", "trace.txt",
                                                    "verdict.json"}
    assert len(rdpcap(str(failure.artifacts.client))) == 5  # two markers, the SYN, its SYN-ACK, the data
    events = [json.loads(line) for line in failure.artifacts.events.read_text().splitlines()]
    assert [(e["backend"], e["state"]) for e in events] == [("web1", "down")]
    assert json.loads((tmp_path / "verdict.json").read_text())["replay"]["codes"] == ["LB202"]
    assert Harness(SPEC).verify(lambda: pylb.MaglevLB(SERVICE), trace).codes == []


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.traffic(SPEC, max_steps=10))
def test_in_memory_verdicts_are_those_of_lbspec_monitor_on_the_captures(tmp_path_factory, trace):
    recording = InProcess(lambda: pylb.VARIANTS["no-tracking"](SERVICE)).run(SPEC, trace)
    in_memory = judge(SPEC, recording)
    artifacts = write_recording(tmp_path_factory.mktemp("replay"), SPEC_PATH, recording)
    code, codes, _errors = replay(artifacts)
    assert sorted(set(codes)) == sorted({v.code for v in in_memory.report.violations})
    assert code == (1 if in_memory.report.violations else 0)


# --------------------------------------------------------------- reduction --

def test_reduction_drops_whole_flows_and_keeps_each_flow_opened():
    events = (syn(0.0, 1, 1), syn(0.0, 2, 2), data(0.1, 0, 2, 2), syn(0.2, 3, 3), Fault(0.3, "web1", False),
              data(0.4, 0, 1, 1), data(0.5, 1, 1, 1))
    wanted = events[0], events[6]  # pretend the bug needs flow 1's SYN and its second data segment

    def fails(trace: Trace) -> bool:
        return all(e in trace.events for e in wanted)

    reduced = reduce_trace(Trace(events), fails)
    assert reduced.events == wanted


def test_reduction_never_leaves_a_tcp_flow_without_its_syn():
    events = (syn(0.0), data(0.1, 0))
    reduced = reduce_trace(Trace(events), lambda t: any(e.segment.payload for e in t.sends))
    assert reduced.events == events


# ------------------------------------------------------------ other modes --

LB_ADDRESS = ip_address("10.255.0.1")
SNAT = """
service snat {
    vip 192.0.2.90
    listen tcp 80, udp 53
    mode snat
    pool app {
        backend a1 10.3.0.1
        backend a2 10.3.0.2
    }
    forward any 80, 53 to app
    balance hash(src, sport)
}
"""


class Stateless:
    """A small LB for nat-less modes: hash(src, sport) over the rule's primaries, no health checks."""

    def __init__(self, service):
        self.service, self.vips, self.ports = service, set(service.vips), {}

    def handle(self, packet: bytes, time: float) -> list[bytes]:
        segment = decode(packet)
        if segment.dst not in self.vips:
            return self.reply(segment)
        rule = next(r for r in self.service.rules if r.matches(segment.packet))
        backends = [b for b in self.service.pool(rule.pool).primaries if b.family == segment.family]
        backend = backends[(int(segment.src) + segment.sport) % len(backends)]
        return [self.send(segment, backend).encode()]

    def send(self, segment: Segment, backend) -> Segment:
        if self.service.mode.kind == "tunnel":
            return Segment(**{**{f: getattr(segment, f) for f in segment.__slots__},
                              "outer": Outer("ipip", LB_ADDRESS, backend.address)})
        port = 20000 + len(self.ports)
        self.ports[(segment.proto, port)] = (segment.src, segment.sport, segment.dst, segment.dport)
        return Segment(segment.proto, LB_ADDRESS, backend.address, port, segment.dport, segment.flags, segment.seq,
                       segment.ack, segment.payload, segment.ttl - 1)

    def reply(self, segment: Segment) -> list[bytes]:
        client, cport, vip, vport = self.ports[(segment.proto, segment.dport)]
        return [Segment(segment.proto, vip, client, vport, cport, segment.flags, segment.seq, segment.ack,
                        segment.payload, segment.ttl - 1).encode()]


@pytest.mark.parametrize("text, name", [((EXAMPLES / "tunnel.lbspec").read_text(), "metrics"), (SNAT, "snat")])
def test_tunnel_and_snat_balancers_are_driven_and_judged_clean(text, name):
    spec = lbspec.loads(text, f"{name}.lbspec", base=EXAMPLES)
    harness = Harness(spec, services=[name], search=SearchSettings(examples=15, seed=2))
    harness.check(lambda: Stateless(spec.service(name)),
                  traffic=strategies.traffic(spec, service=name, faults=False, max_steps=8))
    trace = Trace((Send(0.0, Segment("tcp", CLIENT, spec.service(name).vips[0], 40000,
                                     2003 if name == "metrics" else 80, frozenset({"syn"}), seq=7)),))
    recording = InProcess(lambda: Stateless(spec.service(name))).run(spec, trace, (name,))
    answer = next(decode(p.data) for p in recording.on("client") if decode(p.data).dst == CLIENT)
    assert answer.src == spec.service(name).vips[0] and answer.flags == {"syn", "ack"}  # from the VIP, either way
    through_lb = [p for p in recording.on("backend") if decode(p.data).flags == {"syn", "ack"}]
    assert bool(through_lb) == (name == "snat")  # tunnel backends answer the client directly


def test_a_server_in_two_pools_fails_for_the_port_whose_backend_failed():
    """10.3.0.1 is a1 on port 80 and d1 on port 53: d1 failing leaves a1 answering (the driver once knew
    a server by its address alone, the last declared, and a1 went silent with it)."""
    text = SNAT.replace("backend a2 10.3.0.2\n    }", "}\n    pool dns {\n        backend d1 10.3.0.1:53\n    }")
    text = text.replace("backend a1 10.3.0.1", "backend a1 10.3.0.1:80").replace(
        "forward any 80, 53 to app", "forward tcp 80 to app\n    forward udp 53 to dns")
    spec = lbspec.loads(text, "shared.lbspec")
    vip = spec.service("snat").vips[0]
    trace = Trace((Fault(0.0, "d1", False, "snat"),
                   Send(0.001, Segment("tcp", CLIENT, vip, 40000, 80, frozenset({"syn"}), seq=7)),
                   Send(0.002, Segment("udp", CLIENT, vip, 40001, 53, payload=b"query"))))
    recording = InProcess(lambda: Stateless(spec.service("snat"))).run(spec, trace, ("snat",))
    answers = [decode(p.data) for p in recording.on("client") if decode(p.data).dst == CLIENT]
    assert [a.proto for a in answers] == ["tcp"]  # the web server answered; the DNS one, down, did not


class Recorder:
    """A driver (as a network driver would be): plays each trace in process against a fresh ``variant`` of
    the balancer, and keeps the traces it played."""

    def __init__(self, played: list[Trace], variant: str | None = None):
        self.played, self.variant = played, variant

    def run(self, spec, trace, services=None):
        self.played.append(trace)
        lb = pylb.VARIANTS[self.variant](SERVICE) if self.variant else pylb.MaglevLB(SERVICE)
        return InProcess(lb).run(spec, trace, services)


def test_a_factory_may_make_drivers_as_well_as_load_balancers():
    made = []
    harness = Harness(SPEC, search=SearchSettings(examples=5, seed=1))
    search = harness.check(lambda: Recorder(made), traffic=strategies.traffic(SPEC, max_steps=3))
    assert len(made) == search.runs == 5
    assert harness.run(Recorder(made), Trace((syn(0.0),))).codes == []


# --------------------------------------------------------------- searches --

def test_shrinking_stops_at_its_budget_with_a_failure_that_replays(tmp_path):
    played = []
    harness = Harness(SPEC, path=SPEC_PATH, artifacts=tmp_path, search=SearchSettings(seed=1, shrink_budget=3))
    with pytest.raises(Failure) as caught:
        harness.check(lambda: Recorder(played, "stale-flows"))
    failure, search = caught.value, caught.value.search
    assert failure.codes[0] == "LB202" and failure.reproduced
    assert search.shrink_stopped and len(search.played) == search.played_to_failure + 3
    searched = played[:len(search.played)]  # then the trace reduction plays its own
    assert len(set(searched)) == len(searched) < search.runs  # a trace met again is not played again
    assert json.loads((tmp_path / "verdict.json").read_text())["search"]["shrink_stopped"]


def _captured(path) -> set[tuple[float, bytes]]:
    """(seconds from the start of the trace, IP packet) of every packet in a raw-IP pcap the harness wrote."""
    data, found, offset = path.read_bytes(), set(), 24
    while offset < len(data):
        seconds, micros, length, _ = struct.unpack_from("<IIII", data, offset)
        found.add((round(seconds - EPOCH + micros / 1e6, 6), data[offset + 16:offset + 16 + length]))
        offset += 16 + length
    return found


def test_the_minimal_trace_numbers_its_flows_from_1_and_starts_at_0_as_its_captures_show(tmp_path):
    harness = Harness(SPEC, path=SPEC_PATH, artifacts=tmp_path, search=SearchSettings(seed=1))
    with pytest.raises(Failure) as caught:
        harness.check(lambda: pylb.VARIANTS["table-full"](SERVICE))
    failure = caught.value
    trace = failure.trace
    assert failure.codes[0] == "LB200" and failure.reproduced
    assert trace.events[0].time == 0.0
    assert list(dict.fromkeys(e.flow for e in trace.sends)) == list(range(1, trace.flows + 1))
    assert {(e.time, e.segment.encode()) for e in trace.sends} <= _captured(failure.artifacts.client)
