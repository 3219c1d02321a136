"""Proxy mode: byte streams, not packets, are paired and judged."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from lbspec.runtime.proxy_protocol import proxy_header

from .scenario import LB_ADDRESS, LB_MAC, START, Scenario, backend_mac, codes, ip, spec

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


def test_a_verdict_shows_the_very_packets_of_both_connections_even_batches_later():
    """The packets a witness shows are kept as rows of the batches they came in, and found again when the
    verdict is made, many batches later: the client's SYN, the LB's SYN and first bytes to the backend, and the
    client packet whose bytes came late (or never), each the very frame captured."""
    scenario = Scenario("proxy")
    shown = {}
    for k in range(12):
        before = len(scenario.packets)
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, client=f"203.0.113.{k + 1}",
                            delay=0.08 if k == 9 else 0.002, lose=1 if k == 4 else None, regroup=k != 4)
        syn, _syn_ack, backend_syn, first, second, *to_backend = scenario.packets[before:]
        if k in (4, 9):  # the late bytes are the first chunk; the lost ones the second
            shown[f"203.0.113.{k + 1}"] = [syn, backend_syn, first if k == 9 else second, to_backend[0]]
    report = scenario.judge(SPEC, batch=8)
    assert codes(report) == ["LB200", "LB200"]
    for verdict in report.violations:
        expected = sorted(shown[verdict.data["flow"].split()[1].split(":")[0]], key=lambda s: s.time)
        assert [p.data for p in verdict.witness.packets] == [bytes(s.packet) for s in expected]


def test_a_short_request_changed_on_the_way_pairs_with_no_client():
    """Under 64 bytes a stream must agree in full to pair, so the changed one is a connection no client explains
    (LB208), and the client's bytes were never passed on (LB200).  It starts `GET /`, but with TCP health
    checks (which send nothing) that does not make it one of the LB's checks."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", alter=True)
    assert sorted(codes(scenario.judge(SPEC))) == ["LB200", "LB208"]



def test_an_http_get_of_the_health_path_is_the_lbs_own_check_only_with_http_health():
    probe = Scenario("proxy")
    probe.proxy_flow("10.1.0.12", 0.2)  # a client's connection too
    to_b1 = Ether(src=LB_MAC, dst=backend_mac("10.1.0.11")) / ip(LB_ADDRESS, "10.1.0.11")
    probe.add(0.0, "backend", to_b1 / TCP(sport=50000, dport=8080, flags="S", seq=100))
    probe.add(0.001, "backend", to_b1 / TCP(sport=50000, dport=8080, flags="PA", seq=101, ack=1)
              / Raw(b"GET /healthz HTTP/1.1\r\n\r\n"))
    http = spec(mode="proxy", health='health http "/healthz" every 1s timeout 500ms fall 2 rise 2')
    report = probe.judge(http)
    assert codes(report) == [] and report.summary["probes"] == 1
    assert codes(probe.judge(SPEC)) == ["LB208"]  # TCP checks send nothing: these bytes came from somewhere


HEADERS = b"POST /orders HTTP/1.1\r\nHost: shop.example\r\nContent-Type: application/json\r\n\r\n"


def test_concurrent_requests_that_start_alike_pair_by_their_bodies():
    """Two clients POST at once with the same headers (well over 64 bytes) and different bodies: each
    backend connection is paired with its own client, not the latest one opened."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", 0.0, client="203.0.113.7", chunks=(HEADERS, b'{"order": 1}'))
    scenario.proxy_flow("10.1.0.12", 0.001, client="203.0.113.8", chunks=(HEADERS, b'{"order": 2}'))
    report = scenario.judge(SPEC)
    assert codes(report) == []
    assert report.summary["proxy"]["carried"] == 2 and report.summary["paired"] == 0  # connections, not packets


def test_a_changed_body_among_requests_that_start_alike_is_LB204():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", 0.0, client="203.0.113.7", chunks=(HEADERS, b'{"order": 1}'))
    scenario.proxy_flow("10.1.0.12", 0.001, client="203.0.113.8", chunks=(HEADERS, b'{"order": 2}'), alter=True)
    assert codes(scenario.judge(SPEC)) == ["LB204"]


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


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS"])  # HAProxy's `option httpchk`: OPTIONS
def test_health_checks_of_the_proxy_are_not_LB208_and_their_answers_are_health_evidence(method):
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11")
    probe = Scenario("proxy")
    probe.proxy_flow("10.1.0.12", 0.3, chunks=(method + b" /healthz HTTP/1.0\r\n\r\n",))
    request = next(p.packet for p in probe.packets if p.side == "backend" and Raw in p.packet)
    scenario.packets += [p for p in probe.packets if p.side == "backend"]
    scenario.add(0.32, "backend", Ether(src=backend_mac("10.1.0.12"), dst=LB_MAC) / ip("10.1.0.12", LB_ADDRESS)
                 / TCP(sport=8080, dport=request[TCP].sport, flags="PA", seq=100, ack=request[TCP].seq + 30)
                 / Raw(b"HTTP/1.0 503 Service Unavailable\r\n\r\n"))
    text = spec(mode="proxy", health='health http "/healthz" every 1s timeout 500ms')
    report = scenario.judge(text)
    assert codes(report) == []
    assert [(e["backend"], e["state"], e["evidence"]) for e in report.summary["health"]] == [("b2", "down", "probe")]
    assert codes(scenario.judge(spec(mode="proxy", health='health http "/other" every 1s timeout 500ms'))) == [
        "LB208"]


# ------------------------------------------------------- PROXY protocol --

def _v1(client: str, cport: int, vip: str, vport: int) -> bytes:
    return f"PROXY TCP4 {client} {vip} {cport} {vport}\r\n".encode()


def _v2(client: str, cport: int, vip: str, vport: int) -> bytes:
    body = ipaddress.ip_address(client).packed + ipaddress.ip_address(vip).packed + struct.pack("!HH", cport, vport)
    tlv = b"\x04\x00\x02ab"  # a TLV after the addresses (PP2_TYPE_NOOP)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body) + len(tlv)) + body + tlv


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.mark.parametrize("header", [_v1, _v2], ids=["v1", "v2"])
def test_a_proxy_protocol_header_ahead_of_the_bytes_is_the_lb_s_word_not_a_mutation(header):
    """HAProxy's `send-proxy`, nginx's `proxy_protocol on`: the backend gets a header naming the client's
    connection, then the client's bytes.  They pair and compare from after it."""
    scenario = Scenario("proxy")
    for k in range(3):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.1, header=header)
    report = scenario.judge(SPEC)
    assert codes(report) == []
    proxy = report.summary["proxy"]
    assert proxy["proxy_protocol"] == {"from_clients": 0, "to_backends": 3} and proxy["carried"] == 3
    assert proxy["bytes"]["client_to_lb"] == proxy["bytes"]["lb_to_backend"]


