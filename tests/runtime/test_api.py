"""The Python API the pytest plugin builds on: a Monitor fed packets in memory."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import lbspec
from lbspec.diagnostics import InputError, LbspecError
from lbspec.runtime import Monitor, MonitorOptions

from .scenario import START, Scenario, codes, spec

SPEC = lbspec.loads(spec())


def _segment(dst: str, dport: int, seq: int, data: bytes = b"x") -> IP:
    return IP(src="203.0.113.7", dst=dst, ttl=64) / TCP(sport=40000, dport=dport, flags="PA", seq=seq) / Raw(data)


def test_raw_ip_bytes_and_scapy_packets_mix():
    monitor = Monitor(SPEC)
    monitor.feed(bytes(_segment("192.0.2.10", 80, 1)), time=START, side="client")
    egress = Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:01:0b") / _segment("10.1.0.11", 8080, 1)
    egress.time = START + 0.001
    monitor.feed(egress, side="backend")
    report = monitor.close()
    assert codes(report) == [] and report.summary["paired"] == 1


def test_poll_returns_verdicts_as_they_become_final():
    monitor = Monitor(SPEC)
    monitor.feed(bytes(_segment("192.0.2.10", 80, 1)), time=START, side="client")
    assert monitor.poll() == []  # could still be forwarded
    monitor.feed(bytes(_segment("192.0.2.10", 80, 2)), time=START + 2.0, side="client")
    found = monitor.poll()
    assert [d.code for d in found] == ["LB200"]
    assert monitor.poll() == []
    report = monitor.close()
    assert [d.code for d in report.violations] == ["LB200"]
    assert report.violations[0].data["count"] == 2


def test_advance_lets_time_pass_without_packets():
    monitor = Monitor(SPEC)
    monitor.feed(bytes(_segment("192.0.2.10", 80, 1)), time=START, side="client")
    monitor.advance(START + 5)
    assert [d.code for d in monitor.poll()] == ["LB200"]


def test_health_events_excuse_drops():
    monitor = Monitor(SPEC)
    monitor.health("b1", up=False, time=START - 10)
    monitor.health("b2", up=False, time=START - 10)
    monitor.feed(bytes(_segment("192.0.2.10", 80, 1)), time=START, side="client")
    assert monitor.close().exit_code == 0


def test_report_and_summary():
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11")
    report = scenario.judge(spec())
    summary = report.summary
    assert summary["flows"] == 1 and summary["latency_ms"]["pairs"] == 4
    assert {"packets", "pairing_rate", "backends", "verdicts", "health", "evictions"} <= set(summary)


def test_misuse_is_a_clear_error():
    monitor = Monitor(SPEC)
    with pytest.raises(InputError, match="needs a time"):
        monitor.feed(b"\x45" + bytes(19))
    with pytest.raises(InputError, match="side"):
        monitor.feed(b"\x45" + bytes(19), time=1.0, side="middle")
    with pytest.raises(InputError, match="no single backend"):
        monitor.health("b9", up=False, time=1.0)
    monitor.close()
    with pytest.raises(LbspecError, match="closed"):
        monitor.feed(b"\x45" + bytes(19), time=1.0)
    assert monitor.close().exit_code == 0  # closing twice is fine


def test_options():
    options = MonitorOptions(max_verdicts=2, witnesses=False)
    scenario = Scenario("nat")
    for k in range(5):
        scenario.flow("10.1.0.11", k * 0.1, drop={1})
    report = scenario.judge(spec(), max_verdicts=2, witnesses=False)
    assert len(report.violations) == 2 and report.summary["verdicts"] == {"LB200": 5}
    assert report.summary["verdicts_unlisted"] == 3 and report.violations[0].witness is None
    assert options.max_verdicts == 2


def test_flow_tables_are_bounded_and_evictions_reported():
    scenario = Scenario("nat")
    for k in range(40):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.01, segments=1)
    evicted = {}
    for cap in (1, 16):
        report = scenario.judge(spec(), max_flows=cap)
        (note,) = [d for d in report.diagnostics if d.code == "LB211"]
        assert note.data["max_flows"] == cap
        evicted[cap] = report.summary["evictions"]
    assert evicted[1] > evicted[16] > 0  # the cap given is the cap kept
    with pytest.raises(ValueError):
        MonitorOptions(max_flows=0)


@pytest.mark.parametrize("shift", [1e17, -START - 5e9])  # a clock in the year 3 billion, and before 1970
def test_times_no_calendar_or_pcap_holds_are_judged_shown_and_written(shift, tmp_path):
    import json

    from scapy.utils import rdpcap

    from lbspec.render.json import diagnostic_to_dict
    from lbspec.runtime.witness import write_witness

    scenario = Scenario()
    scenario.flow("10.1.0.11", 0.01, drop={1})
    for sent in scenario.packets:
        sent.time += shift
        sent.packet.time = sent.time
    report = scenario.judge(spec())
    assert codes(report) == ["LB200"]
    (drop,) = [x for x in report.diagnostics if x.code == "LB200"]
    json.dumps(diagnostic_to_dict(drop), default=str)
    written = write_witness(tmp_path, "w.pcap", drop.witness)
    assert len(rdpcap(written)) == len([p for p in drop.witness.packets if p.data])
