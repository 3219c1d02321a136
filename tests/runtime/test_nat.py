"""NAT: every verdict the monitor gives, each beside a near miss it must not give."""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .scenario import LB_MAC, Scenario, backend_mac, codes, spec

SPEC = spec()


def test_clean_traffic_has_no_verdict(nat):
    for k in range(6):
        nat.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05)
    report = nat.judge(SPEC)
    assert codes(report) == []
    assert report.exit_code == 0
    assert report.summary["paired"] == report.summary["listened_ingress"] == 24


def test_a_dropped_packet_is_LB200(nat):
    nat.flow("10.1.0.11", drop={2})
    report = nat.judge(SPEC)
    assert codes(report) == ["LB200"]
    verdict = report.violations[0]
    assert verdict.data["forwarded"] is False and verdict.data["property"] == "no_drop"
    assert verdict.span.file == "<library>/no_drop.lbspec"
    assert [p.frame for p in verdict.witness.involved()] == [5]  # SYN, answer, data0, answer, data1


def test_no_drop_is_excused_while_every_backend_is_down(nat):
    nat.flow("10.1.0.11", 5.0, drop={0, 1, 2, 3})
    report = nat.judge(SPEC, events=[(0.0, "b1", False), (0.0, "b2", False)])
    assert codes(report) == []


def test_a_drop_with_one_backend_still_up_is_not_excused(nat):
    nat.flow("10.1.0.11", 5.0, drop={1})
    report = nat.judge(SPEC, events=[(0.0, "b1", False)])
    assert "LB200" in codes(report)


def test_forwarded_after_the_deadline_is_LB200(nat):
    nat.flow("10.1.0.11", late={1: 0.08})
    report = nat.judge(SPEC)
    assert codes(report) == ["LB200"]
    assert report.violations[0].data["forwarded"] is True
    assert report.violations[0].data["latency_ms"] > 50


@pytest.mark.parametrize("late", [0.3, 0.9])
def test_forwarded_long_after_the_deadline_is_one_LB200_not_a_drop_and_an_LB208(late):
    """Later than the pairing window (0.1s here): at 0.3s the window still shows the forward when the packet
    is judged; at 0.9s, with other traffic moving time on, the packet waits as a drop for health evidence when
    its forward comes.  Either way it is one late forward, not a drop, a capture gap or an invented packet."""
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", late={3: late})  # the last data segment: no later one acknowledges it first
    for k in range(30):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], 0.05 * k, cport=41000 + k, segments=1)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"]
    found = report.violations[0]
    assert found.data["forwarded"] is True and found.data["backend"] == "b1"
    assert found.data["latency_ms"] == pytest.approx(late * 1e3, abs=1)
    assert found.data["flow"] == "TCP 203.0.113.7:40000 -> 192.0.2.10:80"
    assert [(p.side, p.role) for p in found.witness.involved()] == [("client", "ingress"), ("backend", "egress")]


def test_a_forward_later_than_the_drop_is_judged_is_LB200_and_LB208():
    """Past the wait for health evidence (about a second) the drop is reported; the forward that comes after
    it is then egress nothing explains."""
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", late={3: 3.0})
    for k in range(80):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], 0.05 * k, cport=41000 + k, segments=1)
    report = scenario.judge(SPEC)
    assert sorted(codes(report)) == ["LB200", "LB208"]
    assert next(v for v in report.violations if v.code == "LB200").data["forwarded"] is False


def test_forwarded_within_a_tightened_deadline(nat):
    nat.flow("10.1.0.11", late={1: 0.008})
    assert codes(nat.judge(SPEC)) == []
    assert codes(nat.judge(spec("require no_drop within 5ms"))) == ["LB200"]


def test_a_flow_moved_to_another_backend_is_LB201(nat):
    nat.flow(["10.1.0.11", "10.1.0.11", "10.1.0.12", "10.1.0.12"])
    report = nat.judge(SPEC)
    assert codes(report) == ["LB201"]
    assert report.violations[0].data["previous_backend"] == "b1"
    assert report.violations[0].data["backend"] == "b2"