@pytest.mark.parametrize("header", [_v1, _v2], ids=["v1", "v2"])
def test_a_proxy_protocol_header_that_names_another_connection_is_LB204(header):
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", header=lambda client, cport, vip, vport: header("10.9.9.9", cport, vip, vport))
    scenario.proxy_flow("10.1.0.12", 0.1, header=lambda client, cport, vip, vport: header(client, cport + 1, vip,
                                                                                           vport))
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB204", "LB204"]
    assert {v.data["fields"][0] for v in report.violations} == {"proxy_header"}
    assert report.violations[0].data["named"].startswith("10.9.9.9:")


def test_a_proxy_before_the_lb_names_the_client_and_the_lb_passes_that_name_on():
    """HAProxy `accept-proxy` behind a load balancer that speaks the PROXY protocol (`send-proxy` on): the
    client connection starts with a header naming the first client, which is what the LB's header to the
    backend must name, and which the LB does not relay as bytes."""
    first = ("198.51.100.9", 51000, "192.0.2.10", 80)
    scenario = Scenario("proxy")
    # the client's first chunk, its header, is not relayed (`lose`)
    scenario.proxy_flow("10.1.0.11", chunks=(_v1(*first), b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n"), lose=0,
                        header=lambda *_ends: _v1(*first))
    scenario.proxy_flow("10.1.0.12", 0.1, chunks=(_v1(*first), b"GET / HTTP/1.1\r\n"), lose=0, header=_v1)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB204"]  # the second LB named the proxy before it, not the client it was told of
    assert report.summary["proxy"]["proxy_protocol"] == {"from_clients": 2, "to_backends": 2}


def test_a_check_with_a_proxy_protocol_header_is_not_taken_for_a_silent_client_s_connection():
    """A client that sent nothing and closed, and just after it a check that carried nothing but its header
    (naming its own connection): paired by time, the check would be the client's, and its header a lie
    (LB204).  The header says whose it is: nobody's here."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(), open_backend=False)
    syn_of_client, accept = (p.packet for p in scenario.packets if p.side == "client")
    for t, packet in ((0.05, syn_of_client), (0.051, accept)):  # each end closes
        fin = packet.copy()
        fin[TCP].flags, fin[TCP].seq = "FA", packet[TCP].seq + 1
        scenario.add(t, "client", fin)
    probe = Scenario("proxy")
    probe.proxy_flow("10.1.0.12", 0.1, chunks=(b"PROXY TCP4 10.1.0.1 10.1.0.12 60001 8080\r\n",))
    syn, header = (p.packet for p in probe.packets if p.side == "backend")
    scenario.packets += [p for p in probe.packets if p.side == "backend"]
    scenario.add(0.1007, "backend", Ether(src=backend_mac("10.1.0.12"), dst=LB_MAC) / ip("10.1.0.12", LB_ADDRESS)
                 / TCP(sport=8080, dport=syn[TCP].sport, flags="SA", seq=7, ack=syn[TCP].seq + 1))
    closing = header.copy()
    closing[TCP].flags, closing[TCP].seq = "FA", header[TCP].seq + len(header[Raw].load)
    del closing[Raw]
    scenario.add(0.113, "backend", closing)
    report = scenario.judge(SPEC)
    assert codes(report) == []  # the client is not served: the LB did not say it was
    assert report.summary["probes"] == 1 and report.summary["proxy"]["carried"] == 0


def test_a_health_check_that_sends_only_a_proxy_protocol_header_is_a_check():
    """HAProxy's checks of `send-proxy` servers send a header naming their own connection (v2: LOCAL), and
    nothing more."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11")
    probe = Scenario("proxy")
    for k, header in enumerate((b"PROXY TCP4 10.0.0.1 10.1.0.12 40000 8080\r\n",
                                V2_SIGNATURE + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n")):
        probe.proxy_flow("10.1.0.12", 0.3 + k * 0.1, chunks=(header,))
    scenario.packets += [p for p in probe.packets if p.side == "backend"]
    report = scenario.judge(SPEC)
    assert codes(report) == [] and report.summary["proxy"]["proxy_protocol"]["to_backends"] == 3
    assert report.summary["probes"] == 3
    # where nothing checks the backends, such a connection is no check
    assert codes(scenario.judge(spec(mode="proxy", health="health none"))) == ["LB208"] * 3


@pytest.mark.parametrize("framed", [True, False])
def test_a_proxy_protocol_header_ahead_of_a_udp_session_s_first_datagram_is_the_lb_s_word(framed):
    """nginx `proxy_protocol on` in a udp server puts the header ahead of the first datagram of each client's
    session only.  That datagram pairs with the client's on what follows the header; with bytes that are no
    header ahead of it, it is not the client's (LB200, and LB208 for what went)."""
    scenario = Scenario("proxy")
    for side in ("client", "backend"):  # the captures start before the session: its first datagram is no edge
        scenario.add(0.0, side, Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.9.9.9", pdst="10.9.9.8"))
    client, cport, lport = "203.0.113.7", 40000, 50000
    ahead = _v1(client, cport, scenario.vip, 53) if framed else b"PROXY TCP4 junk\r\n"
    for k in range(3):
        query, answer = b"query %d" % k, b"answer %d" % k
        t = 0.2 + k * 0.05
        scenario.add(t, "client", ip(client, scenario.vip, ttl=64) / UDP(sport=cport, dport=53) / Raw(query))
        scenario.add(t + 0.001, "backend", Ether(src=LB_MAC, dst=backend_mac("10.1.0.11"))
                     / ip(LB_ADDRESS, "10.1.0.11") / UDP(sport=lport, dport=5353) / Raw((ahead if k == 0 else b"")
                                                                                         + query))
        scenario.add(t + 0.002, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC)
                     / ip("10.1.0.11", LB_ADDRESS) / UDP(sport=5353, dport=lport) / Raw(answer))
        scenario.add(t + 0.003, "client", ip(scenario.vip, client) / UDP(sport=53, dport=cport) / Raw(answer))
    text = spec(mode="proxy", listen="udp 53", rule="forward udp 53 to app port 5353")
    report = scenario.judge(text)
    assert codes(report) == ([] if framed else ["LB200", "LB208"])
    assert report.summary["paired"] == (3 if framed else 2)


@pytest.mark.parametrize("data", [
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2",  # no CRLF
    b"PROXY TCP4 10.0.0.1 ::1 1 2\r\n",  # mixed families
    b"PROXY TCP6 10.0.0.1 10.0.0.2 1 2\r\n",
    b"PROXY TCP4 10.0.0.1 10.0.0.2 1 99999\r\n",
    b"PROXY TCP4 10.0.0.1 10.0.0.2 x 2\r\n",
    b"PROXY " + b"A" * 200 + b"\r\n",  # longer than a v1 header may be
    V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\x00" * 8,  # shorter than it says
    V2_SIGNATURE + b"\x31\x11\x00\x00",  # version 3
])
def test_what_is_not_a_whole_proxy_protocol_header_is_relayed_bytes(data):
    assert proxy_header(data) is None


@given(st.binary(max_size=300), st.sampled_from([b"", b"PROXY ", V2_SIGNATURE]))
def test_reading_a_proxy_protocol_header_never_fails_on_any_bytes(data, start):
    found = proxy_header(start + data)
    assert found is None or 0 < found[0] <= len(start + data)


@pytest.mark.parametrize("says, sent", [
    ("PING\\r\\n", b"PING\r\n"),  # HAProxy's redis-check, a tcp-check send
    ("\\x16\\x03\\x00", b"\x16\x03\x00\x00\x79\x01\x00\x00\x75\x03\x00HAPROXYSSLCHK"),  # ssl-hello-chk
    ("0\\x0c\\x02\\x01\\x01`\\x07\\x02\\x01\\x03\\x04\\x00\\x80\\x00",
     bytes.fromhex("300c020101600702010304008000")),  # ldap-check: a byte above 0x7f is one byte
])
def test_tcp_checks_that_send_what_the_spec_says_are_not_LB208(says, sent):
    """`health tcp "..."` says what the LB's checks send first: a character a byte, `\\xNN` any."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11")
    probe = Scenario("proxy")
    for k in range(3):
        probe.proxy_flow("10.1.0.12", 0.3 + k * 0.1, chunks=(sent,))
    scenario.packets += [p for p in probe.packets if p.side == "backend"]
    assert codes(scenario.judge(spec(mode="proxy", health=f'health tcp "{says}" every 1s timeout 500ms'))) == []
    assert codes(scenario.judge(spec(mode="proxy", health='health tcp "QUIT\\r\\n" every 1s timeout 500ms'))) == [
        "LB208"] * 3
    assert codes(scenario.judge(SPEC)) == ["LB208"] * 3  # a tcp check that says nothing sends nothing


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


def test_a_connection_paired_by_time_gives_way_to_the_one_its_bytes_show():
    """Two clients connect at once and the LB opens a backend connection for each, as HAProxy does; a second
    and more later the second client sends a request, which goes over the backend connection opened second.
    Pairing by time alone gave that one to the first client, and the request looked dropped (LB200)."""
    scenario = Scenario("proxy")
    first = scenario.proxy_flow("10.1.0.11", 0.0, chunks=())
    second = scenario.proxy_flow("10.1.0.12", 0.0001, chunks=())
    syns = {}
    for sent in list(scenario.packets):
        syn = sent.packet.getlayer(TCP)
        if sent.side == "backend" and syn is not None and syn.flags == "S":
            backend = sent.packet[IP].dst
            syns[backend] = syn
            scenario.add(sent.time - START + 0.0002, "backend", Ether(src=backend_mac(backend), dst=LB_MAC)
                         / IP(src=backend, dst=LB_ADDRESS) / TCP(sport=syn.dport, dport=syn.sport, flags="SA",
                                                                 seq=9, ack=syn.seq + 1))
    client_syn = next(s.packet[TCP] for s in scenario.packets if s.side == "client" and s.packet[TCP].sport == second)
    request = b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n"
    scenario.add(2.0, "client", ip("203.0.113.7", "192.0.2.10", ttl=64) / TCP(
        sport=second, dport=80, flags="PA", seq=client_syn.seq + 1, ack=6) / Raw(request))
    carrier = syns["10.1.0.12"]
    scenario.add(2.001, "backend", Ether(src=LB_MAC, dst=backend_mac("10.1.0.12")) / ip(LB_ADDRESS, "10.1.0.12")
                 / TCP(sport=carrier.sport, dport=8080, flags="PA", seq=carrier.seq + 1, ack=10) / Raw(request))
    report = scenario.judge(NO_HEALTH)
    assert codes(report) == [] and report.summary["proxy"]["carried"] == 2 and first != second


def test_a_check_that_carried_nothing_is_not_taken_for_a_waiting_client_s_connection():
    """A client connects and waits seconds before its request; meanwhile the LB checks a backend (connects,
    is answered, closes).  The check is over long before the client is: it is not the client's connection,
    and the one that carries the request is (paired by time a second in, it made that one a duplicate)."""
    scenario = Scenario("proxy")
    cport = scenario.proxy_flow("10.1.0.11", 0.0, chunks=(), open_backend=False)
    check = ip(LB_ADDRESS, "10.1.0.12")
    mac = Ether(src=LB_MAC, dst=backend_mac("10.1.0.12"))
    answer = Ether(src=backend_mac("10.1.0.12"), dst=LB_MAC) / IP(src="10.1.0.12", dst=LB_ADDRESS)
    scenario.add(0.001, "backend", mac / check / TCP(sport=40000, dport=8080, flags="S", seq=100))
    scenario.add(0.0012, "backend", answer / TCP(sport=8080, dport=40000, flags="SA", seq=9, ack=101))
    scenario.add(0.0014, "backend", mac / check / TCP(sport=40000, dport=8080, flags="R", seq=101))
    scenario.proxy_flow("10.1.0.11", 1.2, client="203.0.113.8")  # traffic meanwhile: the monitor reads on
    syn = next(s.packet[TCP] for s in scenario.packets if s.side == "client" and s.packet[TCP].sport == cport)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    scenario.add(2.0, "client", ip("203.0.113.7", "192.0.2.10", ttl=64) / TCP(sport=cport, dport=80, flags="PA",
                                                                               seq=syn.seq + 1, ack=6) / Raw(request))
    link = ip(LB_ADDRESS, "10.1.0.12")
    scenario.add(2.0005, "backend", mac / link / TCP(sport=40001, dport=8080, flags="S", seq=500))
    scenario.add(2.0007, "backend", answer / TCP(sport=8080, dport=40001, flags="SA", seq=9, ack=501))
    scenario.add(2.001, "backend", mac / link / TCP(sport=40001, dport=8080, flags="PA", seq=501, ack=10)
                 / Raw(request))
    report = scenario.judge(SPEC)
    assert codes(report) == [] and report.summary["proxy"]["carried"] == 2


def test_a_check_just_after_a_client_the_lb_rejects_is_not_that_client_s_connection():
    """The spec rejects clients outside 10.9.0.0/16 (HAProxy `tcp-request connection reject`); one connects
    and is closed at once, and a check that carries nothing follows.  Paired by time, the check was the
    rejected client sent to a backend its rule does not allow (LB203)."""
    scenario = Scenario("proxy")
    cport = scenario.proxy_flow("10.1.0.11", 0.0, chunks=(), open_backend=False)
    scenario.add(0.0003, "client", ip("192.0.2.10", "203.0.113.7") / TCP(sport=80, dport=cport, flags="R", seq=6))
    mac, check = Ether(src=LB_MAC, dst=backend_mac("10.1.0.12")), ip(LB_ADDRESS, "10.1.0.12")
    answer = Ether(src=backend_mac("10.1.0.12"), dst=LB_MAC) / IP(src="10.1.0.12", dst=LB_ADDRESS)
    scenario.add(0.001, "backend", mac / check / TCP(sport=40000, dport=8080, flags="S", seq=100))
    scenario.add(0.0012, "backend", answer / TCP(sport=8080, dport=40000, flags="SA", seq=9, ack=101))
    scenario.add(0.0014, "backend", mac / check / TCP(sport=40000, dport=8080, flags="R", seq=101))
    admitting = spec(mode="proxy", rule="forward tcp 80 from 10.9.0.0/16 to app port 8080\n    otherwise reject")
    report = scenario.judge(admitting)
    assert codes(report) == [] and report.summary["probes"] == 1


def test_established_connections_that_carry_nothing_pair_with_the_client_opened_just_before():
    # clients that connect and send nothing, between busy ones: the LB's backend connections for them are
    # answered and carry nothing; without health checks to take them for, only their clients explain them
    scenario = Scenario("proxy")
    for k in range(6):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.3, chunks=() if k % 2 else (b"GET /%d\r\n" % k,))
    for sent in list(scenario.packets):
        syn = sent.packet.getlayer(TCP)
        if sent.side == "backend" and syn is not None and syn.flags == "S":
            backend = sent.packet[IP].dst
            scenario.add(sent.time - START + 0.0002, "backend", Ether(src=backend_mac(backend), dst=LB_MAC)
                         / IP(src=backend, dst=LB_ADDRESS) / TCP(sport=syn.dport, dport=syn.sport, flags="SA",
                                                                 seq=9, ack=syn.seq + 1))
    report = scenario.judge(NO_HEALTH)
    assert codes(report) == [] and report.summary["proxy"]["failed_attempts"] == {"refused": 0, "timeout": 0}


# ------------------------------------------------------- connection failures --
# A client connection the LB accepts but never carries, and what the LB did about it: attempts to backends
# refused (RST) or unanswered, a RST to the client, or nothing.

NO_HEALTH = spec(mode="proxy", health="health none")


def _attempt(scenario: Scenario, backend: str, time: float, answer: str | None) -> None:
    """The LB's connection attempt to ``backend``: refused (``"rst"``), accepted (``"synack"``) or unanswered."""
    lport, seq = next(scenario.ports) + 20000, next(scenario.seqs) % (1 << 32)
    scenario.add(time, "backend", Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(LB_ADDRESS, backend)
                 / TCP(sport=lport, dport=8080, flags="S", seq=seq))
    if answer is not None:
        flags = {"rst": "RA", "synack": "SA"}[answer]
        scenario.add(time + 0.0001, "backend", Ether(src=backend_mac(backend), dst=LB_MAC) / ip(backend, LB_ADDRESS)
                     / TCP(sport=8080, dport=lport, flags=flags, seq=99, ack=seq + 1))


def _unserved(scenario: Scenario, time: float, *attempts: tuple[str, float, str | None]) -> int:
    """A client connection with bytes the LB never passes on, and its attempts (backend, delay, answer)."""
    cport = scenario.proxy_flow("10.1.0.11", time, open_backend=False)
    for backend, delay, answer in attempts:
        _attempt(scenario, backend, time + delay, answer)
    return cport


def _reset(scenario: Scenario, cport: int, time: float) -> None:
    scenario.add(time, "client", ip(scenario.vip, "203.0.113.7") / TCP(sport=80, dport=cport, flags="R", seq=6))


def _failures(report) -> dict:
    proxy = report.summary["proxy"]
    return {k: v for k, v in {**proxy["failed"], **proxy["failed_attempts"]}.items() if v}


def test_a_refused_attempt_is_the_backend_refusing_not_a_drop():
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.0005, "rst"))
    report = scenario.judge(SPEC)
    assert codes(report) == []
    assert _failures(report) == {"backend_refused": 1, "refused": 1}


