"""Properties beyond the library's defaults: user patterns, IPv6, several services, other balance units."""

from __future__ import annotations

import numpy as np
import pytest

from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest, ICMPv6MLReport2, ICMPv6ND_NA, ICMPv6ND_NS, IPv6ExtHdrHopByHop

from lbspec.runtime.classify import reopened, returned
from lbspec.runtime.stats import share_test

from .scenario import Scenario, codes, spec


def test_never_forward_to_a_named_backend():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.12", vport=80)
    report = scenario.judge(spec(body="assert never forward for dport 80 to b2"))
    assert codes(report) == ["LB213"]


def test_stick_client_across_connections():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", 0.0)
    scenario.flow("10.1.0.12", 0.1)  # the same client, a new connection, another backend
    assert codes(scenario.judge(spec())) == []  # flow affinity: a new connection may go anywhere
    assert codes(scenario.judge(spec(body="assert stick client"))) == ["LB201"]


def test_a_tightened_response_for_syns_only():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", late={0: 0.01})  # the SYN takes 10ms
    assert codes(scenario.judge(spec(body="assert forward every packet for syn within 5ms"))) == ["LB200"]
    fast = Scenario("nat")
    fast.flow("10.1.0.11", late={1: 0.01})  # a data segment takes 10ms: not in scope
    assert codes(fast.judge(spec(body="assert forward every packet for syn within 5ms"))) == []


def test_ipv6_service():
    scenario = Scenario("nat", vip="2001:db8::10")
    for k in range(4):
        scenario.flow(["2001:db8:1::11", "2001:db8:1::12"][k % 2], k * 0.05, client="2001:db8:9::7", drop={2} if k == 3
                      else set())
    text = spec(vip="2001:db8::10", backends="backend b1 2001:db8:1::11\n        backend b2 2001:db8:1::12")
    report = scenario.judge(text)
    assert codes(report) == ["LB200"]
    assert report.violations[0].data["flow"].startswith("TCP [2001:db8:9::7]:")


SIX = spec(vip="2001:db8::10", backends="backend b1 2001:db8:1::11\n        backend b2 2001:db8:1::12",
           listen="tcp 80, icmp", rule="forward tcp 80 to app port 8080\n    forward icmp to app")


def _link_control(scenario: Scenario, kind: type, side: str, src: str, dst: str, time: float) -> None:
    """An ICMPv6 message ``kind`` from ``src`` to ``dst`` (hop limit 255, as neighbour discovery has it; MLD
    behind a hop-by-hop header, for its router alert)."""
    message = kind(tgt=dst) if kind in (ICMPv6ND_NS, ICMPv6ND_NA) else IPv6ExtHdrHopByHop() / kind()
    scenario.add(time, side, IPv6(src=src, dst=dst, hlim=255) / message)


def test_neighbour_discovery_and_multicast_listener_reports_are_no_lb_traffic():
    """Found on a correct nftables DNAT for IPv6: the LB's neighbour advertisement to a backend's address
    was LB208.  Neighbour discovery and MLD never leave their link: the LB answers them, it does not
    forward them -- neither the LB's own to a backend nor a client's unicast probe of an on-link VIP."""
    scenario = Scenario("nat", vip="2001:db8::10")
    scenario.flow("2001:db8:1::11", 0.0, client="2001:db8:9::7")
    scenario.flow("2001:db8:1::12", 2.0, client="2001:db8:9::7")
    for k, kind in enumerate((ICMPv6ND_NS, ICMPv6ND_NA)):
        _link_control(scenario, kind, "backend", "2001:db8:1::1", "2001:db8:1::11", 1.0 + k * 0.001)
        _link_control(scenario, kind, "client", "2001:db8:9::7", "2001:db8::10", 1.1 + k * 0.001)
    _link_control(scenario, ICMPv6MLReport2, "backend", "2001:db8:1::1", "2001:db8:1::12", 1.2)
    assert codes(scenario.judge(SIX)) == []


def test_an_icmpv6_echo_from_the_lb_to_a_backend_is_still_LB208():
    scenario = Scenario("nat", vip="2001:db8::10")
    scenario.flow("2001:db8:1::11", 0.0, client="2001:db8:9::7")
    scenario.flow("2001:db8:1::12", 2.0, client="2001:db8:9::7")
    scenario.add(1.0, "backend", IPv6(src="2001:db8:1::1", dst="2001:db8:1::11") / ICMPv6EchoRequest())
    assert codes(scenario.judge(SIX)) == ["LB208"]


