"""End to end: an nftables DNAT load balancer in network namespaces, captured on both sides.

The correct configuration must give no verdict; each injected fault must give
its code.  Skipped (with the reason) only where network namespaces cannot be
made.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lbspec.lab import VIP, Forward, NftablesDnat

from .helpers import (DECLARED, TARGET, also, dnat, dnat_spec, imported_ruleset, judged_clean, monitor, run_monitor,
                      tcp_drops_are_flagged, udp_drops_are_flagged, verdicts)

pytestmark = pytest.mark.e2e


def test_the_correct_configuration_has_no_violation(lab, tmp_path):
    lab.install(dnat(lab))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[f"{VIP}:80"], udp=[f"{VIP}:53"], connections=12, datagrams=12, messages=3)
    assert all(r["error"] is None for r in results)
    assert {r["answered_by"] for r in results if r["proto"] == "tcp"} == {"b1", "b2"}
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["pairing_rate"] == 1.0 and summary["listened_ingress"] > 50
    assert {b["backend"]: b["flows"] for b in summary["backends"]} == {"b1": 7, "b2": 6}


def test_captures_taken_while_traffic_flows_have_no_violation(lab, tmp_path):
    """Captures started and stopped on a busy LB, as an operator takes them: the two tcpdumps start and stop
    a moment apart, amid connections.  What only one side's capture could show is not judged (LB200s,
    LB208s and capture gaps at both ends before)."""
    lab.install(dnat(lab))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lab.traffic, tcp=[f"{VIP}:80"], connections=150, messages=3, interval=0.01)
        time.sleep(0.8)
        with lab.capture(tmp_path) as capture:
            time.sleep(0.8)
        results = running.result()
    assert all(r["error"] is None for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    assert document["monitor"]["paired"] > 100


def test_the_correct_configuration_in_one_tcpdump_any_capture(lab, tmp_path):
    lab.install(dnat(lab))
    with lab.capture(tmp_path, combined=True) as capture:
        lab.traffic(tcp=[f"{VIP}:80"], connections=8)
    code, document = run_monitor(dnat_spec(tmp_path, lab), str(capture.both))
    assert capture.dropped == 0 and verdicts(document) == {} and code == 0


def test_random_drops_are_LB200(lab, tmp_path):
    lab.install(dnat(lab, drop_percent=25))
    udp_drops_are_flagged(lab, tmp_path, dnat_spec(tmp_path, lab))


def test_replies_dropped_at_random_are_LB215(lab, tmp_path):
    """The LB drops some of the backends' answers (UDP, after conntrack): each one lost is LB215 -- the
    client sent a datagram, the backend answered, the answer never came back."""
    lab.install(dnat(lab, drop_reply_percent=25))
    udp_drops_are_flagged(lab, tmp_path, dnat_spec(tmp_path, lab), "LB215")


@pytest.mark.parametrize(("fault", "code"), [("drop_percent", "LB200"), ("drop_reply_percent", "LB215")])
def test_tcp_segments_dropped_at_random_are_flagged_though_tcp_sent_them_again(lab, tmp_path, fault, code):
    tcp_drops_are_flagged(lab, tmp_path, fault, code)


def test_an_lb_that_forgets_its_connections_breaks_each_one_LB201(lab, tmp_path):
    """Balancing packet by packet, with no connection tracking, sends each connection's packets to one backend
    after the other (the second knows nothing of it and resets it): an affinity break in every connection."""
    lab.install(dnat(lab, stateless=True))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[TARGET], connections=6, interval=0.01)
    assert any(r["error"] is not None for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB201"} and code == 1
    assert len({v["data"]["flow"] for v in found["LB201"]}) == len(results)
    assert {v["data"]["previous_backend"] for v in found["LB201"]} <= set(DECLARED)


def test_targets_out_of_the_spec_s_weights_are_LB206(lab, tmp_path):
    """The LB sends three connections in four to b1, where the spec gives b1 and b2 the same weight."""
    b1, b2 = ((lab.address(name), 8080) for name in DECLARED)
    lab.install(NftablesDnat(lab.vip, [Forward("tcp", 80, [b1, b1, b1, b2])]))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[TARGET], connections=60, messages=1, interval=0.005)
    assert all(r["error"] is None for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB206"} and code == 1
    facts = found["LB206"][0]["data"]
    assert facts["backends"]["b1"]["share"] == 0.75 and facts["p_value"] < 0.001


def test_large_udp_datagrams_in_fragments_have_no_violation(lab, tmp_path):
    """4000-byte datagrams leave the client as three IP fragments each.  Conntrack reassembles them before
    DNAT and cuts them again as they came (same sizes, same IP ID): every fragment pairs with its own."""
    lab.install(dnat(lab))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(udp=[f"{VIP}:53"], datagrams=12, udp_size=4000, interval=0.01, timeout=0.5)
    assert all(r["error"] is None for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["fragments"] >= 2 * 12  # the answers come back in fragments too
    assert summary["listened_ingress"] == summary["paired"] == 3 * 12


@pytest.mark.parametrize(("where", "lost"), [("egress", 2), ("ingress", 3)])
def test_fragments_after_the_first_dropped_are_LB200(lab, tmp_path, where, lost):
    """Dropped on their way to the backends, only the first fragment of each datagram arrives; dropped
    before conntrack, the datagram is never reassembled and none of it leaves (the first fragment waits
    in the reassembly queue)."""
    lab.install(dnat(lab, drop_later_fragments=where))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(udp=[f"{VIP}:53"], datagrams=8, udp_size=4000, interval=0.01, timeout=0.3)
    assert all(r["error"] is not None for r in results), "the fault was not injected"
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB200"} and code == 1
    assert found["LB200"][0]["data"]["forwarded"] is False
    if where == "egress":
        assert found["LB200"][0]["data"]["fragment"]["offset"] == 1480
    summary = document["monitor"]
    assert summary["listened_ingress"] == 3 * 8 and summary["paired"] == (3 - lost) * 8
    # the last datagram's losses may be at the capture's edge: nothing after them shows the deadline passed
    assert lost * 7 <= sum(v["data"]["count"] for v in found["LB200"]) <= lost * 8


def test_datagrams_sent_on_twice_are_LB205(lab, tmp_path):
    """Each datagram to b1 is duplicated on its way (nftables `dup`): the backend gets it twice, though the
    client sent it once."""
    lab.install(dnat(lab))
    b1 = lab.address("b1")
    also(lab, "forward priority 10", f"ip daddr {b1} udp dport 5353 dup to {b1} device {lab.backend_interface}")
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(udp=[f"{VIP}:53"], datagrams=4, timeout=0.5)  # one flow: all four to b1
        lab.traffic(tcp=[f"{VIP}:80"], connections=4)
    assert all(r["answered_by"] == "b1" for r in results)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB205"} and code == 1
    assert sum(v["data"]["count"] for v in found["LB205"]) == 4


def test_replies_conntrack_does_not_translate_back_are_LB207(lab, tmp_path):
    """b2's UDP answers skip connection tracking (`notrack`), so nothing puts the VIP back as their source: the
    client gets them from b2's own address."""
    lab.install(dnat(lab))
    also(lab, "prerouting priority raw", f"ip saddr {lab.address('b2')} udp sport 5353 notrack")
    with lab.capture(tmp_path) as capture:  # two flows: the first to b1, the second to b2
        results = [r for _ in range(2) for r in lab.traffic(udp=[f"{VIP}:53"], datagrams=3, timeout=0.5)]
    assert [r["answered_by"] for r in results] == ["b1"] * 3 + ["b2"] * 3
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB207"} and code == 1
    assert sum(v["data"]["count"] for v in found["LB207"]) == 3


