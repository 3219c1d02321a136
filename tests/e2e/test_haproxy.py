"""End to end: HAProxy in TCP mode (proxy mode), run from the importer's lab configs, judged with the spec
`lbspec import` makes of them.  Skipped (with the reason) only where HAProxy or namespaces are missing.

Faults hit b2 (`app2`) between two runs of traffic in one capture.  The spec's health settings decide:
connections HAProxy sends to the dead backend within the detection window are allowed; after it, LB202.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lbspec.lab import Haproxy

from .helpers import CONFIGS, TARGET, answered, around, imported, monitor, verdicts

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(Haproxy.unavailable() is not None,
                                                  reason=Haproxy.unavailable() or "")]

CHECKS = CONFIGS / "haproxy" / "lab-tcp-checks.cfg"
NO_CHECKS = CONFIGS / "haproxy" / "lab-tcp-nocheck.cfg"


@pytest.fixture
def lab(lab_factory):
    return lab_factory(backends=("b1", "b2", "b3"), udp=())


def test_the_lab_config_has_no_violation_and_every_byte_is_relayed(lab, tmp_path):
    lab.install(Haproxy(CHECKS))
    first, then, capture = around(lab, tmp_path)
    assert set(answered(first + then)) == {"b1", "b2", "b3"} and None not in answered(then)
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    assert proxy["client_connections"] == len(first + then)
    assert set(proxy["failed"].values()) == {0} and set(proxy["failed_attempts"].values()) == {0}
    moved = proxy["bytes"]
    assert moved["client_to_lb"] == moved["lb_to_backend"] > 0
    assert moved["backend_to_lb"] == moved["lb_to_client"] > 0
    assert sum(b["flows"] for b in document["monitor"]["backends"]) == len(first + then)


def test_with_checks_a_killed_backend_is_allowed_its_detection_window(lab, tmp_path):
    lab.install(Haproxy(CHECKS))
    first, then, capture = around(lab, tmp_path, lambda: lab.kill_backend("b2"), after=24, timeout=0.3)
    failed = answered(then).count(None)
    assert failed >= 1, f"HAProxy sent nothing to the dead backend: the fault was not seen: {then}"
    assert None not in answered(then)[-6:]  # HAProxy's checks took it out
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    assert proxy["failed"]["backend_refused"] == failed and proxy["failed"]["lb_reset"] == 0
    assert any(e["backend"] == "app2" and e["state"] == "down" for e in document["monitor"]["health"])


def test_without_checks_a_killed_backend_keeps_getting_connections_LB202(lab, tmp_path):
    """THE demonstration.  One spec judges both configs: the one `lbspec import` makes of the config WITH
    checks (a 5 s detection window).  The configs then differ only in what HAProxy does, so the verdict is
    about HAProxy, not about two specs: with checks it passes (the test above), without them it keeps
    sending new connections to the dead backend past the window.  The config's own import (`health none`:
    nothing detects a failure, so no grace) flags it as well, sooner."""
    lab.install(Haproxy(NO_CHECKS))
    first, then, capture = around(lab, tmp_path, lambda: lab.kill_backend("b2"), after=36, timeout=0.3)
    assert None in answered(then)[-6:]  # nothing took the dead backend out
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    found = verdicts(document)
    assert set(found) == {"LB202"} and code == 1
    assert {v["data"]["backend"] for v in found["LB202"]} == {"app2"}
    assert all(v["data"]["down_for_s"] >= v["data"]["detection_s"] == 5.0 for v in found["LB202"])
    code, own = monitor(imported("haproxy", NO_CHECKS, tmp_path, "own.lbspec"), capture)
    assert set(verdicts(own)) == {"LB202"} and code == 1
    assert len(verdicts(own)["LB202"]) > len(found["LB202"])


def test_a_blocked_backend_is_a_connection_timeout_not_a_drop(lab, tmp_path):
    lab.install(Haproxy(CHECKS))
    first, then, capture = around(lab, tmp_path, lambda: lab.block_backend("b2"), after=45, timeout=0.3)
    assert None in answered(then) and None not in answered(then)[-4:]  # a silent check takes `inter` to fail
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    proxy = document["monitor"]["proxy"]
    assert proxy["failed"]["backend_timeout"] >= 1 and proxy["failed_attempts"]["timeout"] >= 1
    assert proxy["failed"]["backend_refused"] == proxy["failed"]["lb_reset"] == 0


def test_a_slowed_backend_is_no_drop_by_the_LB(lab, tmp_path):
    lab.install(Haproxy(CHECKS))
    first, then, capture = around(lab, tmp_path, lambda: lab.slow_backend("b2"), after=9, timeout=2.0)
    assert None not in answered(first + then) and "b2" in answered(then)
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0  # HAProxy passed the bytes on in time; b2 answered late
    assert set(document["monitor"]["proxy"]["failed"].values()) == {0}


def clean_with(lab, tmp_path, old: str, new: str) -> tuple[list[dict], dict]:
    """The lab config with ``old`` made ``new``, run and judged with the spec imported from it: no violation.
    Returns the traffic and the monitor's document."""
    config = tmp_path / "variant.cfg"
    config.write_text(CHECKS.read_text().replace(old, new))
    lab.install(Haproxy(config))
    first, then, capture = around(lab, tmp_path)
    code, document = monitor(imported("haproxy", config, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    return first + then, document


@pytest.mark.parametrize("balance", ["balance source\n    hash-type consistent", "balance first"])
def test_a_balance_that_sends_the_lab_s_traffic_to_one_backend_is_no_imbalance(lab, tmp_path, balance):
    """`balance source`: every connection of the lab's one client goes to the backend its address hashes to.
    That is one pick, not 24 (LB206 before the balance test counted clients).  `balance first`: every
    connection goes to the first server, which has no `maxconn` to fill; no share is meant, and the imported
    spec waives the balance property (LB206 before it did)."""
    traffic, document = clean_with(lab, tmp_path, "balance roundrobin", balance)
    assert len(set(answered(traffic))) == 1
    assert sum(b["flows"] for b in document["monitor"]["backends"]) == len(traffic)  # the summary: flows


@pytest.mark.parametrize("option", ["send-proxy", "send-proxy-v2"])
def test_a_proxy_protocol_header_ahead_of_each_connection_is_no_violation(lab, tmp_path, option):
    """`send-proxy`: HAProxy tells each server whose connection it is, in a header ahead of the client's
    bytes -- its checks send one too.  Every connection was LB200 and LB208 before the monitor read them."""
    traffic, document = clean_with(lab, tmp_path, "rise 1", f"rise 1 {option}")
    proxy = document["monitor"]["proxy"]
    assert proxy["carried"] == len(traffic) and proxy["proxy_protocol"]["to_backends"] > proxy["carried"]  # checks
    assert proxy["bytes"]["client_to_lb"] == proxy["bytes"]["lb_to_backend"]


@pytest.mark.parametrize("checks", [
    "option tcp-check\n    tcp-check send hello\\n\n    tcp-check expect rstring .",  # `health tcp "hello\n"`
    "option httpchk",  # `OPTIONS / HTTP/1.0`, which the lab's servers answer 200
])
def test_checks_that_send_data_are_checks_not_connections_no_client_explains(lab, tmp_path, checks):
    """Each check carries bytes to its server: for `tcp-check send`, the imported spec says which; an HTTP
    check of any method asks for the health path.  Every check was LB208 before (the monitor knew HTTP
    checks by `GET` alone, and a tcp check by its carrying nothing)."""
    traffic, document = clean_with(lab, tmp_path, "    balance roundrobin\n", f"    balance roundrobin\n    {checks}\n")
    assert set(answered(traffic)) == {"b1", "b2", "b3"}  # the checks pass: every server takes traffic
    assert document["monitor"]["probes"] > 0


def test_clients_queued_while_every_server_is_at_its_maxconn_are_no_drop(lab, tmp_path):
    """`maxconn 1` on each server, the servers slowed (0.5 s), four clients at once: HAProxy holds the fourth
    connection in its queue (for up to `timeout queue`) until a server has room, and the imported spec
    (`max_conn 1`) allows that wait.  The same capture judged without the limit is LB200: the wait did happen.
    Each held connection was LB200."""
    config = tmp_path / "maxconn.cfg"
    config.write_text(CHECKS.read_text().replace("rise 1", "rise 1 maxconn 1")
                      .replace("timeout connect 1s", "timeout connect 1s\n    timeout queue 10s"))
    lab.install(Haproxy(config))
    traffic, capture = at_once(lab, tmp_path, ("b1", "b2", "b3"), clients=4, connections=3)
    assert None not in answered(traffic) and len(traffic) == 12
    spec = imported("haproxy", config, tmp_path)
    code, document = monitor(spec, capture)
    assert verdicts(document) == {} and code == 0
    unlimited = Path(spec).with_name("unlimited.lbspec")
    unlimited.write_text(Path(spec).read_text().replace(" max_conn 1", ""))
    code, document = monitor(str(unlimited), capture)
    assert set(verdicts(document)) == {"LB200"} and code == 1


def test_least_conn_gives_a_slow_server_fewer_connections_and_that_is_no_imbalance(lab, tmp_path):
    """`balance leastconn`, b1 slowed, three clients at once: b1 holds its connections longer, so it gets
    fewer new ones -- as least_conn means.  The share test holds round_robin and random to the weights, not
    least_conn (LB206 before)."""
    config = tmp_path / "leastconn.cfg"
    config.write_text(CHECKS.read_text().replace("balance roundrobin", "balance leastconn"))
    lab.install(Haproxy(config))
    traffic, capture = at_once(lab, tmp_path, ("b1",), clients=3, connections=25)
    assert None not in answered(traffic) and answered(traffic).count("b1") < len(traffic) / 5
    code, document = monitor(imported("haproxy", config, tmp_path), capture)
    assert verdicts(document) == {} and code == 0


def at_once(lab, directory: Path, slowed: tuple[str, ...], clients: int, connections: int) -> tuple[list[dict], object]:
    """HAProxy's servers fully up (see `around`), then ``slowed`` answering late and ``clients`` clients each
    making ``connections`` connections at once, in one capture.  Returns the connections and the capture."""
    with lab.capture(directory) as capture:
        lab.traffic(tcp=[TARGET], connections=6, interval=0.25)
        for name in slowed:
            lab.slow_backend(name)
        with ThreadPoolExecutor(clients) as pool:
            runs = list(pool.map(lambda _: lab.traffic(tcp=[TARGET], connections=connections, interval=0.02,
                                                       timeout=5.0), range(clients)))
    return [r for run in runs for r in run], capture


@pytest.mark.parametrize("admitted, served", [("10.0.1.0/24", True), ("10.9.0.0/16", False)])
def test_clients_admitted_by_source_are_served_and_the_others_rejected_is_no_drop(lab, tmp_path, admitted, served):
    """`tcp-request connection accept if { src NET }` then `reject`: the imported spec forwards from NET alone
    and rejects the rest.  The lab's client (10.0.1.2) is let in, or not: either way no violation (each
    rejected connection was LB200 before)."""
    rules = f"    tcp-request connection accept if {{ src {admitted} }}\n    tcp-request connection reject\n"
    traffic, _document = clean_with(lab, tmp_path, "    default_backend app\n", rules + "    default_backend app\n")
    assert set(answered(traffic)) == ({"b1", "b2", "b3"} if served else {None})


IDLE_CLIENT = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], 80), timeout=5)
connection.sendall(b"hello\\n")
first = connection.recv(100)
time.sleep(2.5)  # HAProxy closes the connection after 1 s of this
try:
    connection.sendall(b"again\\n")
    second = connection.recv(100)