def test_an_unanswered_attempt_is_a_backend_timeout_not_a_drop():
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.0005, None), ("10.1.0.11", 1.0, None))
    report = scenario.judge(SPEC)
    assert codes(report) == []
    assert _failures(report) == {"backend_timeout": 1, "timeout": 2}


def test_attempts_to_a_backend_down_past_its_detection_window_are_LB202():
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.0005, "rst"))
    _unserved(scenario, 1.0, ("10.1.0.11", 0.0005, "rst"))  # within the window: allowed
    _unserved(scenario, 6.0, ("10.1.0.11", 0.0005, "rst"))
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB202"]
    assert _failures(report) == {"backend_refused": 3, "refused": 3}
    assert report.violations[0].data["backend"] == "b1"


def test_retries_of_one_connection_to_its_backend_are_one_choice():
    """Near miss: HAProxy without `redispatch` retries the same server; with `health none` a second
    connection sent there is LB202, a retry of the first one is not."""
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.0005, "rst"), ("10.1.0.11", 1.0, "rst"), ("10.1.0.11", 2.0, "rst"))
    assert codes(scenario.judge(NO_HEALTH)) == []
    _unserved(scenario, 3.0, ("10.1.0.11", 0.0005, "rst"))
    assert codes(scenario.judge(NO_HEALTH)) == ["LB202"]