def test_a_flow_moved_after_its_backend_died_is_not_LB201(nat):
    nat.flow(["10.1.0.11", "10.1.0.11", "10.1.0.12", "10.1.0.12"])
    assert codes(nat.judge(SPEC, events=[(0.015, "b1", False)])) == []


def test_affinity_is_judged_only_for_tcp(nat):
    nat.flow(["10.1.0.11", "10.1.0.12", "10.1.0.11"], proto="udp", vport=53, bport=53)
    text = spec(listen="tcp 80, udp 53", rule="forward tcp 80 to app port 8080\n    forward udp 53 to app")
    assert codes(nat.judge(text)) == []


def test_new_flows_to_a_backend_down_past_detection_are_LB202(nat):
    for k in range(8):
        nat.flow("10.1.0.12", 1.0 + k * 0.5, reply=False)  # a dead backend answers nothing
    report = nat.judge(SPEC, events=[(1.0, "b2", False)])
    # detection: fall 2 x every 1s + timeout 0.5s = 2.5s after 1.0s
    late = [d for d in report.violations if d.code == "LB202"]
    assert late and all(d.data["time"] - 1_700_000_001.0 >= 2.5 for d in late)
    assert len(late) == 3  # the flows at 3.5s, 4s and 4.5s


def test_without_health_checks_a_dead_backend_gets_no_grace(nat):
    nat.flow("10.1.0.12", 1.5, reply=False)
    text = spec(health="health none")
    late = [d for d in nat.judge(text, events=[(1.0, "b2", False)]).violations if d.code == "LB202"]
    assert late and late[0].data["detection_s"] == 0.0
    assert "LB202" not in codes(nat.judge(SPEC, events=[(1.0, "b2", False)]))  # within 2.5 s of detection


def test_down_backend_inferred_from_its_rst(nat):
    for k in range(5):
        nat.flow("10.1.0.12", k * 1.0, segments=0, answer="rst")
    report = nat.judge(SPEC)
    assert "LB202" in codes(report)
    assert report.summary["health"][0]["evidence"] == "rst"


def _refused_by_icmp(nat, start: float, sender: str, about: str) -> None:
    """A SYN to b2, and an ICMP port unreachable from ``sender`` quoting that SYN as sent to ``about``."""
    sent = nat.flow("10.1.0.12", start, segments=0, reply=False)
    quoted = IP(src="203.0.113.7", dst=about) / TCP(sport=sent["cport"], dport=8080, flags="S", seq=sent["seq"])
    nat.add(start + 0.001, "backend", IP(src=sender, dst="203.0.113.7") / ICMP(type=3, code=3) / raw(quoted)[:28])


def test_down_backend_inferred_from_icmp_unreachable(nat):
    for k in range(5):
        _refused_by_icmp(nat, k * 1.0, sender="10.1.0.12", about="10.1.0.12")
    report = nat.judge(SPEC)
    assert "LB202" in codes(report)
    assert {"backend": "b2", "state": "down", "evidence": "icmp"}.items() <= report.summary["health"][-1].items()


def test_an_icmp_unreachable_about_another_host_is_no_evidence(nat):
    """A router's unreachable about an address that is no backend says nothing about b2 (whose SYNs go
    unanswered here, so b2 is found down only later, by silence)."""
    for k in range(5):
        _refused_by_icmp(nat, k * 1.0, sender="10.1.0.1", about="10.1.0.99")
    report = nat.judge(SPEC)
    assert [h["evidence"] for h in report.summary["health"]] == ["silence"]


def test_down_backend_inferred_from_unanswered_syns(nat):
    nat.flow("10.1.0.12", 0.0, segments=0, reply=False)
    for k in range(4):
        nat.flow("10.1.0.12", 2.0 + k, reply=False)
    report = nat.judge(SPEC)
    assert "LB202" in codes(report)
    assert report.summary["health"][0]["evidence"] == "silence"



