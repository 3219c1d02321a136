"""IP fragments after the first: paired and judged like any packet, with their datagram's ports.

Each fault beside the near misses that look like it: a datagram whose first
fragment the captures never show, fragments out of order, an LB that
reassembles and cuts the datagram again at its own MTU (or sends it whole).
"""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lbspec.runtime.capture import LINKTYPE_ETHERNET, CaptureReader
from lbspec.runtime.decode import FRAGMENT, OK, decode

from .scenario import Scenario, codes, spec
from .test_decode import _write

MAC = "02:00:00:00:00:01"
B1, B2 = "10.1.0.11", "10.1.0.12"
MODES = {"nat": "nat", "snat": "snat", "dsr": "dsr", "gre": "tunnel gre", "gue": "tunnel gue"}
SIX = {"vip": "2001:db8::10", "client": "2001:db8:9::7"}
SIX_BACKENDS = "backend b1 2001:db8:1::11\n        backend b2 2001:db8:1::12"


def _spec(mode: str = "nat", **kw) -> str:
    return spec(mode=MODES[mode], listen="udp 53", rule="forward udp 53 to app", **kw)


def _scenario(mode: str = "nat", vip: str = "192.0.2.10") -> Scenario:
    scenario = Scenario(mode, vip=vip)
    if mode == "dsr":
        for backend in (B1, B2):
            scenario.arp(backend)
    return scenario


def _figures(report) -> tuple[int, int]:
    return report.summary["listened_ingress"], report.summary["paired"]


def _violation(report, code: str):
    found = [d for d in report.violations if d.code == code]
    assert len(found) == 1, codes(report)
    return found[0]


# ------------------------------------------------------------------ decoding --

def test_the_decoder_says_where_each_fragment_lies(tmp_path):
    datagram = IP(src="203.0.113.7", dst="192.0.2.10", id=77) / UDP(sport=4000, dport=53) / Raw(b"x" * 3000)
    frames = [bytes(Ether(src=MAC, dst=MAC) / piece) for piece in fragment(datagram, 1480)]
    batch = next(CaptureReader(str(_write(tmp_path, LINKTYPE_ETHERNET, frames))).batches())
    for general in (False, True):
        p = decode(batch, 0, general=general)
        assert p["status"].tolist() == [OK, FRAGMENT, FRAGMENT]
        assert p["frag"].tolist() == [1, 1480 * 2 + 1, 2960 * 2]
        assert p["ipid"].tolist() == [77, 77, 77]
        assert p["plen"].tolist() == [1472, 1480, 3008 - 2960]


# ------------------------------------------------------------- clean traffic --

@pytest.mark.parametrize("mode", sorted(MODES))
def test_fragments_forwarded_intact_have_no_verdict(mode):
    scenario = _scenario(mode)
    scenario.datagram(B1, 0.01)
    scenario.datagram(B2, 0.05, size=6000)
    report = scenario.judge(_spec(mode))
    assert codes(report) == []
    assert _figures(report) == (3 + 5, 3 + 5)  # every fragment paired, not only the first of each


def test_ipv6_fragments_forwarded_intact_have_no_verdict():
    scenario = _scenario(vip=SIX["vip"])
    scenario.datagram("2001:db8:1::11", 0.01, client=SIX["client"])
    report = scenario.judge(_spec(vip=SIX["vip"], backends=SIX_BACKENDS))
    assert codes(report) == [] and _figures(report) == (3, 3)


def test_fragments_in_a_capture_of_both_sides():
    scenario = _scenario()
    scenario.datagram(B1, 0.01)
    scenario.datagram(B2, 0.05, drop={2})
    report = scenario.judge(_spec(), combined=True)
    assert codes(report) == ["LB200"]
    assert _violation(report, "LB200").data["fragment"]["offset"] == 2960
    assert _figures(report) == (6, 5)


# ---------------------------------------------------------------------- faults --

@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_dropped_fragment_is_LB200(mode):
    scenario = _scenario(mode)
    scenario.datagram(B1, 0.01, drop={1})
    report = scenario.judge(_spec(mode))
    assert codes(report) == ["LB200"]
    data = _violation(report, "LB200").data
    assert data["forwarded"] is False and data["fragment"] == {"offset": 1480, "ip_id": 4242}


def test_a_dropped_ipv6_fragment_is_LB200():
    scenario = _scenario(vip=SIX["vip"])
    scenario.datagram("2001:db8:1::11", 0.01, client=SIX["client"], drop={2})
    report = scenario.judge(_spec(vip=SIX["vip"], backends=SIX_BACKENDS))
    assert codes(report) == ["LB200"]
    assert _violation(report, "LB200").data["fragment"]["offset"] == 2896  # IPv6: 1448 bytes a fragment


def test_a_drop_is_excused_while_no_backend_is_up():
    scenario = _scenario()
    scenario.datagram(B1, 5.0, drop={0, 1, 2}, reply=False)
    report = scenario.judge(_spec(), events=[(0.0, "b1", False), (0.0, "b2", False)])
    assert codes(report) == []
    assert _figures(report) == (3, 0)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_fragment_sent_to_another_backend_than_its_datagram_is_LB200(mode):
    """Ports are in the first fragment only: an LB that hashes on them sends the rest elsewhere."""
    scenario = _scenario(mode)
    scenario.datagram([B1, B2, B2], 0.01)
    report = scenario.judge(_spec(mode))
    assert codes(report) == ["LB200"]
    data = _violation(report, "LB200").data
    assert data["forwarded"] is True
    assert (data["backend"], data["datagram_backend"]) == ("b2", "b1")
    assert data["fragment"] == {"offset": 1480, "ip_id": 4242}


