"""Replies through a nat LB: each one a backend sends back that carries something must reach the client
(LB215, property reverse_path), each beside near misses that must not be flagged."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .scenario import CLIENT_MAC, LB_ADDRESS, LB_MAC, START, Scenario, backend_mac, codes, ip, spec

SPEC = spec()
UDP_SPEC = spec(listen="udp 53", rule="forward udp 53 to app port 53")
CLIENT = "203.0.113.7"


def _lost(scenario: Scenario, test) -> None:
    """The LB drops the replies ``test`` picks: their client-side copies are not there."""
    scenario.packets = [s for s in scenario.packets if not (s.side == "client" and test(s.packet))]


def _reply(scenario: Scenario, cport: int, time: float, seq: int, data: bytes, relayed: bool) -> None:
    """The backend (b1) sends ``data`` back on the client's flow; the LB relays it (or not) 0.2 ms later."""
    scenario.add(time, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC) / ip("10.1.0.11", CLIENT)
                 / TCP(sport=8080, dport=cport, flags="PA", seq=seq, ack=1) / Raw(data))
    if relayed:
        scenario.add(time + 0.0002, "client", Ether(src=LB_MAC, dst=CLIENT_MAC) / ip(scenario.vip, CLIENT)
                     / TCP(sport=80, dport=cport, flags="PA", seq=seq, ack=1) / Raw(data))


def _client(scenario: Scenario, cport: int, time: float, flags: str, ack: int) -> None:
    """A client packet on its flow (an acknowledgement, a reset), and the LB passing it on to b1."""
    packet = ip(CLIENT, scenario.vip, ttl=64) / TCP(sport=cport, dport=80, flags=flags, seq=9, ack=ack)
    scenario.add(time, "client", packet)
    scenario.add(time + 0.0005, "backend", scenario._retarget(scenario.egress(packet.copy(), "10.1.0.11", CLIENT,
                                                                                cport, 0), 8080))


def test_a_udp_answer_the_lb_never_relays_is_LB215(nat):
    nat.flow("10.1.0.11", proto="udp", vport=53, bport=53, segments=3)
    assert codes(nat.judge(UDP_SPEC)) == []
    _lost(nat, lambda p: UDP in p and p[UDP].sport == 53 and bytes(p[UDP].payload) == b"answer1")
    report = nat.judge(UDP_SPEC)
    assert codes(report) == ["LB215"]
    facts = report.violations[0].data
    assert facts["property"] == "reverse_path" and facts["backend"] == "b1" and facts["bytes"] == 7


def test_a_syn_ack_the_lb_never_relays_is_LB215_unless_the_client_acknowledged_it(nat):
    flow = nat.flow("10.1.0.11", segments=1)
    _lost(nat, lambda p: TCP in p and p[TCP].flags == "SA")
    assert codes(nat.judge(SPEC)) == ["LB215"]
    _client(nat, flow["cport"], 0.05, "A", 778)  # the SYN-ACK's sequence number is 777: the client got it
    assert codes(nat.judge(SPEC)) == []


def test_bytes_a_backend_sends_back_must_reach_the_client(nat):
    cport = nat.flow("10.1.0.11", segments=1)["cport"]
    _reply(nat, cport, 0.02, 778, b"x" * 100, relayed=True)
    assert codes(nat.judge(SPEC)) == []
    dropped = Scenario("nat")
    cport = dropped.flow("10.1.0.11", segments=1)["cport"]
    _reply(dropped, cport, 0.02, 778, b"x" * 100, relayed=False)
    report = dropped.judge(SPEC)
    assert codes(report) == ["LB215"] and report.violations[0].data["bytes"] == 100


@pytest.mark.parametrize("case", ["acknowledged at once", "acknowledged late", "reset first",
                                  "relayed in one segment", "relayed late", "no client's flow"])
def test_replies_the_client_got_or_had_no_use_for_are_no_LB215(case):
    scenario = Scenario("nat")
    cport = scenario.flow("10.1.0.11", segments=1)["cport"]
    _reply(scenario, cport, 0.02, 778, b"x" * 100, relayed=False)
    _reply(scenario, cport, 0.0201, 878, b"y" * 100, relayed=False)
    if case == "acknowledged at once":  # the client-side capture missed the copies
        _client(scenario, cport, 0.03, "A", 978)
    elif case == "acknowledged late":  # a client that delays its acknowledgement, past the pairing window
        scenario.flow("10.1.0.12", 0.2, segments=1)  # other traffic meanwhile: the replies are judged before it
        _client(scenario, cport, 0.6, "A", 978)
    elif case == "reset first":  # the client was gone: the LB had nowhere to send them
        _client(scenario, cport, 0.0199, "R", 0)
    elif case == "relayed in one segment":  # the LB sent them on as one (GRO), which the client acknowledged
        scenario.add(0.0204, "client", Ether(src=LB_MAC, dst=CLIENT_MAC) / ip(scenario.vip, CLIENT)
                     / TCP(sport=80, dport=cport, flags="PA", seq=778, ack=1) / Raw(b"x" * 100 + b"y" * 100))
        _client(scenario, cport, 0.021, "A", 978)
    elif case == "relayed late":  # later than the pairing window, but relayed
        for seq, data in ((778, b"x" * 100), (878, b"y" * 100)):
            scenario.add(0.3, "client", Ether(src=LB_MAC, dst=CLIENT_MAC) / ip(scenario.vip, CLIENT)
                         / TCP(sport=80, dport=cport, flags="PA", seq=seq, ack=1) / Raw(data))
    else:  # a backend's answer to the LB's own check, say: to an address no client used
        for packet in scenario.packets:
            if packet.side == "backend" and TCP in packet.packet and packet.packet[TCP].seq in (778, 878):
                packet.packet[TCP].dport = 33333
    assert codes(scenario.judge(SPEC)) == []