def test_syns_whose_answers_the_capture_missed_are_no_silence(nat):
    """A backend-side capture of one direction (what the LB sent, not what came back): the connections the
    LB went on acknowledging were answered, so their SYNs say nothing about the backends' health."""
    for k in range(5):
        nat.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 1.0)
    nat.packets = [s for s in nat.packets if not (s.side == "backend" and s.packet[IP].src.startswith("10.1.0."))]
    report = nat.judge(SPEC)
    assert report.summary["health"] == [] and "LB202" not in codes(report)

def test_an_undeclared_address_is_LB203(nat):
    nat.flow("10.1.0.99")
    report = nat.judge(SPEC)
    assert codes(report) == ["LB203"]
    assert report.violations[0].data["reason"] == "address"


def test_a_wrong_backend_port_is_LB203(nat):
    nat.flow("10.1.0.11", bport=9090)
    report = nat.judge(SPEC)
    assert codes(report) == ["LB203"]
    assert report.violations[0].data["expected_port"] == 8080


def test_the_backend_port_follows_backend_then_rule_then_packet(nat):
    nat.flow("10.1.0.11", bport=8443)
    text = spec(backends="backend b1 10.1.0.11:8443\n        backend b2 10.1.0.12", rule="forward tcp 80 to app")
    assert codes(nat.judge(text)) == []
    other = Scenario("nat")
    other.flow("10.1.0.12", bport=80)
    assert codes(other.judge(text)) == []


def _payload_changed(i, frame):
    if i == 2:
        frame[Raw].load = b"DATA1"
        del frame[TCP].chksum
    return frame


def test_a_changed_payload_is_LB204(nat):
    nat.flow("10.1.0.11", change=_payload_changed)
    report = nat.judge(SPEC)
    assert codes(report) == ["LB204"]
    assert report.violations[0].data["fields"] == ["payload"]


def _source_port_changed(i, frame):
    frame[UDP].sport = 41999
    return frame


def test_stateless_rewriting_of_a_udp_flow_is_LB204_not_a_drop(nat):
    nat.flow("10.1.0.11", proto="udp", vport=53, bport=53, segments=4, change=_source_port_changed)
    text = spec(listen="udp 53", rule="forward udp 53 to app")
    report = nat.judge(text)
    assert codes(report) == ["LB204"]
    assert report.violations[0].data["fields"] == ["sport"]
    assert report.violations[0].data["count"] == 4


def _ttl_down(i, frame):
    frame.ttl = 62
    return frame


def test_one_routing_hop_of_ttl_is_not_a_mutation_but_two_are(nat):
    nat.flow("10.1.0.11")
    assert codes(nat.judge(SPEC)) == []
    other = Scenario("nat")
    other.flow("10.1.0.11", change=_ttl_down)
    assert codes(other.judge(SPEC)) == ["LB204"]


def test_a_packet_sent_twice_is_LB205(nat):
    nat.flow("10.1.0.11", twice={2})
    report = nat.judge(SPEC)
    assert codes(report) == ["LB205"]


def test_a_client_retransmission_forwarded_twice_is_not_a_duplicate(nat):
    sent = nat.flow("10.1.0.11", segments=1)
    nat.flow("10.1.0.11", 0.3, cport=sent["cport"], handshake=False, segments=1)
    nat.packets = [p for p in nat.packets]
    seq = [p for p in nat.packets if p.side == "client" and p.packet.haslayer(Raw)]
    assert len(seq) == 2
    second = [p for p in nat.packets if TCP in p.packet and p.packet[TCP].sport == sent["cport"]]
    for item in second:  # make the second exchange an exact retransmission of the first segment
        if item.packet.haslayer(Raw):
            item.packet[TCP].seq = sent["seq"] + 1
    assert codes(nat.judge(SPEC)) == []