def test_a_refused_attempt_then_the_next_server_is_clean_and_no_LB208():
    scenario = Scenario("proxy")
    _attempt(scenario, "10.1.0.11", 0.0003, "rst")
    scenario.proxy_flow("10.1.0.12", 0.0)
    report = scenario.judge(NO_HEALTH)
    assert codes(report) == []
    assert _failures(report) == {"refused": 1}


def test_a_retry_that_comes_late_is_the_failed_attempt_not_a_drop():
    scenario = Scenario("proxy")
    _attempt(scenario, "10.1.0.11", 0.0003, None)
    scenario.proxy_flow("10.1.0.12", 0.0, delay=1.0)  # nginx: `proxy_connect_timeout 1s`, then the next server
    report = scenario.judge(NO_HEALTH)
    assert codes(report) == []
    assert _failures(report) == {"backend_timeout": 1, "timeout": 1}


TWO_POOLS = dict(mode="proxy", listen="tcp 80-81",
                 rule="forward tcp 80 to app port 8080\n    forward tcp 81 to admin port 8080",
                 backends="backend b1 10.1.0.11\n        backend b2 10.1.0.12\n    }\n    pool admin {\n"
                          "        backend b3 10.1.0.13")


def test_checks_of_a_dead_backend_of_another_pool_are_not_the_clients_being_connected():
    """The LB checks b3 (admin, dead) every second, each time while a client of app is being connected:
    the refused check is no client's.  Near miss: with no health checks there are no checks to make such
    attempts, so the attempt is the client's, sent where its rule does not go (LB203; and, b3 refusing
    since the first, to a backend known to be down: LB202)."""
    scenario = Scenario("proxy")
    for k in range(4):
        _attempt(scenario, "10.1.0.13", k + 0.0003, "rst")
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], float(k))
    report = scenario.judge(spec(**TWO_POOLS))
    assert codes(report) == [] and report.summary["probes"] == 4
    unchecked = scenario.judge(spec(**TWO_POOLS, health="health none"))
    assert codes(unchecked).count("LB203") == 4 and {v.data["backend"] for v in unchecked.violations} == {"b3"}


