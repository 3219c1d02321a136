"""End to end: `lbspec monitor --live` as a process of its own, sniffing interfaces in network namespaces.

It is stopped the ways a user stops it (Ctrl-C, a service manager's SIGTERM)
and must end with the summary; verdicts are read from its output as it runs.
Skipped (with the reason) only where network namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time

import pytest

from lbspec.lab import VIP, Haproxy
from lbspec.lab.fixtures import require_namespaces
from lbspec.lab.netns import Namespace, Resources, run, unique_prefix

from .helpers import CONFIGS, dnat, dnat_spec, imported

pytestmark = pytest.mark.e2e

SPEC = """
service web {
    vip 192.0.2.10
    listen udp 53
    pool app {
        backend b1 10.0.2.11:5353
    }
    forward udp 53 to app
}
"""


@pytest.fixture
def resources():
    require_namespaces()
    made = Resources()
    try:
        yield made
    finally:
        made.close()


def start(resources: Resources, namespace: Namespace, spec: str, *argv: str) -> subprocess.Popen:
    """`lbspec monitor SPEC ARGV --format jsonl` in ``namespace``, once it listens."""
    command = [sys.executable, "-m", "lbspec", "monitor", spec, *argv, "--format", "jsonl"]
    return resources.spawn(namespace.argv(command), ready="listening on", timeout=30)


def stop(process: subprocess.Popen, sig: int) -> tuple[int, list[dict]]:
    """Send ``sig``; the exit code and every line the monitor printed since :func:`await_code`, as JSON."""
    process.send_signal(sig)
    out, _err = process.communicate(timeout=60)
    return process.returncode, [json.loads(line) for line in out.splitlines()]


def await_code(process: subprocess.Popen, code: str, timeout: float = 30.0) -> list[dict]:
    """The lines the running monitor prints, up to the first verdict ``code`` (within ``timeout`` seconds)."""
    lines: list[dict] = []
    pending = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout.fileno(), selectors.EVENT_READ)
        while not any(line.get("code") == code for line in lines):
            left = deadline - time.monotonic()
            assert left > 0 and process.poll() is None, f"no {code} streamed: {lines}"
            if selector.select(left):
                pending += os.read(process.stdout.fileno(), 65536)
                *complete, pending = pending.split(b"\n")
                lines += [json.loads(line) for line in complete]
    assert not pending, "a line came in pieces"
    return lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_run_with_the_summary(resources, tmp_path, sig):
    namespace = resources.namespace(unique_prefix() + "-live")
    spec = tmp_path / "web.lbspec"
    spec.write_text(SPEC)
    process = start(resources, namespace, str(spec), "--live", "lo")
    code, lines = stop(process, sig)
    assert code == 0 and "summary" in lines[-1]


def test_a_load_balancer_dropping_one_backends_traffic_is_flagged_while_it_runs(lab, tmp_path):
    lab.install(dnat(lab))
    lab.lb.run("nft", "-f", "-", input=f"""table ip fault {{
  chain forward {{ type filter hook forward priority filter; policy accept; ip daddr {lab.address("b2")} drop; }}
}}
""")
    process = start(lab.resources, lab.lb, dnat_spec(tmp_path, lab), "--live", f"client:{lab.client_interface}",
                    "--live", f"backend:{lab.backend_interface}")
    results = lab.traffic(tcp=[f"{VIP}:80"], connections=6, messages=1, timeout=0.3)
    failed = sum(1 for r in results if r["error"] is not None)
    assert 0 < failed < len(results), results
    streamed = await_code(process, "LB200")  # before the run ends
    code, rest = stop(process, signal.SIGINT)
    verdicts = [line for line in streamed + rest[:-1] if line["severity"] in ("error", "warning")]
    assert code == 1 and {v["code"] for v in verdicts} == {"LB200"}
    assert len(verdicts) == failed and rest[-1]["summary"]["verdicts"] == {"LB200": failed}


@pytest.mark.skipif(Haproxy.unavailable() is not None, reason=Haproxy.unavailable() or "")
def test_a_proxy_judged_live_through_a_backend_s_death_has_no_false_verdict(lab, tmp_path):
    """HAProxy (proxy mode: byte streams, connection attempts, health checks) judged while it runs, a backend
    killed halfway: what it does is within the spec imported from its config, live as from files."""
    config = CONFIGS / "haproxy" / "lab-tcp-checks.cfg"
    lab.install(Haproxy(config))
    process = start(lab.resources, lab.lb, imported("haproxy", config, tmp_path), "--live",
                    f"client:{lab.client_interface}", "--live", f"backend:{lab.backend_interface}")
    time.sleep(1.5)  # HAProxy's servers fully up: a first good check, a second in
    results = lab.traffic(tcp=[f"{VIP}:80"], connections=10, messages=3)
    lab.kill_backend("b2")
    results += lab.traffic(tcp=[f"{VIP}:80"], connections=10, interval=0.2)
    time.sleep(1.0)
    code, lines = stop(process, signal.SIGINT)
    assert [line["code"] for line in lines[:-1] if line["severity"] in ("error", "warning")] == [] and code == 0
    summary = lines[-1]["summary"]
    assert summary["proxy"]["client_connections"] == len(results)
    assert summary["proxy"]["failed_attempts"]["refused"] > 0  # the attempts at b2 before its checks failed


def test_an_interface_that_goes_away_ends_the_run_without_false_verdicts(lab, tmp_path):
    lab.install(dnat(lab))
    lab.serve()
    process = start(lab.resources, lab.lb, dnat_spec(tmp_path, lab), "--live", f"client:{lab.client_interface}",
                    "--live", f"backend:{lab.backend_interface}")
    sending = threading.Thread(target=lab.traffic, kwargs={"udp": [f"{VIP}:53"], "datagrams": 50,
                                                           "interval": 0.02, "timeout": 0.1})
    sending.start()
    try:
        time.sleep(0.8)  # datagrams flow both ways, then the backend side's interface is deleted under them
        lab.lb.ip("link", "del", lab.backend_interface)
        out, _err = process.communicate(timeout=60)  # it ends by itself
    finally:
        sending.join(60)
    lines = [json.loads(line) for line in out.splitlines()]
    gone = [line for line in lines if line.get("code") == "LB209" and "gone_at" in line.get("data", {})]
    assert process.returncode == 0 and "summary" in lines[-1]
    assert [line["data"]["file"] for line in gone] == [f"live:{lab.backend_interface}"]
    summary = lines[-1]["summary"]
    assert summary["verdicts"] == {} and summary["packets"] > 0  # no LB200 for what came after


# What an LB on VLAN trunks sends and receives, written onto veth links: a kernel without 802.1Q support (the
# 8021q module) makes no VLAN interfaces, so the tagged frames are injected -- the sniffing, the filter and the
# decoding are the real ones.
_TAGGED = """
import sys
from scapy.all import Dot1Q, Ether, IP, UDP, Raw, conf
client_side, backend_side = conf.L2socket(iface=sys.argv[1]), conf.L2socket(iface=sys.argv[2])
for k in range(8):
    body = b"query %d" % k
    client_side.send(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=100)
                     / IP(src="203.0.113.7", dst="192.0.2.10") / UDP(sport=40000 + k, dport=53) / Raw(body))
    if k != 3:  # the LB drops this one
        backend_side.send(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:03") / Dot1Q(vlan=200)
                          / IP(src="203.0.113.7", dst="10.0.2.11", ttl=63) / UDP(sport=40000 + k, dport=5353)
                          / Raw(body))
"""


def test_frames_sniffed_on_vlan_trunks_are_judged_like_untagged_ones(resources, tmp_path):
    prefix = unique_prefix()
    monitor, injector = resources.namespace(prefix + "-mon"), resources.namespace(prefix + "-inj")
    for side in "cb":
        run(["ip", "link", "add", f"{prefix}{side}", "netns", injector.name, "type", "veth", "peer", "name",
             f"{prefix}{side.upper()}", "netns", monitor.name])
        injector.ip("link", "set", f"{prefix}{side}", "up")
        monitor.ip("link", "set", f"{prefix}{side.upper()}", "up")
    spec = tmp_path / "web.lbspec"
    spec.write_text(SPEC)
    process = start(resources, monitor, str(spec), "--live", f"client:{prefix}C", "--live", f"backend:{prefix}B")
    injector.run(sys.executable, "-c", _TAGGED, f"{prefix}c", f"{prefix}b")
    await_code(process, "LB200")
    code, rest = stop(process, signal.SIGINT)
    summary = rest[-1]["summary"]
    assert code == 1 and summary["verdicts"] == {"LB200": 1}
    assert summary["packets"] == 15 and summary["decoded"] == 15