@pytest.mark.parametrize(("resent", "acked", "expected"), [
    (0.025, 0.026, ["LB215"]),  # a tail loss probe, acknowledged in the pairing window
    (0.4, 0.41, ["LB215"]),  # a retransmission on timeout, acknowledged only later
    (0.025, 0.022, []),  # acknowledged before it was sent again: the capture missed the first copy
])
def test_a_reply_whose_retransmission_got_through_was_lost_in_the_lb(resent, acked, expected):
    """TCP sends a lost reply again, and the client acknowledges the bytes: they came with the retransmission,
    and the first copy was lost in the LB -- unless the client acknowledged them before they were sent again."""
    scenario = Scenario("nat")
    cport = scenario.flow("10.1.0.11", segments=1)["cport"]
    _reply(scenario, cport, 0.02, 778, b"x" * 100, relayed=False)
    _reply(scenario, cport, resent, 778, b"x" * 100, relayed=True)
    _client(scenario, cport, acked, "A", 878)
    scenario.flow("10.1.0.12", 0.2, segments=1)  # other traffic meanwhile, to move time on
    report = scenario.judge(SPEC)
    assert codes(report) == expected
    assert all(v.data["resent"] > v.data["sent"] for v in report.violations)


def test_replies_are_not_judged_where_the_client_side_capture_does_not_show_them(nat, monkeypatch):
    cport = nat.flow("10.1.0.11", segments=1)["cport"]
    _reply(nat, cport, 0.3, 778, b"x" * 100, relayed=False)
    assert codes(nat.judge(SPEC)) == ["LB215"]
    ended = nat._ended()  # the client-side capture stopped at 15 ms, long before the reply could have reached it
    monkeypatch.setattr(nat, "_ended", lambda: [s for s in ended if s.side == "backend" or s.time < START + 0.015])
    report = nat.judge(SPEC)
    assert codes(report) == [] and report.summary["unjudged_at_edges"] == 1


def test_pure_acknowledgements_are_not_judged(nat):
    nat.flow("10.1.0.11", segments=3)
    _lost(nat, lambda p: TCP in p and p[TCP].sport == 80 and p[TCP].flags == "A")  # the backend's ACKs of the data
    assert "LB215" not in codes(nat.judge(SPEC))


SNAT_UDP = spec(mode="snat", listen="udp 53", rule="forward udp 53 to app port 53")


def test_in_snat_a_lost_answer_is_LB215_and_an_answer_to_the_lb_itself_is_not_judged():
    """In snat the backends answer the LB's own address: whose flow a reply is on, the LB's carrying of a
    client's flow says -- an answer on a flow it carried for nobody (its own check) is none of a client's."""
    scenario = Scenario("snat")
    scenario.flow("10.1.0.11", proto="udp", vport=53, bport=53, segments=3)
    scenario.add(0.05, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC) / ip("10.1.0.11", LB_ADDRESS)
                 / UDP(sport=53, dport=55555) / Raw(b"check answer"))
    assert codes(scenario.judge(SNAT_UDP)) == []
    _lost(scenario, lambda p: UDP in p and p[UDP].sport == 53 and bytes(p[UDP].payload) == b"answer1")
    report = scenario.judge(SNAT_UDP)
    assert codes(report) == ["LB215"] and report.violations[0].data["bytes"] == 7


@pytest.mark.parametrize("lost", [None, 1])
def test_a_udp_answer_a_proxy_never_relays_is_LB215(lost):
    """nginx `stream` relays each UDP datagram, both ways, from a socket of its own toward the backend: the
    answers are paired back as in snat, on their bytes."""
    scenario = Scenario("proxy")
    client, cport, lport = CLIENT, 40000, 50000
    for k in range(3):
        query, answer, t = b"query %d" % k, b"answer %d" % k, 0.02 + k * 0.05
        scenario.add(t, "client", ip(client, scenario.vip, ttl=64) / UDP(sport=cport, dport=53) / Raw(query))
        scenario.add(t + 0.001, "backend", Ether(src=LB_MAC, dst=backend_mac("10.1.0.11"))
                     / ip(LB_ADDRESS, "10.1.0.11") / UDP(sport=lport, dport=5353) / Raw(query))
        scenario.add(t + 0.002, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC)
                     / ip("10.1.0.11", LB_ADDRESS) / UDP(sport=5353, dport=lport) / Raw(answer))
        if k != lost:
            scenario.add(t + 0.003, "client", ip(scenario.vip, client) / UDP(sport=53, dport=cport) / Raw(answer))
    report = scenario.judge(spec(mode="proxy", listen="udp 53", rule="forward udp 53 to app port 5353"))
    assert codes(report) == ([] if lost is None else ["LB215"])
    assert report.summary["replies_relayed"] == (3 if lost is None else 2)