def test_a_check_of_a_dead_backend_while_a_client_waits_in_vain_is_not_an_attempt_for_it():
    """The LB never tries to carry a client's bytes; half a second later its health check of b1 (dead) is
    refused: a check, not the LB trying for the client, so the client's bytes were dropped while b2 was
    healthy (LB200).  Near misses: an attempt as the LB accepts the client, or as its first bytes come
    (nginx `ssl_preread` waits for them), is the client's -- the backend refused, not a drop."""
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.5, "rst"))
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"] and report.summary["probes"] == 1
    assert _failures(report) == {"not_relayed": 1, "refused": 1}
    for first_byte in (0.01, 0.7):
        scenario = Scenario("proxy")
        scenario.proxy_flow("10.1.0.11", 0.0, open_backend=False, chunks=(b"GET /\r\n",), gap=first_byte)
        _attempt(scenario, "10.1.0.11", first_byte + 0.0005, "rst")
        report = scenario.judge(SPEC)
        assert codes(report) == [] and _failures(report) == {"backend_refused": 1, "refused": 1}


def test_the_lb_resetting_a_client_it_never_carried_is_LB200():
    scenario = Scenario("proxy")
    cport = _unserved(scenario, 0.0)
    _reset(scenario, cport, 0.05)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"]
    assert _failures(report) == {"lb_reset": 1}


def test_the_lb_refusing_a_connection_outright_is_LB200_unless_no_backend_is_healthy():
    scenario = Scenario("proxy")
    scenario.add(0.0, "client", ip("203.0.113.7", scenario.vip) / TCP(sport=40999, dport=80, flags="S", seq=1))
    _reset(scenario, 40999, 0.0002)
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"] and _failures(report) == {"lb_reset": 1}
    excused = scenario.judge(SPEC, events=[(-1.0, "b1", False), (-1.0, "b2", False)])
    assert codes(excused) == [] and _failures(excused) == {"lb_reset": 1}


IDLE_1S = spec(mode="proxy", body="affinity flow timeout 1s")


def _closed_then_sent(idle: float, backend_ends: bool = False) -> Scenario:
    """A connection that carries a request and its answer; ``idle`` seconds after the answer the LB closes it
    (a FIN to the client: HAProxy at `timeout client`, or, with ``backend_ends``, relaying the FIN the backend
    sent just before), and a second later the client sends more, which the LB answers with a RST."""
    scenario = Scenario("proxy")
    cport = scenario.proxy_flow("10.1.0.11", 0.0, chunks=(b"hello\n",), answer=b"hi\n")
    syn = next(s.packet for s in scenario.packets if s.side == "client" and s.packet[TCP].sport == cport)
    seq, answered = syn[TCP].seq + 1 + 6, max(s.time for s in scenario.packets) - START
    if backend_ends:
        lb = next(s.packet for s in scenario.packets if s.side == "backend" and s.packet[TCP].flags == "S")
        scenario.add(answered + idle - 0.0005, "backend", Ether(src=backend_mac("10.1.0.11"), dst=LB_MAC)
                     / ip("10.1.0.11", LB_ADDRESS) / TCP(sport=8080, dport=lb[TCP].sport, flags="FA", seq=12,
                                                         ack=lb[TCP].seq + 1 + 6))
    scenario.add(answered + idle, "client", ip(scenario.vip, "203.0.113.7")
                 / TCP(sport=80, dport=cport, flags="FA", seq=9, ack=seq))
    scenario.add(answered + idle + 1.0, "client", ip("203.0.113.7", scenario.vip, ttl=64)
                 / TCP(sport=cport, dport=80, flags="PA", seq=seq, ack=10) / Raw(b"again\n"))
    _reset(scenario, cport, answered + idle + 1.0002)
    return scenario