def test_stateless_rewriting_of_one_udp_flow_is_LB204(lab, tmp_path):
    lab.install(dnat(lab, rewrite_udp_sport=(40001, 40999)))
    with lab.capture(tmp_path) as capture:
        lab.traffic(udp=[f"{VIP}:53"], datagrams=6, udp_source_port=40001, timeout=0.2)
        lab.traffic(tcp=[f"{VIP}:80"], connections=4)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert found["LB204"][0]["data"]["fields"] == ["sport"]
    assert found["LB204"][0]["data"]["count"] == 6
    # the rewritten flow's replies no longer match conntrack: they reach the client untranslated
    assert set(found) <= {"LB204", "LB207"}


def test_a_backend_that_is_gone_but_still_in_the_map_is_LB202(lab, tmp_path):
    everyone = ("b1", "b2", "b3")
    lab.install(dnat(lab, everyone))
    lab.remove_backend("b3")
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[f"{VIP}:80"], connections=42, interval=0.06, timeout=0.12, messages=1)
    assert sum(1 for r in results if r["error"]) >= 10
    code, document = monitor(dnat_spec(tmp_path, lab, everyone), capture)
    found = verdicts(document)
    assert set(found) == {"LB202"} and code == 1
    assert {v["data"]["backend"] for v in found["LB202"]} == {"b3"}
    first_silence = min(e["time"] for e in document["monitor"]["health"] if e["backend"] == "b3")
    assert all(v["data"]["time"] - first_silence >= 2.5 for v in found["LB202"])  # fall 2 x 1s + 0.5s