except OSError:
    second = b""
print(first.decode().split(":")[0], repr(second))
"""


def test_bytes_a_client_sends_after_haproxy_closed_it_at_its_idle_timeout_are_not_a_drop(lab, tmp_path):
    """`timeout client 1s`: the imported spec says `affinity flow timeout 1s`; HAProxy closes the idle
    connection, and what the client sends after that is answered with a RST (LB200 before)."""
    config = tmp_path / "idle.cfg"
    config.write_text(CHECKS.read_text().replace("timeout client 30s", "timeout client 1s"))
    lab.install(Haproxy(config))
    with lab.capture(tmp_path) as capture:
        first = lab.traffic(tcp=[TARGET], connections=6, interval=0.25)
        served, second = lab.client.run(sys.executable, "-c", IDLE_CLIENT, lab.vip, timeout=30).split()
        lab.traffic(tcp=[TARGET], connections=3, interval=0.1)  # the capture goes on: the last bytes are judged
    assert None not in answered(first) and served in ("b1", "b2", "b3") and second == "b''"
    code, document = monitor(imported("haproxy", config, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    assert document["monitor"]["proxy"]["sent_after_close"] == 1


HELD_CLIENTS = """
import socket, sys, time
connections = [socket.create_connection((sys.argv[1], 80), timeout=5) for _ in range(3)]
served = []
for k, connection in enumerate(connections):
    connection.sendall(b"first %d\\n" % k)
    served.append(connection.recv(100).split(b":")[0].decode())