def test_two_services_are_judged_apart():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", vport=80)
    other = Scenario("nat", vip="192.0.2.20")
    other.flow("10.2.0.11", 0.2, vport=443, bport=443, drop={1}, cport=41000)
    scenario.packets += other.packets
    text = spec() + """
service api {
    vip 192.0.2.20
    listen tcp 443
    pool api {
        backend a1 10.2.0.11
    }
    forward tcp 443 to api
}
"""
    report = scenario.judge(text)
    assert codes(report) == ["LB200"] and report.violations[0].data["service"] == "api"


SHARED_VIP = spec() + """
service dns {
    vip 192.0.2.10
    listen udp 53
    pool resolvers {
        backend r1 10.1.0.21
    }
    forward udp 53 to resolvers
    health none
}
"""


@pytest.mark.parametrize("dropped", ["web", "dns"])
def test_services_sharing_a_vip_each_judge_their_own_ports(dropped):
    """One VIP, a service per protocol and port (HAProxy frontends, nginx `stream` servers on one address):
    each packet is the service's that listens on its port.  The second service's traffic was taken for the
    first's, which does not listen there: nothing of it was judged, a drop went unseen."""
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", 0.0, drop={2} if dropped == "web" else set())
    scenario.flow("10.1.0.21", 0.1, proto="udp", vport=53, bport=53, drop={1} if dropped == "dns" else set())
    report = scenario.judge(SHARED_VIP)
    assert codes(report) == ["LB200"] and report.violations[0].data["service"] == dropped
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"b1": 1, "b2": 0, "r1": 1}


@pytest.mark.parametrize("keeps", ["balance hash(src)", "affinity client timeout 300s"])
def test_where_each_client_keeps_one_backend_the_balance_is_of_clients_not_flows(keeps):
    """Hashing on the client's address (HAProxy `balance source`), or client affinity, sends every
    connection of a client where its first went: flows are not picked one by one, clients are.  Two clients
    with thirty connections each on one backend are two picks, too few to test -- not sixty (LB206 was
    reported on a correct HAProxy with one client).  Twelve clients all on one backend are an imbalance."""
    few = Scenario("nat")
    for k in range(60):
        few.flow("10.1.0.11", k * 0.01, client=f"203.0.113.{k % 2 + 1}", segments=1, reply=False)
    assert codes(few.judge(spec(body=keeps), answer_timeout=1000)) == []
    many = Scenario("nat")
    for k in range(60):
        many.flow("10.1.0.11", k * 0.01, client=f"203.0.113.{k % 12 + 1}", segments=1, reply=False)
    report = many.judge(spec(body=keeps), answer_timeout=1000)
    assert codes(report) == ["LB206"]
    assert report.violations[0].data["flows"] == 12  # the clients: the units the test counts


def test_least_conn_shares_are_not_held_to_the_weights():
    """`least_conn` sends new flows where fewest are open: a backend whose connections last longer gets fewer
    of them (HAProxy `leastconn` with one slow server gave it 14% of 81 flows: LB206 before)."""
    scenario = Scenario("nat")
    for k in range(60):
        scenario.flow(["10.1.0.11", "10.1.0.12", "10.1.0.12", "10.1.0.12"][k % 4], k * 0.01, segments=1, reply=False)
    assert codes(scenario.judge(spec(), answer_timeout=1000)) == ["LB206"]
    assert codes(scenario.judge(spec(body="balance least_conn"), answer_timeout=1000)) == []


def test_balance_by_bytes():
    scenario = Scenario("nat")
    for k in range(60):
        heavy = k % 2 == 0
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.01, segments=1, reply=False,
                      payload=b"x" * (1200 if heavy else 10))
    flows = scenario.judge(spec(), answer_timeout=1000)
    assert "LB206" not in codes(flows)  # flows are split evenly
    by_bytes = scenario.judge(spec(body="assert balance bytes within 10%"), answer_timeout=1000)
    assert codes(by_bytes) == ["LB206"]


