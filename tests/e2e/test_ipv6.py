"""End to end in IPv6: nftables DNAT in a lab whose every address is IPv6.

An IPv6 network talks to itself: neighbour discovery (the LB answering a
backend's solicitation, unicast, to the backend's address), router
solicitations, multicast listener reports.  None of it is the LB's traffic,
and the correct configuration must give no verdict amid it; a fault must
still give its code.  The harness's network driver plays IPv6 traces there.
"""

from __future__ import annotations

import json
import sys
from ipaddress import ip_address

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
from scapy.utils import rdpcap

from lbspec import strategies
from lbspec.harness import Harness, LabMismatch, Network, SearchSettings, Segment, Send, Trace

from .helpers import (DRIVER_SPEC, dnat, dnat_spec, endpoint, imported_ruleset, monitor, tcp_drops_are_flagged,
                      udp_drops_are_flagged, verdicts)

pytestmark = pytest.mark.e2e


@pytest.fixture
def lab6(lab_factory):
    return lab_factory(("b1", "b2"), family=6)


def test_a_correct_dnat_has_no_violation_amid_neighbour_discovery(lab6, tmp_path):
    lab6.install(dnat(lab6))
    with lab6.capture(tmp_path) as capture:
        results = lab6.traffic(tcp=[endpoint(lab6.vip, 80)], udp=[endpoint(lab6.vip, 53)], connections=10, datagrams=10)
    assert all(r["error"] is None for r in results)
    assert {r["answered_by"] for r in results if r["proto"] == "tcp"} == {"b1", "b2"}
    backends = {lab6.address("b1"), lab6.address("b2")}
    chatter = [f for f in rdpcap(str(capture.backend_side))
               if (ICMPv6ND_NA in f or ICMPv6ND_NS in f) and f[IPv6].dst in backends]
    assert chatter, "no neighbour discovery to a backend's address: the test shows nothing"
    code, document = monitor(dnat_spec(tmp_path, lab6), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["pairing_rate"] == 1.0 and summary["listened_ingress"] > 50


def test_large_udp_datagrams_in_fragments_have_no_violation(lab6, tmp_path):
    """4000-byte datagrams leave the client in three fragments, each behind a fragment header."""
    lab6.install(dnat(lab6))
    with lab6.capture(tmp_path) as capture:
        results = lab6.traffic(udp=[endpoint(lab6.vip, 53)], datagrams=8, udp_size=4000, interval=0.01, timeout=0.5)
    assert all(r["error"] is None for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab6), capture)
    assert verdicts(document) == {} and code == 0
    assert document["monitor"]["fragments"] >= 2 * 8


def test_random_drops_are_LB200(lab6, tmp_path):
    lab6.install(dnat(lab6, drop_percent=25))
    udp_drops_are_flagged(lab6, tmp_path, dnat_spec(tmp_path, lab6))


@pytest.mark.parametrize(("fault", "code"), [("drop_percent", "LB200"), ("drop_reply_percent", "LB215")])
def test_tcp_segments_dropped_at_random_are_flagged_though_tcp_sent_them_again(lab6, tmp_path, fault, code):
    tcp_drops_are_flagged(lab6, tmp_path, fault, code)


def test_live_monitoring_with_the_spec_imported_from_the_live_ruleset(lab6, tmp_path):
    """`nft -j list ruleset` of the IPv6 DNAT, imported; then `lbspec monitor --live` on both of the LB's
    interfaces (a BPF filter of IPv6 hosts) while clients talk: no verdict, every packet paired."""
    lab6.install(dnat(lab6))
    spec = imported_ruleset(lab6, tmp_path)
    argv = [sys.executable, "-m", "lbspec", "monitor", spec, "--live", f"client:{lab6.client_interface}",
            "--live", f"backend:{lab6.backend_interface}", "--duration", "4", "--format", "jsonl"]
    process = lab6.resources.spawn(lab6.lb.argv(argv), ready="listening on", timeout=30)
    results = lab6.traffic(tcp=[endpoint(lab6.vip, 80)], udp=[endpoint(lab6.vip, 53)], connections=6, datagrams=6)
    out, _err = process.communicate(timeout=30)
    assert all(r["error"] is None for r in results)
    lines = [json.loads(x) for x in out.splitlines()]
    assert process.returncode == 0 and len(lines) == 1  # the summary alone
    summary = lines[0]["summary"]
    assert summary["pairing_rate"] == 1.0 and summary["listened_ingress"] > 30


def _trace(lab, client: str) -> Trace:
    """Two TCP connections and three datagrams from ``client``."""
    vip, events = ip_address(lab.vip), []
    for flow, start in ((1, 0.0), (2, 0.002)):
        sport = 41000 + flow
        events.append(Send(start, Segment("tcp", ip_address(client), vip, sport, 80, frozenset({"syn"})), flow))
        events.append(Send(start + 0.005, Segment("tcp", ip_address(client), vip, sport, 80, frozenset({"psh", "ack"}),
                                                  payload=b"flow %d" % flow), flow))
    events += [Send(0.004 + 0.01 * k, Segment("udp", ip_address(client), vip, 5003, 53, payload=b"query %d" % k), 3)
               for k in range(3)]
    return Trace(tuple(sorted(events, key=lambda e: e.time)))


def test_the_network_driver_plays_ipv6_traces_and_a_search(lab6, tmp_path):
    harness = Harness(dnat_spec(tmp_path, lab6, text=DRIVER_SPEC), search=SearchSettings(examples=3, seed=20241125),
                      artifacts=tmp_path / "a")
    driver = Network(lab6, dnat(lab6))
    judgement = harness.verify(driver, _trace(lab6, "2001:db8:c1::7"))
    assert judgement.codes == [] and judgement.report.summary["pairing_rate"] == 1.0
    assert all(f["error"] is None and f["answers"] for f in driver.last_flows.values())
    search = harness.check(lambda: Network(lab6, dnat(lab6), max_duration=1.5),
                           traffic=strategies.traffic(harness.spec, faults=False, max_steps=3, max_burst=4))
    assert search.minimal is None and search.runs >= 3
    with pytest.raises(LabMismatch):
        harness.verify(driver, _trace(lab6, "198.51.100.7"))  # an IPv4 client in an IPv6 lab
