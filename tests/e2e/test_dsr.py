"""End to end: direct server return with nftables (netdev ingress, `fwd to` the backends' bridge).

Each frame to the VIP leaves with the MAC address of the backend a hash of the
client's address and port picked, its IP header unchanged; the backends hold
the VIP and answer the client from it.  The correct configuration must give no
verdict; a backend the spec does not declare, and random drops, their codes.
Skipped (with the reason) only where network namespaces cannot be made.
"""

from __future__ import annotations

import pytest

from lbspec.lab import NftablesDsr

from .helpers import endpoint, monitor, udp_drops_are_flagged, verdicts

pytestmark = pytest.mark.e2e

SPEC = """
service web {{
    vip {vip}
    listen tcp 80, udp 53
    mode dsr
    pool app {{
        {backends}
    }}
    forward tcp 80 to app
    forward udp 53 to app
    balance hash(src, sport)
    health none
    waive healthy_only "the hash is static: nothing takes a dead backend out"
    waive balance "a hash of a few flows: their shares are chance"
}}
"""


def dsr_spec(directory, lab, names=("b1", "b2")) -> str:
    path = directory / "dsr.lbspec"
    backends = "\n        ".join(f"backend {n} {lab.address(n)}" for n in names)
    path.write_text(SPEC.format(vip=lab.vip, backends=backends))
    return str(path)


def _dsr(lab_factory, family: int = 4, backends=("b1", "b2", "b3")):
    lab = lab_factory(backends, tcp=(80,), udp=(53,), family=family)
    lab.hold_vip()
    return lab


def _traffic(lab, **kw) -> list[dict]:
    return lab.traffic(tcp=[endpoint(lab.vip, 80)], udp=[endpoint(lab.vip, 53)], **kw)


def test_the_correct_configuration_has_no_violation(lab_factory, tmp_path):
    lab = _dsr(lab_factory)
    lab.install(NftablesDsr(lab.vip, ["b1", "b2"]))
    with lab.capture(tmp_path) as capture:
        results = _traffic(lab, connections=20, datagrams=8)
    assert all(r["error"] is None for r in results)
    assert {r["answered_by"] for r in results if r["proto"] == "tcp"} == {"b1", "b2"}  # but once in a million
    code, document = monitor(dsr_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["pairing_rate"] == 1.0 and summary["unattributed"] == 0
    assert sum(b["flows"] for b in summary["backends"]) == 20 + 1  # the datagrams share one client port


def test_a_backend_the_spec_does_not_declare_is_LB203(lab_factory, tmp_path):
    lab = _dsr(lab_factory)
    lab.install(NftablesDsr(lab.vip, ["b1", "b3"]))  # b3 in the place of b2: about half the flows
    with lab.capture(tmp_path) as capture:
        results = _traffic(lab, connections=20, datagrams=4)
    to_b3 = [r for r in results if r["answered_by"] == "b3"]
    assert to_b3, "the hash sent nothing to b3: the fault was not injected"
    code, document = monitor(dsr_spec(tmp_path, lab), capture)
    found = verdicts(document)
    assert set(found) == {"LB203"} and code == 1
    flows = {(r["proto"], r["port"]) for r in to_b3}  # a verdict per flow
    assert len(found["LB203"]) == len(flows)


def test_random_drops_are_LB200(lab_factory, tmp_path):
    lab = _dsr(lab_factory)
    lab.install(NftablesDsr(lab.vip, ["b1", "b2"], drop_percent=25))
    udp_drops_are_flagged(lab, tmp_path, dsr_spec(tmp_path, lab))


def test_in_ipv6_backends_no_capture_ties_to_their_macs_are_a_note_not_a_verdict(lab_factory, tmp_path):
    """The backends' own packets come from their link-local addresses, their answers from the VIP, and
    this LB never asks for their addresses: nothing ties a MAC to a backend.  Every packet is judged as a
    packet, none per backend, and LB214 says so."""
    lab = _dsr(lab_factory, family=6, backends=("b1", "b2"))
    lab.install(NftablesDsr(lab.vip, ["b1", "b2"]))
    with lab.capture(tmp_path) as capture:
        results = _traffic(lab, connections=6, datagrams=4)
    assert all(r["error"] is None for r in results)
    code, document = monitor(dsr_spec(tmp_path, lab), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["pairing_rate"] == 1.0 and summary["unattributed"] >= summary["paired"] > 0
    note = next(x for x in document["diagnostics"] if x["code"] == "LB214")
    assert sorted(note["data"]["macs"]) == sorted(h.mac for h in lab.backends.values())