def test_bytes_sent_after_the_lb_closed_an_idle_connection_at_its_timeout_are_not_judged_but_counted():
    """HAProxy's `timeout client` (nginx's `proxy_timeout`) is the spec's flow timeout: the LB closes a connection
    idle that long, and what the client sends after has nowhere to go.  It was LB200 (lb_reset)."""
    report = _closed_then_sent(idle=1.05).judge(IDLE_1S)
    assert codes(report) == [] and _failures(report) == {}
    assert report.summary["proxy"]["sent_after_close"] == 1
    # near misses: closed before the connection was idle that long, or a spec that keeps idle connections longer
    for idle, text in ((0.5, IDLE_1S), (1.05, SPEC)):
        report = _closed_then_sent(idle).judge(text)
        assert codes(report) == ["LB200"] and report.summary["proxy"]["sent_after_close"] == 0


def test_bytes_sent_after_the_lb_closed_a_connection_its_backend_ended_are_not_judged_but_counted():
    """A backend that dies (or closes) ends the connection carrying a client: the LB closes the client's too,
    and bytes the client sends after that cannot go anywhere (HAProxy and nginx in the lab: LB200 before)."""
    report = _closed_then_sent(idle=0.5, backend_ends=True).judge(SPEC)
    assert codes(report) == [] and report.summary["proxy"]["sent_after_close"] == 1


def _half_closed(relay: bool = False, lb_fin: float = 0.0115, client_reset: float | None = None,
                 backend_reset: float | None = None, client_acks: bool = False, lb_closes: bool = True,
                 timeout: str = "", request: bytes = b"req") -> tuple[Scenario, str]:
    """A client sends a request and half-closes (FIN); the LB passes both on; the backend answers at 13 ms.
    With ``relay`` the LB relays the answer and then closes (HAProxy); else it closes the client's connection
    at ``lb_fin`` (nginx without `proxy_half_close`: as the client's FIN comes) and resets the backend's as
    the answer comes.  ``client_reset``/``backend_reset``: when that end resets its connection;
    ``client_acks``: the LB relays the answer and closes, but the capture misses the answer -- the client's
    acknowledgement says it came;
    ``lb_closes=False``: the LB never closes the client's connection; ``request=b""``: the client sends nothing
    (a probe: it connects and closes), and the answer is the server's greeting.  Returns the scenario and its
    spec."""
    scenario = Scenario("proxy")
    client, backend = "203.0.113.7", "10.1.0.11"
    cport, lport, c, b, s0, r0 = 41000, 61000, 1000, 5000, 9000, 7000

    def send(t: float, side: str, frame, data: bytes = b"") -> None:
        scenario.add(t, side, frame / Raw(data) if data else frame)

    def client_side(t, outward: bool, data: bytes = b"", **kw):
        ends = (ip(client, scenario.vip, ttl=64), cport, 80) if outward else (ip(scenario.vip, client), 80, cport)
        send(t, "client", ends[0] / TCP(sport=ends[1], dport=ends[2], **kw), data)

    def backend_side(t, outward: bool, data: bytes = b"", **kw):
        macs, ends = ((LB_MAC, backend_mac(backend)), (LB_ADDRESS, backend, lport, 8080)) if outward else \
            ((backend_mac(backend), LB_MAC), (backend, LB_ADDRESS, 8080, lport))
        send(t, "backend", Ether(src=macs[0], dst=macs[1]) / ip(ends[0], ends[1])
             / TCP(sport=ends[2], dport=ends[3], **kw), data)

    client_side(0.0, True, flags="S", seq=c)
    client_side(0.0002, False, flags="SA", seq=s0, ack=c + 1)
    backend_side(0.0005, True, flags="S", seq=b)
    backend_side(0.0006, False, flags="SA", seq=r0, ack=b + 1)
    n = len(request)
    if request:
        client_side(0.010, True, request, flags="PA", seq=c + 1, ack=s0 + 1)
    client_side(0.011, True, flags="FA", seq=c + 1 + n, ack=s0 + 1)
    if request:
        backend_side(0.012, True, request, flags="PA", seq=b + 1, ack=r0 + 1)
    backend_side(0.0121, True, flags="FA", seq=b + 1 + n, ack=r0 + 1)
    backend_side(0.013, False, b"answer!", flags="PA", seq=r0 + 1, ack=b + 2 + n)
    if relay or client_acks:
        if not client_acks:
            client_side(0.0135, False, b"answer!", flags="PA", seq=s0 + 1, ack=c + 2 + n)
        client_side(0.014, False, flags="FA", seq=s0 + 8, ack=c + 2 + n)
    else:
        if lb_closes:
            client_side(lb_fin, False, flags="FA", seq=s0 + 1, ack=c + 2 + n)
        backend_side(0.0131, True, flags="R", seq=b + 2 + n)
    if client_acks:
        client_side(0.0142, True, flags="A", seq=c + 2 + n, ack=s0 + 9)
    if client_reset is not None:
        client_side(client_reset, True, flags="R", seq=c + 2 + n)
    if backend_reset is not None:
        backend_side(backend_reset, False, flags="R", seq=r0 + 8)
    return scenario, spec(mode="proxy", body=timeout)


def test_an_answer_the_lb_never_relays_as_it_closed_the_client_too_soon_is_LB215():
    """nginx `stream` without `proxy_half_close` ends the whole session when a client half-closes: the
    backend's answer, sent after, never reaches the client, which was waiting for it (found in the lab)."""
    scenario, text = _half_closed()
    report = scenario.judge(text)
    assert codes(report) == ["LB215"]
    facts = report.violations[0].data
    assert facts["property"] == "reverse_path" and facts["bytes"] == 7 and facts["backend"] == "b1"
    answer = next(s.packet for s in scenario.packets if Raw in s.packet and s.packet[Raw].load == b"answer!")
    assert bytes(answer) in [p.data for p in report.violations[0].witness.packets]  # the answer itself is shown


@pytest.mark.parametrize("case", ["relayed", "client reset first", "backend reset its own", "acknowledged",
                                  "still open", "closed idle", "a probe"])
