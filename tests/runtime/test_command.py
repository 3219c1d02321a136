"""`lbspec monitor` on capture files: inputs, formats, exit codes, witnesses, skew, and input errors."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.l2 import CookedLinuxV2, Ether
from scapy.utils import rdpcap, wrpcap

import lbspec
from lbspec.runtime import sources
from lbspec.runtime.monitor import Monitor
from lbspec.runtime.capture import Damage
from lbspec.runtime.session import capture_notes, inputs_from, open_readers, open_streams

from conftest import limited

from .scenario import CLIENT_MAC, LB_MAC, START, Scenario, codes, ip, spec


@pytest.fixture
def captures(tmp_path):
    """Separate client- and backend-side captures of NAT traffic with one dropped packet."""
    scenario = Scenario("nat")
    for k in range(5):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, drop={2} if k == 3 else set())
    return scenario.write(tmp_path)


@pytest.fixture
def spec_path(spec_file):
    return spec_file(spec())


def test_text_output_shows_the_spec_line_and_the_summary(cli, spec_path, captures):
    run = cli("monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]))
    assert run.code == 1
    assert "error[LB200]" in run.out and "<library>/no_drop.lbspec:5:1" in run.out
    assert "property no_drop" in run.out and "witness:" in run.out
    assert "pairing: 19 of 20 listened packets forwarded" in run.out
    assert "verdicts: LB200 drop 1" in run.out


def test_clean_captures_exit_0(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11")
    client, backend = scenario.write(tmp_path)
    run = cli("monitor", spec_file(spec()), "--client-side", str(client), "--backend-side", str(backend))
    assert run.code == 0, run.out + run.err
    assert "verdicts: no violations" in run.out


def test_json(cli, spec_path, captures):
    run = cli("monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
              "--format", "json")
    document = json.loads(run.out)
    codes = [d["code"] for d in document["diagnostics"]]
    assert "LB200" in codes and "LB212" in codes
    drop = next(d for d in document["diagnostics"] if d["code"] == "LB200")
    assert drop["span"]["file"] == "<library>/no_drop.lbspec"
    (frame,) = drop["data"]["frames"][str(captures[0])]
    dropped = rdpcap(str(captures[0]))[frame - 1]
    assert dropped[TCP].dport == 80 and bytes(dropped[TCP].payload) == b"data1"
    assert drop["data"]["flow"].startswith("TCP 203.0.113.7:") and drop["data"]["property"] == "no_drop"
    assert drop["witness"]["packets"][0]["file"] == str(captures[0])
    assert document["monitor"]["packets"] == len(rdpcap(str(captures[0]))) + len(rdpcap(str(captures[1])))
    assert document["monitor"]["verdicts"] == {"LB200": 1}


def test_jsonl_streams_what_json_reports_then_the_summary(cli, spec_path, captures):
    """Verdicts and notes alike: the clock skew, a damaged file."""
    client, backend = captures
    backend.write_bytes(backend.read_bytes()[:-5])  # cut in the middle of the last record
    argv = ["monitor", spec_path, "--client-side", str(client), "--backend-side", str(backend)]
    lines = [json.loads(x) for x in cli(*argv, "--format", "jsonl").out.splitlines()]
    document = json.loads(cli(*argv, "--format", "json").out)
    streamed = sorted(x["code"] for x in lines[:-1])
    assert streamed == sorted(x["code"] for x in document["diagnostics"])
    assert {"LB200", "LB210", "LB212"} <= set(streamed)
    assert set(lines[-1]) == {"summary"} and lines[-1]["summary"]["verdicts"] == {"LB200": 1}


def test_junit(cli, spec_path, captures):
    run = cli("monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
              "--format", "junit")
    root = ET.fromstring(run.out.split("\n", 1)[1])
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["no_drop"].find("failure").get("type") == "LB200"
    assert cases["integrity"].find("failure") is None


def test_witness_captures_open_in_scapy_and_tshark(cli, spec_path, captures, tmp_path):
    directory = tmp_path / "witnesses"
    run = cli("monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
              "--witness-dir", str(directory), "--format", "json")
    drop = next(d for d in json.loads(run.out)["diagnostics"] if d["code"] == "LB200")
    path = drop["data"]["witness_file"]
    packets = rdpcap(path)
    shown = drop["witness"]["packets"]
    (dropped,) = [p for p in shown if p["involved"]]
    seq = int(re.search(r"seq=(\d+)", dropped["packet"]).group(1))
    assert len(packets) == len(shown) >= 3 and [p[TCP].seq for p in packets].count(seq) >= 1
    if shutil.which("tshark"):
        listing = subprocess.run(["tshark", "-r", path], capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "192.0.2.10" in listing.stdout


def test_text_output_names_each_witness_capture(cli, spec_path, captures, tmp_path):
    argv = ["monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1])]
    directory = tmp_path / "witnesses"
    written = cli(*argv, "--witness-dir", str(directory))
    (path,) = directory.iterdir()
    assert written.code == 1 and str(path) in written.out
    assert str(directory) not in cli(*argv).out


def test_witnesses_that_cannot_be_written_are_LB291_and_exit_2(cli, spec_path, captures, tmp_path):
    """The run goes on and reports every verdict, and says what could not be written."""
    argv = ["monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
            "--format", "json"]
    (name,) = [p.name for p in _written(cli, argv, tmp_path / "fine")]
    directory = tmp_path / "blocked"
    (directory / name).mkdir(parents=True)  # where the witness would go
    run = cli(*argv, "--witness-dir", str(directory))
    document = json.loads(run.out)
    (unwritten,) = [x for x in document["diagnostics"] if x["code"] == "LB291"]
    assert run.code == 2 and document["monitor"]["verdicts"] == {"LB200": 1}
    assert unwritten["data"]["from_verdict"] == 1 and unwritten["severity"] == "warning"
    assert "witness_file" not in next(x for x in document["diagnostics"] if x["code"] == "LB200")["data"]


def test_a_witness_cut_short_is_removed(cli, spec_path, captures, tmp_path):
    """A disk that fills while a witness is written: no capture cut short is left to look like evidence."""
    argv = ["monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
            "--format", "json"]
    (fine,) = _written(cli, argv, tmp_path / "fine")
    assert fine.stat().st_size > 60
    directory = tmp_path / "full"
    done = limited([*argv, "--witness-dir", str(directory)], 60)
    assert done.returncode == 2 and "LB291" in [x["code"] for x in json.loads(done.stdout)["diagnostics"]]
    assert list(directory.iterdir()) == []


def _written(cli, argv, directory):
    assert cli(*argv, "--witness-dir", str(directory)).code == 1
    return list(directory.iterdir())


def test_combined_capture_with_roles_from_addresses(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    for k in range(4):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, drop={1} if k == 2 else set())
    (path,) = scenario.write(tmp_path, combined=True)
    run = cli("monitor", spec_file(spec()), str(path), "--format", "json")
    document = json.loads(run.out)
    assert document["monitor"]["verdicts"] == {"LB200": 1}
    roles = document["monitor"]["roles"]
    assert (roles["ingress"], roles["egress"], roles["backend-reply"], roles["client-reply"]) == (16, 15, 15, 15)



def _gaps(document) -> list:
    """The side each LB209 note says is missing."""
    return [x["data"]["side_missing"] for x in document["diagnostics"] if x["code"] == "LB209"]


@pytest.mark.parametrize("argv, missing", [
    (lambda c, b: [c], "backend"),  # the client side alone, given as a capture of both sides
    (lambda c, b: [b], "client"),
    (lambda c, b: ["--client-side", b, "--backend-side", c], "client"),  # the sides swapped
])
def test_captures_of_one_side_are_LB209(cli, spec_file, captures, argv, missing):
    run = cli("monitor", spec_file(spec()), *argv(*map(str, captures)), "--format", "json")
    assert _gaps(json.loads(run.out)) == [missing]


@pytest.mark.parametrize("vip", ["192.0.2.99", "0.0.0.0"])  # another address; every address (`bind *:80`)
def test_a_spec_whose_vip_the_clients_did_not_use_is_LB209_not_a_silent_pass(cli, spec_file, captures, vip):
    client, backend = map(str, captures)
    run = cli("monitor", spec_file(spec(vip=vip)), "--client-side", client, "--backend-side", backend,
              "--format", "json")
    document = json.loads(run.out)
    assert _gaps(document) == ["client"] and document["monitor"]["listened_ingress"] == 0
    (note,) = [x["data"] for x in document["diagnostics"] if x["code"] == "LB209"]
    assert next(iter(note["destinations"])) == "192.0.2.10:80"  # where the clients went, to give as the VIP
    right = json.loads(cli("monitor", spec_file(spec()), "--client-side", client, "--backend-side", backend,
                           "--format", "json").out)
    assert _gaps(right) == []


def test_an_lb_that_forwards_nothing_is_no_capture_of_one_side(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    for k in range(3):
        scenario.flow("10.1.0.11", k * 0.05, drop={0, 1, 2, 3})  # nothing forwarded, so nothing answered
    (path,) = scenario.write(tmp_path, combined=True)
    document = json.loads(cli("monitor", spec_file(spec()), str(path), "--format", "json").out)
    assert set(document["monitor"]["verdicts"]) == {"LB200"} and _gaps(document) == []

def test_combined_capture_tells_a_routed_packet_from_one_sent_twice():
    # seen twice, a routed packet changes (TTL, MAC) and its first copy is the client's; an egress
    # sent twice does not, and is a duplicate
    routed = Scenario("nat")
    routed.flow("10.1.0.11", 0.01)
    packet = ip("203.0.113.7", "198.51.100.9", ttl=64) / TCP(sport=5555, dport=443, flags="S", seq=1)
    routed.add(0.2, "client", Ether(src=CLIENT_MAC, dst=LB_MAC) / packet)
    routed.add(0.2001, "backend", Ether(src=LB_MAC, dst="02:00:00:00:00:77") / ip("203.0.113.7", "198.51.100.9", ttl=63)
               / packet[TCP].copy())
    report = routed.judge(spec(), combined=True)
    assert codes(report) == [] and report.summary["roles"]["transit"] == 1
    twice = Scenario("nat")
    twice.flow("10.1.0.11", 0.01, twice={2})
    report = twice.judge(spec(), combined=True)
    assert codes(report) == ["LB205"] and "transit" not in report.summary["roles"]


def test_combined_capture_sees_an_untranslated_reply_as_the_second_copy(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", reply_from="10.1.0.11")
    (path,) = scenario.write(tmp_path, combined=True)
    run = cli("monitor", spec_file(spec()), str(path), "--format", "json")
    assert json.loads(run.out)["monitor"]["verdicts"] == {"LB207": 1}


def _cooked(sent):
    """A tcpdump -i any frame: SLL2 with the direction the LB saw it in."""
    inbound = sent.side == "client" and sent.packet.dst == "02:00:00:00:00:fe" or \
        sent.side == "backend" and sent.packet.dst == "02:00:00:00:00:fe"
    inner = sent.packet[Ether].payload
    frame = CookedLinuxV2(pkttype=0 if inbound else 4, proto=0x0800 if inner.name == "IP" else 0x0806) / inner
    frame.time = sent.time
    return frame


def test_tcpdump_any_capture_uses_the_direction(cli, spec_file, tmp_path):
    scenario = Scenario("dsr")
    scenario.arp("10.1.0.11")
    scenario.flow("10.1.0.11", drop={2})
    frames = [_cooked(s) for s in scenario._ended()]
    path = tmp_path / "any.pcap"
    wrpcap(str(path), frames)
    text = spec(mode="dsr", rule="forward tcp 80 to app")
    run = cli("monitor", spec_file(text), str(path), "--format", "json")
    monitor = json.loads(run.out)["monitor"]
    assert monitor["roles"]["ingress"] == 4 and monitor["roles"]["egress"] == 3
    assert monitor["verdicts"] == {"LB200": 1}


def test_clock_skew_is_estimated_and_corrected(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    for k in range(12):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05)
    for sent in scenario.packets:
        if sent.side == "backend":
            sent.time += 0.3
            sent.packet.time += 0.3
    client, backend = scenario.write(tmp_path)
    run = cli("monitor", spec_file(spec()), "--client-side", str(client), "--backend-side", str(backend),
              "--format", "json")
    document = json.loads(run.out)
    skew = next(d for d in document["diagnostics"] if d["code"] == "LB212")
    assert skew["data"]["skew_s"] == pytest.approx(0.3, abs=0.001)
    assert document["monitor"]["verdicts"] == {}
    wrong = cli("monitor", spec_file(spec()), "--client-side", str(client), "--backend-side", str(backend),
                "--format", "json", "--skew", "0")
    assert "LB200" in json.loads(wrong.out)["monitor"]["verdicts"]


def _skewed_pair(tmp_path, skew: float):
    """Client- and backend-side captures of 12 NAT flows whose backend-side clock is ``skew`` ahead."""
    scenario = Scenario("nat")
    for k in range(12):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05)
    for sent in scenario.packets:
        if sent.side == "backend":
            sent.time += skew
            sent.packet.time += skew
    return scenario.write(tmp_path)


def _skewed_streams(tmp_path, skew: float):
    """Client- and backend-side streams of NAT traffic whose backend-side clock is ``skew`` ahead."""
    client, backend = _skewed_pair(tmp_path, skew)
    monitor = Monitor(lbspec.loads(spec()))
    args = SimpleNamespace(captures=[], client_side=[str(client)], backend_side=[str(backend)])
    streams = open_streams(monitor, open_readers(monitor, inputs_from(args)))
    return monitor.compiled, [s for s in streams if s.side == 0], [s for s in streams if s.side == 1]


def test_skew_is_estimated_on_the_first_packets_when_they_show_enough_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SAMPLE", 20)
    monkeypatch.setattr(sources, "ENOUGH_PAIRS", 1)
    estimate = sources.estimate_skew(*_skewed_streams(tmp_path, 0.3))
    assert 0 < estimate.forward_pairs <= 20 and 0 < estimate.reverse_pairs <= 20


def test_skew_falls_back_to_the_whole_first_batch_when_the_first_packets_show_too_few_pairs(tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(sources, "SAMPLE", 4)
    estimate = sources.estimate_skew(*_skewed_streams(tmp_path, 0.3))
    assert estimate.method == "forward and reverse latency"
    assert estimate.seconds == pytest.approx(0.3, abs=0.001)
    assert estimate.forward_pairs > 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=60), st.sampled_from([0, 10, 50, 99, 100]))
def test_skew_percentile_is_numpys(values, q):
    values = np.array(values)
    assert sources._percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-12)


@pytest.mark.parametrize("jobs, flows", [("1", 12), ("2", 12), ("1", 0)])
def test_a_monitor_run_does_not_import_numpy_ma(tmp_path, jobs, flows):
    """numpy 2 imports numpy.ma in np.percentile, np.unique without its indices and np.isin's sort (of
    nothing in nothing, too): a sixtieth of a second of each process of a run, which none of them needs."""
    client, backend = _skewed_pair(tmp_path, 0.3)
    if not flows:  # captures with no packets
        for path in (client, backend):
            path.write_bytes(path.read_bytes()[:24])
    (tmp_path / "web.lbspec").write_text(spec())
    argv = ["lbspec", "monitor", str(tmp_path / "web.lbspec"), "--client-side", str(client), "--backend-side",
            str(backend), "--format", "json", "--jobs", jobs]
    code = ("import runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "from lbspec.runtime import parallel\n"
            "read = parallel._read\n"
            "def _read(*args):\n"
            "    read(*args)\n"
            "    if 'numpy.ma' in sys.modules:\n"
            "        print('a reading process imported numpy.ma', file=sys.stderr)\n"
            "parallel._read = _read\n"
            "try:\n    runpy.run_module('lbspec', run_name='__main__')\n"
            "finally:\n    print('numpy.ma' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.split()[-1:] == ["False"], done.stderr
    assert "reading process" not in done.stderr
    assert json.loads(done.stdout)["monitor"]["flows"] == flows


def test_events_file(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", 5.0, drop={0, 1, 2, 3}, reply=False)  # nothing forwarded: all backends down
    client, backend = scenario.write(tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_text('{"time": 1700000000.0, "backend": "b1", "state": "down"}\n'
                      '# comments and blank lines are fine\n\n'
                      '{"time": "2023-11-14T22:13:20Z", "backend": "b2", "state": "down"}\n')
    run = cli("monitor", spec_file(spec()), "--client-side", str(client), "--backend-side", str(backend),
              "--events", str(events), "--format", "json")
    assert json.loads(run.out)["monitor"]["verdicts"] == {}


def test_text_summary_lists_health_changes_with_their_times(cli, spec_path, captures, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(f'{{"time": {1700000000 + k}, "backend": "b1", "state": "{"down" if k % 2 else "up"}"}}\n'
                              for k in range(1, 26)))
    argv = ["monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
            "--events", str(events)]
    listed = json.loads(cli(*argv, "--format", "json").out)["monitor"]["health"]
    shown = [line for line in cli(*argv).out.splitlines() if line.startswith("health:")]
    assert len(listed) > 20 and len(shown) == 21 and f"{len(listed) - 20:,} more" in shown[-1]
    assert "health: b1 down at 2023-11-14T22:13:21.000000Z (events)" in shown
    iso = r"\d{4}-\d\d-\d\dT[\d:]{8}\.\d{6}Z"
    assert all(re.fullmatch(rf"health: \w+ (up|down) at {iso} \(\w+\)", line) for line in shown[:20])


@pytest.mark.parametrize("content, message", [
    ("not json\n", "not JSON"), ('{"time": 1, "backend": "b9", "state": "down"}\n', "no backend named 'b9'"),
    ('{"time": 1, "backend": "b1", "state": "sideways"}\n', "`state`"), ('{"backend": "b1"}\n', "missing"),
    ('{"time": "yesterday", "backend": "b1", "state": "up"}\n', "ISO 8601"), ("[1, 2]\n", "expected an object"),
    ('{"time": 1, "backend": "b1", "state": "down", "service": "nosuch"}\n', "no service named 'nosuch'"),
    # Python's json reads these as nan and infinities: a health change never (or always) in effect
    *[pytest.param(f'{{"time": {t}, "backend": "b1", "state": "down"}}\n', "`time`", id=f"time {t[:10]}")
      for t in ("NaN", "Infinity", "-1e400", "9" * 400)],
])
def test_bad_events_files_exit_2(cli, spec_path, captures, tmp_path, content, message):
    events = tmp_path / "events.jsonl"
    events.write_text(content)
    run = cli("monitor", spec_path, str(captures[0]), "--events", str(events))
    assert run.code == 2 and message in run.err and "events.jsonl:1" in run.err


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to read"), (["x.pcap", "--duration", "3"], "--duration only applies to --live"),
    (["x.pcap", "--service", "wbe"], "did you mean `web`"), (["x.pcap", "--skew", "soon"], "--skew"),
    (["x.pcap", "--live", "lo"], "cannot be combined"),
    pytest.param(["--live", "lo", "--duration", "inf"], "--duration", marks=pytest.mark.timeout(60)),  # else: for ever
    (["--client-side", "x.pcap"], "--backend-side"), (["--backend-side", "x.pcap"], "--client-side"),
    (["--live", "client:lo", "--live", "client:eth0"], "--live backend:"), (["--live", "backend:lo"], "--live client:"),
])
def test_usage_errors_exit_2(cli, spec_path, argv, message):
    run = cli("monitor", spec_path, *argv)
    assert run.code == 2 and message in run.err


def test_one_side_is_enough_beside_a_capture_of_both(cli, spec_path, captures):
    client, _backend = captures
    assert cli("monitor", spec_path, str(client), "--client-side", str(client), "--format", "json").code in (0, 1)


def test_option_type_errors_exit_2(cli, spec_path):
    for argv in (["--jobs", "0"], ["--max-flows", "many"], ["--tolerance", "-1"], ["--format", "xml"],
                 ["--tolerance", "nan"], ["--tolerance", "inf"], ["--skew", "nan"], ["--skew", "-inf"],
                 ["--live", "lo", "--duration", "nan"]):
        run = cli("monitor", spec_path, "x.pcap", *argv)
        assert run.code == 2 and argv[-2] in run.err


def test_a_bad_capture_is_LB290_and_exit_2(cli, spec_path, tmp_path):
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture" * 10)
    run = cli("monitor", spec_path, str(garbage))
    assert run.code == 2 and "LB290" in run.err and "not a pcap or pcapng file" in run.err
    run = cli("monitor", spec_path, str(tmp_path / "missing.pcap"), "--format", "json")
    assert run.code == 2 and json.loads(run.out)["diagnostics"][0]["code"] == "LB290"
    run = cli("monitor", spec_path, str(garbage), "--format", "jsonl")
    assert run.code == 2 and [json.loads(line)["code"] for line in run.out.splitlines()] == ["LB290"]


def test_an_invalid_spec_exits_2(cli, spec_file, captures):
    run = cli("monitor", spec_file("service broken {"), str(captures[0]))
    assert run.code == 2 and "LB004" in run.err


@pytest.mark.parametrize("text", ["", "# nothing yet\n", 'property mine "mine" {\n    never forward twice\n}\n'])
def test_a_spec_that_declares_no_service_is_LB026_and_exits_2(cli, spec_file, captures, text):
    """Nothing to hold the traffic to: not a pass with no violations."""
    run = cli("monitor", spec_file(text), str(captures[0]))
    assert run.code == 2 and "LB026" in run.err


def test_damage_is_reported_as_LB210_and_the_rest_is_judged(cli, spec_path, captures):
    data = captures[0].read_bytes()
    captures[0].write_bytes(data[:-7])
    run = cli("monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
              "--format", "json")
    document = json.loads(run.out)
    notes = [d for d in document["diagnostics"] if d["code"] == "LB210"]
    assert notes and notes[0]["data"]["damage"] == "truncated" and notes[0]["severity"] == "info"
    assert run.code == 1


@pytest.mark.parametrize("what, severity", [("skipped", "warning"), ("compressed", "warning"), ("order", "warning"),
                                             ("truncated", "info"), ("linktype", "info")])
def test_damage_that_loses_frames_in_the_midst_of_a_capture_is_a_warning(what, severity):
    reader = SimpleNamespace(path="c.pcap", damage=[Damage(what, 5, 100, 20, "detail")], dropped=0)
    (note,) = capture_notes([reader])
    assert (note.code, note.severity.value, note.data["damage"]) == ("LB210", severity, what)


def test_a_gzip_capture_cut_short_is_judged_up_to_the_cut(cli, spec_path, captures, tmp_path):
    zipped = gzip.compress(captures[0].read_bytes())
    cut = tmp_path / "client.pcap.gz"
    cut.write_bytes(zipped[:len(zipped) - 20])  # the end-of-stream marker and the last frames are gone
    run = cli("monitor", spec_path, "--client-side", str(cut), "--backend-side", str(captures[1]),
              "--format", "json")
    document = json.loads(run.out)
    assert ("compressed", "warning") in [(d["data"].get("damage"), d["severity"]) for d in document["diagnostics"]
                                         if d["code"] == "LB210"]
    assert run.code == 1 and document["monitor"]["paired"] > 0


def test_help_mentions_exit_codes(cli):
    run = cli("monitor", "--help")
    assert run.code == 0 and "Exit codes" in run.out and "--witness-dir" in run.out


def test_jobs_give_the_same_verdicts(cli, spec_path, captures):
    argv = ["monitor", spec_path, "--client-side", str(captures[0]), "--backend-side", str(captures[1]),
            "--format", "json"]
    one = json.loads(cli(*argv).out)
    two = json.loads(cli(*argv, "--jobs", "2").out)
    strip = lambda doc: [(d["code"], d["data"].get("flow"), d["data"].get("count")) for d in doc["diagnostics"]]  # noqa
    assert strip(one) == strip(two) and one["monitor"]["verdicts"] == {"LB200": 1}
    assert one["monitor"]["paired"] == two["monitor"]["paired"]


def test_jobs_read_compressed_captures_too(cli, spec_path, captures, tmp_path):
    import gzip

    zipped = tmp_path / "client.pcap.gz"
    zipped.write_bytes(gzip.compress(captures[0].read_bytes()))
    run = cli("monitor", spec_path, "--client-side", str(zipped), "--backend-side", str(captures[1]),
              "--format", "json", "--jobs", "2")
    assert json.loads(run.out)["monitor"]["verdicts"] == {"LB200": 1}


# ------------------------------------------------------- captures started apart --

def _apart(scenario: Scenario, directory, client=(0.0, 9.0), backend=(0.0, 9.0)) -> list[str]:
    """The scenario's two captures as if started and stopped by hand: each side's from and until the times
    given (seconds in)."""
    paths = scenario.write(directory)
    for path, (start, stop) in zip(paths, (client, backend)):
        wrpcap(str(path), [f for f in rdpcap(str(path)) if START + start <= f.time <= START + stop])
    return ["--client-side", str(paths[0]), "--backend-side", str(paths[1])]


def test_captures_started_and_stopped_apart_judge_only_what_both_show(cli, spec_file, tmp_path):
    """Before the backend-side capture started, the LB was at work (the client side shows it answering):
    what clients sent then may have gone on unseen; after the client-side capture stopped, what the LB sent
    may answer what clients sent unseen.  Neither is a drop or LB208 -- they were before -- and a drop while
    both ran still is."""
    scenario = Scenario("nat")
    for k in range(20):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, proto="udp", vport=53, bport=53,
                      drop={1} if k == 10 else set())
    run = cli("monitor", spec_file(spec(listen="udp 53", rule="forward udp 53 to app")),
              *_apart(scenario, tmp_path, client=(0, 0.7), backend=(0.3, 9)), "--format", "json")
    document = json.loads(run.out)
    assert [d["code"] for d in document["diagnostics"] if d["severity"] == "error"] == ["LB200"]
    assert document["monitor"]["unjudged_at_edges"] > 0


def test_a_backend_side_quiet_until_the_lb_first_forwards_is_judged_from_the_start(cli, spec_file, tmp_path):
    """The near miss: the LB forwards nothing (and so answers nothing) for the first 0.3 s.  The backend-side
    capture's first packet comes then, but nothing says it started late: those drops are LB200."""
    scenario = Scenario("nat")
    for k in range(20):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, proto="udp", vport=53, bport=53, segments=1,
                      drop={0} if k * 0.05 < 0.3 else set(), reply=k * 0.05 >= 0.3)
    run = cli("monitor", spec_file(spec(listen="udp 53", rule="forward udp 53 to app")),
              *_apart(scenario, tmp_path), "--format", "json")
    document = json.loads(run.out)
    drops = [d for d in document["diagnostics"] if d["code"] == "LB200"]
    assert sum(d["data"]["count"] for d in drops) == 6