print("ready", flush=True)
time.sleep(1.0)  # b2 is killed meanwhile
after = []
for _ in range(3):  # HAProxy relays the first bytes after the backend's FIN: a half-close
    for k, connection in enumerate(connections):
        try:
            connection.sendall(b"more %d\\n" % k)
            after.append(connection.recv(100).split(b":")[0].decode() or "closed")
        except OSError:
            after.append("error")
    time.sleep(0.2)
with open(sys.argv[2], "w") as out:
    out.write(" ".join(served) + "\\n" + " ".join(after))
"""


def test_bytes_a_client_sends_after_haproxy_closed_it_as_its_backend_died_are_not_a_drop(lab, tmp_path):
    """A backend killed under established connections: HAProxy closes the client connection its backend
    connection carried, and what the client sends after that cannot go anywhere (LB200 before)."""
    lab.install(Haproxy(CHECKS))
    results = tmp_path / "held.txt"
    with lab.capture(tmp_path) as capture:
        lab.traffic(tcp=[TARGET], connections=6, interval=0.25)
        clients = lab.resources.spawn(lab.client.argv([sys.executable, "-c", HELD_CLIENTS, lab.vip, str(results)]),
                                      ready="ready", timeout=15)
        lab.kill_backend("b2")
        clients.wait(timeout=30)
        lab.traffic(tcp=[TARGET], connections=3, interval=0.1)  # the capture goes on: the last bytes are judged
    served, after = (line.split() for line in results.read_text().splitlines())
    assert sorted(served) == ["b1", "b2", "b3"]
    cut_off = served.index("b2")
    assert {after[cut_off + 3 * k] for k in range(3)} <= {"closed", "error"}
    assert "closed" in after and "b2" not in after
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    assert document["monitor"]["proxy"]["sent_after_close"] == 1


def test_connections_that_reuse_a_client_port_are_each_paired_with_their_own(lab, tmp_path):
    """Each client port carries three connections in a row, all sending the same bytes: each is its own
    client connection, carried by its own backend connection, and balanced anew (round robin: every
    backend gets a third).  Before, the next connection on a port replaced the one before it too soon: a
    backend connection carried "a second copy" of another client's bytes (LB205) or no one's (LB208)."""
    lab.install(Haproxy(CHECKS))
    with lab.capture(tmp_path) as capture:
        results = lab.traffic(tcp=[TARGET], connections=30, messages=1, interval=0.01, tcp_reuse=3)
    assert None not in answered(results) and len({r["port"] for r in results}) == 10
    code, document = monitor(imported("haproxy", CHECKS, tmp_path), capture)
    assert verdicts(document) == {} and code == 0
    summary = document["monitor"]
    assert summary["flows"] == summary["proxy"]["client_connections"] == summary["proxy"]["carried"] == 30
    assert {b["backend"]: b["flows"] for b in summary["backends"]} == {"app1": 10, "app2": 10, "app3": 10}