def test_answers_that_were_relayed_or_had_nowhere_to_go_are_no_LB215(case):
    scenario, text = _half_closed(**{
        "relayed": {"relay": True},
        "client reset first": {"client_reset": 0.0125},
        "backend reset its own": {"backend_reset": 0.0132},
        "acknowledged": {"client_acks": True},  # the capture missed the LB's segment; the client did not
        "still open": {"lb_closes": False},  # a client that reads slowly may hold the answer back for ever
        "closed idle": {"lb_fin": 0.0128, "timeout": "affinity flow timeout 2ms"},
        "a probe": {"request": b""},  # connects and closes at once: the server's greeting is not awaited
    }[case])
    assert codes(scenario.judge(text)) == []


def test_an_accepted_attempt_that_carries_nothing_is_the_LB_not_relaying():
    """Near miss: the backend answered, so the LB, not the backend, kept the bytes."""
    scenario = Scenario("proxy")
    _unserved(scenario, 0.0, ("10.1.0.11", 0.0005, "synack"))
    report = scenario.judge(SPEC)
    assert codes(report) == ["LB200"]
    assert _failures(report) == {"not_relayed": 1}


def test_bytes_are_counted_each_way():
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(b"abc", b"defg"))
    moved = scenario.judge(SPEC).summary["proxy"]["bytes"]
    assert moved["client_to_lb"] == moved["lb_to_backend"] == 7


def test_each_backend_is_counted_the_bytes_relayed_to_it_not_those_of_checks_or_headers():
    """The per-backend bytes of the summary: in proxy mode, the bytes each backend connection carried for its
    client (they come after the packet that paired it; they were all 0)."""
    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(b"a" * 100, b"b" * 50))
    scenario.proxy_flow("10.1.0.11", 0.1, chunks=(b"c" * 30,), regroup=False, header=_v1)
    scenario.proxy_flow("10.1.0.12", 0.2, chunks=(b"d" * 20,))
    check = Scenario("proxy")
    check.proxy_flow("10.1.0.12", 0.3, chunks=(b"PING\r\n",))
    scenario.packets += [p for p in check.packets if p.side == "backend"]
    report = scenario.judge(spec(mode="proxy", health='health tcp "PING\\r\\n" every 1s timeout 500ms'))
    assert codes(report) == []
    backends = {b["backend"]: (b["bytes"], b["bytes_share"]) for b in report.summary["backends"]}
    assert backends == {"b1": (180, 0.9), "b2": (20, 0.1)}


def test_a_backend_given_more_bytes_than_its_weight_is_LB206_by_bytes():
    scenario = Scenario("proxy")
    for k in range(40):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, chunks=(b"x" * (900 if k % 2 else 10),))
    assert codes(scenario.judge(SPEC)) == []  # connections are split evenly
    by_bytes = scenario.judge(spec(mode="proxy", body="assert balance bytes within 10%"))
    assert codes(by_bytes) == ["LB206"]
    assert by_bytes.violations[0].data["backends"]["b2"]["share"] > 0.95


CAPPED = spec(mode="proxy", backends="backend b1 10.1.0.11 max_conn 1\n        backend b2 10.1.0.12 max_conn 1")


def _held(scenario: Scenario, freed: float, served: float | None) -> None:
    """b1 and b2 each carry a connection (`max_conn 1`), b1's until ``freed`` (None: to the end), b2's to the end;
    a third client's bytes come at 0.03 s, and the LB passes them on to b1 at ``served`` (None: never)."""
    scenario.proxy_flow("10.1.0.11", 0.0, close=freed)
    scenario.proxy_flow("10.1.0.12", 0.01)
    if served is None:
        scenario.proxy_flow("10.1.0.11", 0.02, open_backend=False)
    else:
        scenario.proxy_flow("10.1.0.11", 0.02, connect=served - 0.021, delay=served - 0.03 - 0.02, chunks=(b"q",))


def test_a_client_held_while_every_backend_is_at_its_max_conn_is_no_drop():
    """HAProxy queues a client while each server it may go to has `maxconn` connections: the deadline runs
    only while one has room.  Each queued client was LB200 before."""
    scenario = Scenario("proxy")
    _held(scenario, freed=0.5, served=0.502)
    assert codes(scenario.judge(CAPPED)) == []
    assert codes(scenario.judge(SPEC)) == ["LB200"]  # no max_conn: the backends had room all along
    assert codes(scenario.judge(CAPPED.replace("max_conn 1", "max_conn 2"))) == ["LB200"]
    early = Scenario("proxy")
    _held(early, freed=0.1, served=0.502)  # b1 had room from 0.1 s on
    assert codes(early.judge(CAPPED)) == ["LB200"]


def test_a_client_the_lb_never_had_room_for_is_no_drop_but_is_counted():
    scenario = Scenario("proxy")
    _held(scenario, freed=None, served=None)
    report = scenario.judge(CAPPED)
    assert codes(report) == []
    assert _failures(report) == {"backends_full": 1}
    assert codes(scenario.judge(SPEC)) == ["LB200"]


def _snapped(scenario: Scenario, length: int) -> Scenario:
    """The scenario as a capture with snapshot length ``length`` shows it: each frame cut after that many bytes."""
    for sent in scenario.packets:
        sent.packet = Ether(bytes(sent.packet)[:length])
        sent.packet.time = sent.time
    return scenario


def test_bytes_the_capture_cut_short_are_not_judged_but_counted():
    """`tcpdump -s 80`: no segment's bytes are all there, so a proxy's streams cannot be put together.  Every
    client's bytes looked never relayed (LB200) before; now they are not judged, and a note says why."""
    def lossy() -> Scenario:
        scenario = Scenario("proxy")
        for k in range(4):
            scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.1, chunks=(b"x" * 200, b"y" * 200),
                                regroup=False, lose=1 if k == 3 else None)
        return scenario

    assert codes(lossy().judge(SPEC)) == ["LB200"]  # whole packets: the lost chunk is seen lost
    report = _snapped(lossy(), 80).judge(SPEC)
    assert codes(report) == ["LB209"]
    assert report.summary["proxy"]["cut"] == 4 and report.summary["proxy"]["carried"] == 4
    assert _snapped(lossy(), 2000).judge(SPEC).summary["proxy"]["cut"] == 0


def test_the_text_summary_shows_connections_bytes_and_failures():
    from lbspec.runtime.command import summary_text

    scenario = Scenario("proxy")
    scenario.proxy_flow("10.1.0.11", chunks=(b"abc", b"defg"))
    summary = scenario.judge(SPEC).summary
    lines = summary_text(summary).splitlines()
    line = next(x for x in lines if x.startswith("proxy:"))
    assert "LB->backend 7" in line and "failed" not in line
    assert not any(x.startswith("pairing:") for x in lines)  # no packets of other modes: no packet pairing line
    summary["proxy"]["failed_attempts"]["refused"] = 2
    assert "attempt refused 2" in summary_text(summary)