def test_balance_far_from_the_weights_is_LB206_with_p_values(nat):
    for k in range(120):
        nat.flow("10.1.0.11" if k % 10 else "10.1.0.12", k * 0.01, segments=1, reply=False)
    report = nat.judge(SPEC, answer_timeout=1000)
    imbalance = [d for d in report.violations if d.code == "LB206"]
    assert len(imbalance) == 1
    data = imbalance[0].data
    assert data["p_value_flows"] < 1e-6 and data["p_value_bytes"] is not None
    assert data["backends"]["b1"]["share"] > 0.85


def test_balance_near_the_weights_is_not_LB206(nat):
    for k in range(120):
        nat.flow("10.1.0.12" if k % 4 == 0 else "10.1.0.11", k * 0.01, segments=1, reply=False)
    text = spec(backends="backend b1 10.1.0.11 weight 3\n        backend b2 10.1.0.12 weight 1")
    assert "LB206" not in codes(nat.judge(text, answer_timeout=1000))


def test_too_few_flows_say_nothing_about_balance(nat):
    for k in range(6):
        nat.flow("10.1.0.11", k * 0.05)
    assert codes(nat.judge(SPEC)) == []


def test_a_reply_from_a_backend_address_is_LB207(nat):
    nat.flow("10.1.0.11", reply_from="10.1.0.11")
    report = nat.judge(SPEC)
    assert codes(report) == ["LB207"]
    assert report.violations[0].data["backend"] == "b1"


def test_egress_nothing_explains_is_LB208(nat):
    nat.flow("10.1.0.11")
    stray = Scenario("nat")
    stray.flow("10.1.0.12", 0.5, cport=41000)  # a client the LB serves, but not this packet
    nat.packets += [p for p in stray.packets if p.side == "backend" and p.packet.dst == "02:00:00:00:01:0c"]
    assert codes(nat.judge(SPEC)) == ["LB208"]


def test_health_probes_of_the_lb_are_not_LB208(nat):
    nat.flow("10.1.0.11")
    probe = Scenario("nat")
    probe.flow("10.1.0.12", 0.5, client="10.1.0.1", segments=0)
    nat.packets += [p for p in probe.packets if p.side == "backend"]
    assert codes(nat.judge(SPEC)) == []
    assert codes(nat.judge(spec(health=""))) == ["LB208"]


def test_bytes_the_backend_acknowledged_are_a_capture_gap_not_a_drop(nat):
    nat.flow("10.1.0.11", drop={2})
    client_acks = [p for p in nat.packets if p.side == "backend" and p.packet[TCP].sport == 8080]
    client_acks[-1].packet[TCP].ack += 100  # the backend acknowledges past the missing segment
    report = nat.judge(SPEC)
    assert codes(report) == ["LB209"]


@pytest.mark.parametrize(("acked_at", "expected"), [(0.0265, ["LB200"]), (0.022, ["LB209"])])
def test_a_segment_whose_retransmission_got_through_was_lost_in_the_lb(nat, acked_at, expected):
    """The LB loses a segment; the client sends it again 5 ms later (a tail loss probe), and that one gets
    through; the backend acknowledges the bytes.  Acknowledged after the retransmission reached it, they are the
    retransmission's: LB200.  Acknowledged before it (a needless retransmission), the first copy did arrive and
    the capture missed it: a gap."""
    flow = nat.flow("10.1.0.11", drop={2})
    (lost,) = [p.packet for p in nat.packets if p.side == "client" and TCP in p.packet
               and p.packet[TCP].seq == flow["seq"] + 6]
    nat.add(0.025, "client", lost.copy())
    nat.add(0.0255, "backend", nat._retarget(nat.egress(lost.copy(), "10.1.0.11", "203.0.113.7", flow["cport"], 0),
                                             8080))
    ack = IP(src="10.1.0.11", dst="203.0.113.7") / TCP(sport=8080, dport=flow["cport"], flags="A", seq=777,
                                                        ack=flow["seq"] + 16)
    nat.add(acked_at, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC) / ack)
    report = nat.judge(SPEC)
    assert codes(report) == expected