def test_a_destination_not_in_the_spec_is_LB203(lab, tmp_path):
    lab.install(dnat(lab, ("b1", "b2", "b4")))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[f"{VIP}:80"], connections=9)
    assert {r["answered_by"] for r in results} == {"b1", "b2", "b4"}
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB203"} and code == 1
    assert {v["data"]["destination"] for v in found["LB203"]} == {f"{lab.address('b4')}:8080"}
    assert len(found["LB203"]) == 3


def test_live_monitoring_streams_verdicts(lab, tmp_path):
    lab.install(dnat(lab, drop_percent=25))
    spec = dnat_spec(tmp_path, lab)
    argv = [sys.executable, "-m", "lbspec", "monitor", spec, "--live", f"client:{lab.client_interface}",
            "--live", f"backend:{lab.backend_interface}", "--duration", "4", "--format", "jsonl"]
    process = lab.resources.spawn(lab.lb.argv(argv), ready="listening on", timeout=30)
    results = lab.traffic(udp=[f"{VIP}:53"], datagrams=30, interval=0.01, timeout=0.2)
    out, _err = process.communicate(timeout=30)
    lines = [json.loads(x) for x in out.splitlines()]
    lost = sum(1 for r in results if r["error"] is not None)
    assert lost > 0 and process.returncode == 1
    assert {x["code"] for x in lines[:-1]} == {"LB200"}
    assert lines[-1]["summary"]["violating_packets"] == {"LB200": lost}


def test_the_spec_imported_from_the_live_ruleset_judges_its_traffic_clean(lab, tmp_path):

    lab.install(dnat(lab))
    judged_clean(lab, tmp_path, imported_ruleset(lab, tmp_path))


@pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap is not installed (Debian: tshark)")
def test_the_correct_configuration_in_one_pcapng_of_both_interfaces(lab, tmp_path, monkeypatch):
    """dumpcap -i A -i B, as Wireshark records two interfaces: one pcapng, two interface blocks, frames
    written a buffer of each interface in turn -- here the run is short and each interface's frames come
    in one piece.  Read in batches shorter than the capture, whose frames are put back in time order
    across batches, the output is the same."""
    from scapy.utils import rdpcap

    from lbspec.runtime import capture as reading, session

    lab.install(dnat(lab))
    with lab.capture(tmp_path, combined=True, tool="dumpcap") as capture:
        lab.traffic(tcp=[f"{VIP}:80"], udp=[f"{VIP}:53"], connections=8, datagrams=8, interval=0.005)
    spec = dnat_spec(tmp_path, lab)
    code, document = run_monitor(spec, str(capture.both))
    assert capture.dropped == 0 and verdicts(document) == {} and code == 0
    assert document["monitor"]["pairing_rate"] == 1.0 and document["monitor"]["listened_ingress"] > 40
    times = [float(frame.time) for frame in rdpcap(str(capture.both))]
    late = max(sum(1 for t in times[:i] if t > times[i]) for i in range(len(times)))
    assert late > 16, "dumpcap wrote the frames in time order: nothing to put back"
    batch = late + 1  # no frame follows a whole batch of later frames
    assert len(times) > 2 * batch
    monkeypatch.setattr(session, "CaptureReader", lambda path, source: reading.CaptureReader(path, source,
                                                                                               batch_frames=batch))
    again = run_monitor(spec, str(capture.both))
    assert again == (code, document)


def test_connections_that_reuse_a_source_port_are_each_a_flow(lab, tmp_path):
    """A client that opens a connection on the 5-tuple of its last one (it binds its port, or a NAT in front of
    it reuses one) is balanced anew: round robin sends each port's second connection where its first did not
    go.  Counted as one flow, every port was b1's alone (LB206 on a correct LB)."""
    lab.install(dnat(lab))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[TARGET], connections=40, messages=1, interval=0.01, tcp_reuse=2)
    assert all(r["error"] is None for r in results)
    assert len({r["port"] for r in results}) == 20
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["flows"] == 40
    assert {b["backend"]: b["flows"] for b in summary["backends"]} == {"b1": 20, "b2": 20}