# ------------------------------------------------------ finding clients by their first bytes --

def _tracker_with(streams: list[tuple[bytes, bool]]):
    """A tracker whose clients have these stream prefixes (and are carried or not), indexed as it indexes."""
    from lbspec.runtime.proxy import ProxyTracker, _Client

    tracker = ProxyTracker.__new__(ProxyTracker)  # the index alone: no engine needed
    tracker.clients, tracker.by_prefix, tracker.free = {}, {}, {}
    for key, (prefix, carried) in enumerate(streams):
        client = _Client(key, 0, 0, None, float(key), float(key), ident=key)
        client.stream.prefix = prefix
        client.backend = object() if carried else None
        tracker.clients[key] = client
        if not carried:
            tracker.free[key] = client
        tracker._index(client)
    return tracker


_BYTES = st.binary(min_size=0, max_size=90).map(lambda b: bytes(x % 3 for x in b))  # few symbols: many alike


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_BYTES, st.booleans()), max_size=12), _BYTES.filter(bool), st.floats(0, 12))
def test_the_prefix_index_finds_the_clients_a_scan_of_all_finds(streams, head, limit):
    """Pairing asks the index instead of comparing the backend's bytes with every client's: it must find the
    same ones (where the index leaves some out -- carried clients, for a short head -- the tracker scans all)."""
    from lbspec.runtime.proxy import ALIKE

    tracker = _tracker_with(streams)
    found = lambda clients: sorted(c.key for _n, _s, c in tracker._matching(head, limit, clients))  # noqa: E731
    everyone = list(tracker.clients.values())
    assert found(tracker._candidates(head, False)) == found([c for c in everyone if c.backend is None])
    if len(head) >= ALIKE:
        assert found(tracker._candidates(head, True)) == found([c for c in everyone if c.backend is not None])


def test_pairing_compares_a_backend_connection_with_the_clients_in_flight_not_with_all(monkeypatch):
    """Many connections with the same request: each backend connection is compared with the few clients not
    carried yet that start alike, so the comparisons grow with the connections, not with their square."""
    from lbspec.runtime import proxy

    calls = []
    common = proxy._common_length
    monkeypatch.setattr(proxy, "_common_length", lambda one, other: calls.append(1) or common(one, other))
    scenario = Scenario("proxy")
    for k in range(300):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.002, client=f"203.0.{k // 200}.{k % 200 + 1}",
                            chunks=(b"POST /orders HTTP/1.1\r\nHost: shop\r\n" + b"x" * 80,))
    assert codes(scenario.judge(SPEC)) == []
    assert len(calls) < 20 * 300  # a scan of every client made about 300 * 300 / 2


def test_each_round_settles_the_clients_with_bytes_waiting_not_every_client(monkeypatch):
    """Connections live on (idle ones are forgotten after five minutes); a round of judging looks at those
    whose bytes are still waiting to be passed on, so the work follows the traffic, not the table."""
    from lbspec.runtime import proxy

    calls = []
    settle = proxy.ProxyTracker._settle_client
    monkeypatch.setattr(proxy.ProxyTracker, "_settle_client",
                        lambda self, client, cutoff: calls.append(1) or settle(self, client, cutoff))
    scenario = Scenario("proxy")
    for k in range(300):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.02, client=f"203.0.{k // 200}.{k % 200 + 1}")
    assert codes(scenario.judge(SPEC)) == []
    assert len(calls) < 3 * 300  # every client in every round made 3,000


def test_a_backend_connection_whose_bytes_show_before_its_clients_still_pairs():
    """Two captures' clocks a hair apart (a skew estimated a little off): the LB's copy of a short request
    shows a tenth of a millisecond before the client's request.  It pairs once the client's bytes show."""
    scenario = Scenario("proxy")
    for k in range(3):
        scenario.proxy_flow("10.1.0.11", k * 0.05, client=f"203.0.113.{k + 1}", chunks=(b"hello %d" % k,),
                            delay=-0.0001)
    report = scenario.judge(SPEC)
    assert codes(report) == [] and report.summary["proxy"]["bytes"]["lb_to_backend"] == 3 * 7


def test_connections_that_reuse_a_client_port_are_each_paired_with_their_own(cli, spec_file, tmp_path):
    """Three connections from one client port, a few milliseconds apart, with the same bytes, each carried to
    another backend.  Read from two captures, the client side of a slice of time is taken before its backend
    side: the third connection had replaced the first two before their backend connections came, which then
    carried "the bytes of" the third (LB205) or of no one (LB208)."""
    scenario = Scenario("proxy")
    for k in range(3):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12", "10.1.0.13"][k], k * 0.05, cport=41000, close=0.04)
    client, backend = scenario.write(tmp_path)
    backends = "backend b1 10.1.0.11:8080\n        backend b2 10.1.0.12:8080\n        backend b3 10.1.0.13:8080"
    run = cli("monitor", spec_file(spec(mode="proxy", backends=backends)), "--client-side", str(client),
              "--backend-side", str(backend), "--format", "json")
    document = json.loads(run.out)
    assert [d["code"] for d in document["diagnostics"] if d["severity"] != "info"] == [] and run.code == 0
    summary = document["monitor"]
    assert summary["flows"] == 3 and summary["proxy"]["carried"] == 3
    assert {b["backend"]: b["flows"] for b in summary["backends"]} == {"b1": 1, "b2": 1, "b3": 1}


def test_connections_that_reuse_a_client_port_and_send_nothing_are_each_counted():
    """A SYN with a new sequence number on the 5-tuple of a connection that sent nothing (one that connects and
    leaves) opens a connection of its own too; one sent again (the same number) does not."""
    scenario = Scenario("proxy")
    for k in range(3):
        scenario.proxy_flow("10.1.0.11", k * 0.05, cport=41000, close=0.04, chunks=())
    again = [s for s in scenario.packets if s.side == "client" and s.packet[TCP].flags == "S"][0]
    scenario.add(again.time - START + 0.001, "client", again.packet[IP].copy())
    report = scenario.judge(SPEC)
    assert report.summary["proxy"]["client_connections"] == 3 and report.summary["flows"] == 3