def test_balance_by_bytes_is_the_same_whether_flows_end_during_the_run_or_at_its_end():
    """A flow's bytes are folded into its group when it expires (here 300s idle, every 10s), is evicted
    (max_flows) or the run ends: whichever it is, the test sees every flow's bytes."""
    def payload(k: int) -> bytes:
        return b"x" * (1200 if k % 2 == 0 else 10 + k)

    def verdict(gap: float, **options):
        scenario = Scenario("nat")
        for k in range(60):
            scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * gap, segments=1 + k % 3, reply=False,
                          payload=payload(k))
        report = scenario.judge(spec(body="assert balance bytes within 10%"), answer_timeout=1000, **options)
        found = [v for v in report.violations if v.code == "LB206"]
        assert len(found) == 1
        return {k: found[0].data[k] for k in ("backends", "p_value", "p_value_bytes", "p_value_flows", "flows")}

    amounts = [(1 + k % 3) * (len(payload(k)) + 1) for k in range(60)]  # each segment: the payload and a digit
    totals = [float(sum(amounts[0::2])), float(sum(amounts[1::2]))]
    wanted = share_test(totals, float(sum(a * a for a in amounts)), (0.5, 0.5))
    at_the_end = verdict(0.01)
    assert at_the_end["flows"] == 60
    assert at_the_end["p_value_bytes"] == pytest.approx(wanted.p_value, rel=1e-9)
    assert [at_the_end["backends"][b]["share"] for b in ("b1", "b2")] == pytest.approx(wanted.shares)
    assert verdict(20.0) == at_the_end  # most flows expire while the capture goes on
    assert verdict(0.01, max_flows=7) == at_the_end  # evicted, a few at a time


def test_backup_takes_traffic_only_through_failover():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.13")
    pool = "backend b1 10.1.0.11\n        backend b2 10.1.0.12\n        backend spare 10.1.0.13 backup"
    report = scenario.judge(spec(backends=pool))
    assert codes(report) == ["LB203"]
    failover = spec(backends=pool, body="failover to spare when healthy < 1")
    assert codes(scenario.judge(failover)) == []


def test_a_connection_on_the_5_tuple_of_one_before_is_a_flow_of_its_own():
    """Clients that open their second connection from the port of their first (round robin sends it to the
    other backend): sixty flows, thirty each -- not thirty flows all on b1 (LB206 on a correct LB)."""
    scenario = Scenario("nat")
    for k in range(60):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.01, cport=41000 + k // 2, segments=1)
    report = scenario.judge(spec(), answer_timeout=1000)
    assert codes(report) == []
    assert report.summary["flows"] == 60
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"b1": 30, "b2": 30}


def test_a_syn_sent_again_opens_no_connection_and_a_new_one_does():
    # flows 1 and 2 seen before (1 opened by SYN 100, until t=5; 2 without its SYN, until t=5), 3 and 4 not
    stored = {1: (100, 5.0), 2: (-1, 5.0)}
    found = reopened(np.array([1, 1, 1, 2, 3, 3, 4]), np.array([100, 200, 200, 300, 400, 400, 500]),
                     np.array([6.0, 7.0, 7.5, 6.0, 6.0, 6.5, 4.0]),
                     np.array([False, True, True, False, False, True, True]), stored, stored.get)
    # 1: SYN 100 again (same connection), then 200 (a new one), sent again; 2: a SYN after a connection whose
    # SYN was not seen; 3: new, its SYN sent again; 4: new, after packets of an earlier connection
    assert found.tolist() == [1, 3, 6]
    late = reopened(np.array([1]), np.array([999]), np.array([4.0]), np.array([False]), stored, stored.get)
    assert late.tolist() == []  # before the flow's last packet: paired late, of the connection it is in
    assert reopened(np.array([3]), np.array([1]), np.array([9.0]), np.array([False]), stored, stored.get).tolist() == []


def test_a_flow_back_after_its_affinity_timeout_is_a_flow_of_its_own():
    """UDP from clients that keep their port (NTP, syslog, a resolver with a fixed port), each datagram 10 s
    after the last, where the LB keeps a flow 5 s: each is balanced anew, a flow of its own -- not one flow per
    port, all on the backend its first datagram went to (LB206 on a correct LB)."""
    scenario = Scenario("nat")
    for k in range(60):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], (k % 2) * 10 + k * 0.01, proto="udp", vport=53, bport=53,
                      cport=41000 + k // 2, segments=1)
    text = spec(listen="udp 53", rule="forward udp 53 to app", body="affinity flow timeout 5s")
    report = scenario.judge(text, answer_timeout=1000)
    assert codes(report) == []
    assert report.summary["flows"] == 60
    assert {b["backend"]: b["flows"] for b in report.summary["backends"]} == {"b1": 30, "b2": 30}


def test_a_udp_flow_returns_after_its_timeout_and_not_before():
    known = {1: [0, 100.0], 2: [0, 104.0]}  # last seen at 100 s and 104 s
    keys = np.array([1, 1, 2, 3, 3])
    ts = np.array([106.0, 108.0, 106.0, 106.0, 112.0])
    begins = np.array([True, False, True, True, False])
    # 1: back 6 s after it was last seen; 2: 2 s after; 3: new, then 6 s after its first packet here
    assert returned(keys, ts, begins, known, 5.0).tolist() == [0, 4]
    assert returned(keys, ts, begins, known, np.array([5.0, 5.0, 1.0, 10.0, 10.0])).tolist() == [0, 2]