def test_an_ipv6_fragment_sent_elsewhere_is_LB200():
    scenario = _scenario(vip=SIX["vip"])
    scenario.datagram(["2001:db8:1::11", "2001:db8:1::11", "2001:db8:1::12"], 0.01, client=SIX["client"])
    report = scenario.judge(_spec(vip=SIX["vip"], backends=SIX_BACKENDS))
    assert codes(report) == ["LB200"]
    assert _violation(report, "LB200").data["datagram_backend"] == "b1"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_changed_fragment_is_LB204(mode):
    scenario = _scenario(mode)
    scenario.datagram(B1, 0.01, change={1})
    report = scenario.judge(_spec(mode))
    assert codes(report) == ["LB204"]
    assert _violation(report, "LB204").data["fields"] == ["payload"]
    assert report.summary["changed_in_flight"] == 1


def test_a_changed_first_fragment_through_snat_is_LB204():
    """snat keeps no address or port of the client's; the datagram's IP ID still pairs the first fragment."""
    scenario = _scenario("snat")
    scenario.datagram(B1, 0.01, change={0})
    report = scenario.judge(_spec("snat"))
    assert codes(report) == ["LB204"]


# ----------------------------------------------------------------- near misses --

def test_a_datagram_whose_first_fragment_the_captures_missed_is_not_judged():
    """The captures started after the first fragment went: the rest have no ports, so no rule says what
    they are -- counted, not judged, on either side."""
    scenario = _scenario()
    scenario.datagram(B1, 0.01, hidden={0})
    scenario.datagram(B2, 0.05, hidden={0}, drop={2})
    report = scenario.judge(_spec())
    assert codes(report) == []
    assert report.summary["unjudged_at_edges"] == (2 + 2) + (2 + 1)  # client and backend side of each
    assert report.summary["fragments"] == 4 + 3


@pytest.mark.parametrize("batch", [1, 1 << 16], ids=["packet-by-packet", "batched"])
@pytest.mark.parametrize("reverse", ["client", "backend", "both"])
def test_fragments_before_their_first_are_judged_once_it_comes(reverse, batch):
    scenario = _scenario()
    scenario.datagram(B1, 0.01, reverse=reverse)
    scenario.datagram(B2, 0.05, reverse=reverse, drop={1})
    report = scenario.judge(_spec(), batch=batch)
    assert codes(report) == ["LB200"]
    assert _violation(report, "LB200").data["fragment"]["offset"] == 1480
    assert _figures(report) == (6, 5)
    assert report.summary["unjudged_at_edges"] == 0


@pytest.mark.parametrize("mode", ["nat", "snat"])
@pytest.mark.parametrize("backend_mtu", [1400, 1000, 0], ids=["mtu-1400", "mtu-1000", "whole"])
def test_a_datagram_cut_again_at_other_boundaries_pairs_as_a_whole(mode, backend_mtu):
    """An LB that reassembles (conntrack) and sends on at a smaller MTU, or whole: the pieces differ, the
    datagram does not."""
    scenario = _scenario(mode)
    scenario.datagram(B1, 0.01, backend_mtu=backend_mtu)
    scenario.datagram(B2, 0.05, backend_mtu=backend_mtu, size=2000)
    report = scenario.judge(_spec(mode))
    assert codes(report) == []
    assert _figures(report) == (5, 5)
    assert report.summary["changed_in_flight"] == 0


def test_a_datagram_cut_again_and_changed_is_LB204():
    """Changed and cut at other boundaries: no piece pairs on its bytes, so the first pairs on its headers
    (LB204) and the client's other pieces are not seen forwarded (LB200)."""
    scenario = _scenario()
    scenario.datagram(B1, 0.01, backend_mtu=1400, change={1})
    report = scenario.judge(_spec())
    assert codes(report) == ["LB200", "LB204"]
    assert _violation(report, "LB200").data["fragment"]["offset"] == 1480


# ----------------------------------------------------------------------- jobs --

def test_jobs_give_the_same_output_with_fragments(cli, spec_file, tmp_path):
    scenario = _scenario()
    for k in range(6):
        faults = [{}, {"drop": {1}}, {"backend": [B2, B1, B1]}, {"change": {2}}, {"reverse": "client"},
                  {"backend_mtu": 1000}][k]
        backend = faults.pop("backend", [B1, B2][k % 2])
        scenario.datagram(backend, 0.01 + k * 0.04, **faults)
    client, backend = scenario.write(tmp_path)
    argv = ["monitor", spec_file(_spec()), "--client-side", str(client), "--backend-side", str(backend),
            "--format", "json"]
    one = cli(*argv)
    two = cli(*argv, "--jobs", "2")
    assert one.code == 1 and two.out == one.out
    document = json.loads(one.out)
    assert document["monitor"]["verdicts"] == {"LB200": 2, "LB204": 1}
    assert document["monitor"]["paired"] == 3 * 6 - 1