def _sent_on(scenario: Scenario, time: float, cport: int, flags: str, seq: int, ack: int = 0) -> None:
    """A segment from the client on its flow (port ``cport``), and the LB passing it on to b1 0.5 ms later."""
    packet = IP(src="203.0.113.7", dst=scenario.vip, ttl=64) / TCP(sport=cport, dport=80, flags=flags, seq=seq, ack=ack)
    scenario.add(time, "client", packet)
    scenario.add(time + 0.0005, "backend", scenario._retarget(scenario.egress(packet.copy(), "10.1.0.11", "203.0.113.7",
                                                                              cport, 0), 8080))


@pytest.mark.parametrize("missed", ["S", "PA", "FA"])
def test_what_the_client_side_capture_missed_of_a_flow_the_client_went_on_with_is_a_gap(nat, missed):
    """The client-side capture misses a segment the LB sent on -- its SYN, a data segment, its FIN: the client's
    later segments start past it (a SYN or FIN: exactly at the sequence number after it), so the client sent
    it.  A gap, not a packet from nowhere."""
    nat.flow("10.1.0.12", segments=1)  # the captures' start: nothing at their edge
    flow = nat.flow("10.1.0.11", 0.2, segments=2)
    _sent_on(nat, 0.25, flow["cport"], "FA", flow["seq"] + 11, 778)
    _sent_on(nat, 0.26, flow["cport"], "A", flow["seq"] + 12, 779)
    assert codes(nat.judge(SPEC)) == []
    first = next(p for p in nat.packets if p.side == "client" and TCP in p.packet
                 and p.packet[TCP].sport == flow["cport"] and p.packet[TCP].flags == missed)
    nat.packets.remove(first)
    assert codes(nat.judge(SPEC)) == ["LB209"]


def test_a_syn_the_client_never_went_on_from_is_LB208(nat):
    """The near miss: the LB sends a SYN on a client's flow whose sequence number the client never continues
    from."""
    nat.flow("10.1.0.12", segments=1)
    flow = nat.flow("10.1.0.11", 0.2, segments=2)
    _sent_on(nat, 0.3, flow["cport"], "S", 12345)
    nat.packets.pop(-2)  # the client sent no such SYN: only the LB's copy is there
    assert "LB208" in codes(nat.judge(SPEC))


def test_assert_only_names_the_backends_traffic_may_reach(nat):
    nat.flow("10.1.0.11", vport=9000, bport=9000)
    text = spec(listen="tcp 80, 9000", rule="forward tcp 80 to app port 8080\n    forward tcp 9000 to app",
                body="assert to tcp 9000 only b2")
    report = nat.judge(text)
    assert codes(report) == ["LB213"]
    assert report.violations[0].data["property"].startswith("assert@")
    other = Scenario("nat")
    other.flow("10.1.0.12", vport=9000, bport=9000)
    assert codes(other.judge(text)) == []


def test_traffic_to_a_pool_the_rule_does_not_use_is_LB203(nat):
    nat.flow("10.1.9.1", vport=80)
    text = spec(body="pool admin {\n        backend ops 10.1.9.1\n    }")
    report = nat.judge(text)
    assert codes(report) == ["LB203"]
    assert report.violations[0].data["reason"] == "not-for-this-traffic"


SHARED_SERVER = spec(backends="backend b1 10.1.0.11:8080\n        backend b2 10.1.0.12:8080", listen="tcp 80, udp 53",
                     rule="forward tcp 80 to app\n    forward udp 53 to dns",
                     body="pool dns {\n        backend d1 10.1.0.11:5353\n    }")