def test_a_backend_side_quiet_after_the_lb_last_forwards_is_judged_to_the_end(cli, spec_file, tmp_path):
    """And at the other end: the LB forwards nothing after 0.5 s.  The backend-side capture's last packet comes
    then, long before the client side's; nothing says it was stopped early: those drops are LB200."""
    scenario = Scenario("nat")
    for k in range(20):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, proto="udp", vport=53, bport=53, segments=1,
                      drop={0} if k * 0.05 >= 0.5 else set(), reply=k * 0.05 < 0.5)
    run = cli("monitor", spec_file(spec(listen="udp 53", rule="forward udp 53 to app")),
              *_apart(scenario, tmp_path, backend=(0, 0.5)), "--format", "json")
    drops = [d for d in json.loads(run.out)["diagnostics"] if d["code"] == "LB200"]
    assert sum(d["data"]["count"] for d in drops) == 10


def test_proxied_connections_in_captures_started_and_stopped_apart(cli, spec_file, tmp_path):
    """The same in proxy mode: a client's bytes from before the backend-side capture started, and backend
    connections opened after the client-side capture stopped, are left unjudged (LB200 and LB208 before)."""
    scenario = Scenario("proxy")
    for k in range(20):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, chunks=(b"request %02d" % k,),
                            answer=b"answer")
    run = cli("monitor", spec_file(spec(mode="proxy")), *_apart(scenario, tmp_path, client=(0, 0.7), backend=(0.3, 9)),
              "--format", "json")
    document = json.loads(run.out)
    assert [d["code"] for d in document["diagnostics"] if d["severity"] == "error"] == []
    assert document["monitor"]["unjudged_at_edges"] > 0
