"""End to end: full NAT -- nftables DNAT and a postrouting masquerade toward the backends, so that the
backends see the LB as the client and answer it, not the client.  The spec `lbspec import` makes of the
live ruleset says `mode snat`; a spec that says `nat` flags every packet's new source.  Skipped (with the
reason) only where network namespaces cannot be made.
"""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP
from scapy.utils import rdpcap

import lbspec
from lbspec.lab import VIP

from .helpers import (DNAT_SPEC, dnat, dnat_spec, imported_ruleset, judged_clean, monitor, udp_drops_are_flagged,
                      verdicts)

pytestmark = pytest.mark.e2e

SNAT_SPEC = DNAT_SPEC.replace("    balance", "    mode snat\n    balance")


def test_the_spec_imported_from_the_live_ruleset_says_snat_and_judges_its_traffic_clean(lab, tmp_path):
    lab.install(dnat(lab, masquerade=True))
    spec = imported_ruleset(lab, tmp_path)
    assert lbspec.load(spec).services[0].mode.kind == "snat"
    capture = judged_clean(lab, tmp_path, spec)
    # the backends answered the LB, as a capture on an LB's interface shows it (nothing put back early)
    backend_side = {ipaddress.ip_address(lab.address(n)) for n in ("b1", "b2")}
    answers = [p[IP] for p in rdpcap(str(capture.backend_side))
               if IP in p and ipaddress.ip_address(p[IP].src) in backend_side]
    assert answers and {p.dst for p in answers} == {lab.addressing.lb_backend_side}


def test_a_spec_that_says_nat_flags_the_new_source_LB204(lab, tmp_path):
    lab.install(dnat(lab, masquerade=True))
    with lab.capture(tmp_path) as capture:
        lab.traffic(tcp=[f"{VIP}:80"], connections=4)
    code, document = monitor(dnat_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB204"} and code == 1
    assert {tuple(v["data"]["fields"]) for v in found["LB204"]} == {("src",)}


def test_random_drops_are_LB200(lab, tmp_path):
    lab.install(dnat(lab, masquerade=True, drop_percent=25))
    udp_drops_are_flagged(lab, tmp_path, dnat_spec(tmp_path, lab, text=SNAT_SPEC))


def test_a_destination_not_in_the_spec_is_LB203(lab, tmp_path):
    lab.install(dnat(lab, ("b1", "b2", "b4"), masquerade=True))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[f"{VIP}:80"], connections=9)
    assert {r["answered_by"] for r in results} == {"b1", "b2", "b4"}
    code, document = monitor(dnat_spec(tmp_path, lab, text=SNAT_SPEC), capture)
    found = verdicts(document)
    assert set(found) == {"LB203"} and code == 1
    assert {v["data"]["destination"] for v in found["LB203"]} == {f"{lab.address('b4')}:8080"}


def test_a_backend_that_is_gone_but_still_in_the_map_is_LB202(lab, tmp_path):
    """Its silence is seen although the SYNs to it come from the LB's address, not the client's."""
    everyone = ("b1", "b2", "b3")
    lab.install(dnat(lab, everyone, masquerade=True))
    lab.remove_backend("b3")
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[f"{VIP}:80"], connections=42, interval=0.06, timeout=0.12, messages=1)
    assert sum(1 for r in results if r["error"]) >= 10
    code, document = monitor(dnat_spec(tmp_path, lab, everyone, text=SNAT_SPEC), capture)
    found = verdicts(document)
    assert set(found) == {"LB202"} and code == 1
    assert {v["data"]["backend"] for v in found["LB202"]} == {"b3"}
