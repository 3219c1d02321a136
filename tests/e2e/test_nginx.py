"""End to end: nginx `stream` (proxy mode), run from the importer's lab config, judged with the spec
`lbspec import` makes of it.  Skipped (with the reason) only where nginx or namespaces are missing.

nginx has no active health checks: the import says `health none` (no grace for a dead backend).  What
keeps it clean is its passive check: a failed connection is retried on the next server
(`proxy_next_upstream`), and the server is left alone for `fail_timeout` (10 s, longer than the traffic).
"""

from __future__ import annotations

import time

import pytest

from lbspec.lab import NginxStream
from lbspec.lab.balancers import counted

from .helpers import CONFIGS, also, answered, around, endpoint, half_closing, imported, monitor, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(NginxStream.unavailable() is not None,
                                                  reason=NginxStream.unavailable() or "")]

CONFIG = CONFIGS / "nginx" / "lab-stream.conf"


@pytest.fixture
def lab(lab_factory):
    lab = lab_factory(backends=("b1", "b2", "b3"))
    lab.install(NginxStream(CONFIG))
    return lab


def test_the_lab_config_has_no_violation_and_every_byte_is_relayed(lab, tmp_path):
    first, then, capture = around(lab, tmp_path, udp=True)
    assert all(r["error"] is None for r in first + then)
    assert set(answered(first + then)) == {"b1", "b2", "b3"}
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    assert proxy["client_connections"] == len(answered(first + then))
    assert set(proxy["failed"].values()) == {0} and set(proxy["failed_attempts"].values()) == {0}
    moved = proxy["bytes"]
    assert moved["client_to_lb"] == moved["lb_to_backend"] > 0
    assert moved["backend_to_lb"] == moved["lb_to_client"] > 0
    # the datagrams are the udp service's (it shares the VIP with the tcp one): each judged, each forwarded
    datagrams = sum(1 for r in first + then if r["proto"] == "udp")
    assert document["monitor"]["listened_ingress"] == document["monitor"]["paired"] == datagrams
    udp_flows = sum(b["flows"] for b in document["monitor"]["backends"] if b["service"] == "udp_echo")
    assert udp_flows == 1  # one client port


def test_a_killed_backend_is_retried_on_the_next_server(lab, tmp_path):
    first, then, capture = around(lab, tmp_path, lambda: lab.kill_backend("b2"))
    assert None not in answered(then) and "b2" not in answered(then)
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert verdicts(document) == {} and code == 0  # the one refused attempt was made before b2 was known down
    proxy = document["monitor"]["proxy"]
    assert proxy["failed_attempts"]["refused"] == 1 and set(proxy["failed"].values()) == {0}


def test_a_blocked_backend_is_retried_after_the_connect_timeout(lab, tmp_path):
    first, then, capture = around(lab, tmp_path, lambda: lab.block_backend("b2"), timeout=2.5)
    assert None not in answered(then) and "b2" not in answered(then)
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    # the client's bytes waited `proxy_connect_timeout` for the attempt: a backend timeout, not a drop
    assert proxy["failed_attempts"]["timeout"] == 1 and proxy["failed"]["backend_timeout"] == 1


def test_a_slowed_backend_is_no_drop_by_the_LB(lab, tmp_path):
    first, then, capture = around(lab, tmp_path, lambda: lab.slow_backend("b2"), after=9, timeout=2.0)
    assert None not in answered(first + then) and "b2" in answered(then)
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert verdicts(document) == {} and code == 0