def test_one_server_in_two_pools_is_told_apart_by_port(nat):
    """10.1.0.11 is b1 on port 8080 and d1 on 5353: DNS to it went where its rule says (found by address
    alone, it was b1's, and LB203) -- and a port unreachable quoting a datagram to 5353 says d1 is down,
    not b1."""
    nat.flow("10.1.0.11")
    sent = nat.flow("10.1.0.11", 0.1, proto="udp", vport=53, bport=5353, segments=1, reply=False)
    quoted = IP(src="203.0.113.7", dst="10.1.0.11") / UDP(sport=sent["cport"], dport=5353) / Raw(b"data")
    nat.add(0.102, "backend", IP(src="10.1.0.11", dst="203.0.113.7") / ICMP(type=3, code=3) / raw(quoted)[:28])
    report = nat.judge(SHARED_SERVER)
    assert codes(report) == []
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"b1": 1, "b2": 0, "d1": 1}
    assert [(e["backend"], e["state"]) for e in report.summary["health"] if e["evidence"] == "icmp"] == [("d1", "down")]
    wrong = Scenario("nat")
    wrong.flow("10.1.0.11", proto="udp", vport=53, bport=8080, segments=1)  # DNS sent to the web port
    assert codes(wrong.judge(SHARED_SERVER)) == ["LB203"]


TWO_SERVICES = spec(backends="backend a1 10.1.0.11:8080") + spec(vip="192.0.2.20", backends="backend b1 10.1.0.11:8080"
                                                              ).replace("service web", "service other")


def test_one_server_behind_two_services_is_each_one_s_backend():
    """10.1.0.11:8080 is a1 of one service and b1 of another: traffic to the second VIP that reaches it went
    to b1 (found as a1, the first declared, it was LB203), and what it shows of the server's health is b1's
    too."""
    other = Scenario("nat", vip="192.0.2.20")
    other.flow("10.1.0.11")
    report = other.judge(TWO_SERVICES)
    assert codes(report) == []
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"a1": 0, "b1": 1}
    assert {e["backend"] for e in report.summary["health"]} == {"a1", "b1"}
    stray = Scenario("nat", vip="192.0.2.20")
    stray.flow("10.1.0.12")
    assert codes(stray.judge(TWO_SERVICES)) == ["LB203"]


def test_a_waived_property_gives_no_verdict(nat):
    nat.flow("10.1.0.11", drop={2})
    assert codes(nat.judge(spec('waive no_drop "best effort"'))) == []
    assert codes(nat.judge(spec('waive no_drop for dport 80 "best effort"'))) == []
    assert codes(nat.judge(spec('waive no_drop for dport 443 "best effort"'))) == ["LB200"]


def test_udp_to_the_gue_port_is_no_tunnel_without_a_gue_service(nat):
    """Port 6080 is only GUE's default: a NAT service on it is judged like any other (and its near miss,
    the same traffic forwarded, is clean)."""
    text = spec(listen="udp 6080", rule="forward udp 6080 to app")
    nat.flow("10.1.0.11", 0.0, proto="udp", vport=6080, bport=6080, drop={1})
    nat.flow("10.1.0.12", 0.1, proto="udp", vport=6080, bport=6080)
    report = nat.judge(text)
    assert codes(report) == ["LB200"]
    assert report.summary["undecodable"] == 0


def test_traffic_to_no_backend_at_the_start_of_a_capture_is_not_left_unjudged(nat):
    """A bridge's multicast report before any client packet is no packet of a client's: nothing there was
    the capture's to show, so it is not counted among the packets left unjudged at the edges."""
    nat.add(0.0, "backend", Ether(src=LB_MAC, dst="01:00:5e:00:00:16")
            / IP(src="10.1.0.1", dst="224.0.0.22", ttl=1, proto=2) / Raw(b"\x22\x00\xfa\x01\x00\x00\x00\x00"))
    nat.flow("10.1.0.11", 0.01)
    report = nat.judge(SPEC)
    assert codes(report) == []
    assert report.summary["unjudged_at_edges"] == 0