def test_a_proxy_protocol_header_ahead_of_each_connection_is_no_violation(lab_factory, tmp_path):
    """`proxy_protocol on`: nginx tells each server whose connection it is, in a header ahead of the
    client's bytes -- for udp, ahead of the first datagram of each client's session."""
    config = tmp_path / "proxied.conf"
    config.write_text(CONFIG.read_text().replace("proxy_timeout", "proxy_protocol on;\n        proxy_timeout"))
    lab = lab_factory(backends=("b1", "b2", "b3"))
    lab.install(NginxStream(config))
    first, then, capture = around(lab, tmp_path, udp=True)
    code, document = monitor(imported("nginx", config, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    assert proxy["carried"] == proxy["proxy_protocol"]["to_backends"] == len(answered(first + then))
    datagrams = sum(1 for r in first + then if r["proto"] == "udp")
    assert document["monitor"]["listened_ingress"] == document["monitor"]["paired"] == datagrams


def test_answers_to_half_closing_clients_that_nginx_never_relays_are_LB215(lab, tmp_path):
    """Without `proxy_half_close on`, nginx ends the whole session when the client half-closes: the answer the
    backend sends after never reaches the client, which was still reading."""
    answers, capture = half_closing(lab, tmp_path)
    assert answers == ["-"] * 4
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert set(verdicts(document)) == {"LB215"} and code == 1
    assert len(verdicts(document)["LB215"]) == 4


def test_with_proxy_half_close_on_the_answers_are_relayed_and_no_violation(lab_factory, tmp_path):
    config = tmp_path / "half-close.conf"
    config.write_text(CONFIG.read_text().replace("proxy_timeout 30s;",
                                                 "proxy_timeout 30s;\n        proxy_half_close on;"))
    lab = lab_factory(backends=("b1", "b2", "b3"))
    lab.install(NginxStream(config))
    answers, capture = half_closing(lab, tmp_path)
    assert sorted(answers) == ["b1", "b1", "b2", "b3"]
    code, document = monitor(imported("nginx", config, tmp_path), capture)
    assert verdicts(document) == {} and code == 0


def test_udp_answers_lost_before_nginx_read_them_are_LB215(lab, tmp_path):
    """The LB's host drops some of the backends' UDP answers on their way in (before nginx reads them): nginx
    never relays those, and each is LB215 -- a proxy's datagrams pair back on their bytes, as in snat."""
    table = also(lab, "input priority 0", "udp sport 5353 numgen random mod 100 < 25 counter drop")
    with lab.capture(tmp_path) as capture:  # four client sockets: flows to both udp backends
        results = [r for _ in range(4) for r in lab.traffic(udp=[endpoint(lab.vip, 53)], datagrams=10, timeout=0.3)]
    dropped = counted(lab, "ip", table)
    assert dropped > 0 and sum(1 for r in results if r["error"] is not None) == dropped
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    found = verdicts(document)
    assert set(found) == {"LB215"} and code == 1
    at_edge = results[-1]["error"] is not None  # the last answer lost: at the capture's edge, maybe not judged
    assert dropped - at_edge <= sum(v["data"]["count"] for v in found["LB215"]) <= dropped



def test_a_udp_session_back_after_proxy_timeout_is_balanced_anew_and_counted_so(lab, tmp_path):
    """A client that keeps its UDP port (NTP, syslog, a resolver with a fixed port) and comes back after nginx
    ended its session (`proxy_timeout 5s`: the import's affinity timeout) starts a new session, balanced anew:
    a move that breaks no affinity, and a flow of its own (it was counted as the first session's)."""
    with lab.capture(tmp_path) as capture:
        first = lab.traffic(udp=[f"{lab.vip}:53"], datagrams=3, interval=0.3, udp_source_port=33333)
        time.sleep(5.5)
        back = lab.traffic(udp=[f"{lab.vip}:53"], datagrams=3, interval=0.3, udp_source_port=33333)
        other = lab.traffic(udp=[f"{lab.vip}:53"], datagrams=3, interval=0.3, udp_source_port=33334)
    sessions = [[r["answered_by"] for r in s] for s in (first, back, other)]
    assert all(len(set(s)) == 1 and None not in s for s in sessions)
    assert sessions[0][0] != sessions[1][0]  # round robin: the session back went elsewhere
    code, document = monitor(imported("nginx", CONFIG, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["flows"] == 3
    flows = {b["backend"]: b["flows"] for b in summary["backends"] if b["backend"].startswith("udp")}
    assert flows == {f"udp_echo-{n}": [s[0] for s in sessions].count(f"b{n}") for n in (1, 2)}
