"""``--jobs``: captures read in other processes give the very output of one process, witnesses included."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from lbspec.runtime import capture, session
from lbspec.runtime.decode import Packets
from lbspec.runtime.sources import merged

from .scenario import LB_MAC, Scenario, backend_mac, ip, spec


def _changed(i, frame):
    if i == 2 and Raw in frame:
        frame[Raw].load = b"X" + bytes(frame[Raw].load)[1:]
    return frame


def _nat(scenario: Scenario) -> None:
    for k in range(12):
        backend = ["10.1.0.11", "10.1.0.12"][k % 2]
        # late: the last segment, as this backend acknowledges each segment as it is sent, so a later one would
        # acknowledge the late one's bytes before they come (then judged a capture gap or a late forward,
        # depending on whether the forward is in view yet)
        faults = [{"drop": {2}}, {"late": {3: 0.2}}, {"twice": {3}}, {"change": _changed},
                  {"reply_from": backend}, {"answer": "rst"}, {}, {"late": {3: 0.6}}][k % 8]
        scenario.flow(backend if k != 6 else [backend, "10.1.0.12"], k * 0.04, **faults)
    scenario.flow("10.9.0.99", 0.6)
    scenario.flow("10.1.0.11", 0.7, proto="udp", vport=53, bport=53, drop={1})


def _tunnel(scenario: Scenario) -> None:
    for backend in ("10.1.0.11", "10.1.0.12"):
        scenario.arp(backend)
    for k in range(8):
        scenario.flow(["10.1.0.11", "10.1.0.12"][k % 2], 0.01 + k * 0.03, drop={1} if k == 3 else set(),
                      twice={2} if k == 5 else set())


def _proxy(scenario: Scenario) -> None:
    for k in range(6):  # one with a PROXY protocol header naming its client, one naming another
        named = (lambda client, cport, vip, vport, k=k: f"PROXY TCP4 {client} {vip} {cport + (k == 5)} {vport}\r\n"
                 .encode()) if k in (1, 5) else None
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.05, lose=0 if k == 2 else None,
                            alter=k == 4, header=named)


CASES = {
    "nat": ("nat", "nat", _nat, False),
    "nat-combined": ("nat", "nat", _nat, True),
    "snat": ("snat", "snat", _nat, False),
    "dsr": ("dsr", "dsr", _tunnel, False),
    "gre": ("gre", "tunnel gre", _tunnel, True),
    "proxy": ("proxy", "proxy", _proxy, False),
}


def _run(cli, argv: list[str], directory) -> tuple[str, dict[str, bytes]]:
    directory.mkdir()
    run = cli(*argv, "--format", "json", "--witness-dir", str(directory))
    assert run.code in (0, 1), run.err
    witnesses = {path.name: path.read_bytes() for path in sorted(directory.iterdir())}
    return run.out.replace(str(directory), "WITNESSES"), witnesses


@pytest.fixture(params=[None, 16], ids=["batches-64k", "batches-16"])
def batch_frames(request, monkeypatch):
    """Small batches too: many batches per capture, slots of the shared memory handed back and reused."""
    if request.param:
        monkeypatch.setattr(session, "CaptureReader", lambda path, source: capture.CaptureReader(
            path, source, batch_frames=request.param))
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_jobs_give_the_same_output(cli, spec_file, tmp_path, case, batch_frames):
    scenario_mode, spec_mode, build, combined = CASES[case]
    scenario = Scenario(scenario_mode)
    build(scenario)
    text = spec(mode=spec_mode, listen="tcp 80, udp 53", health="health tcp every 1s timeout 500ms fall 2 rise 2",
                rule="forward tcp 80 to app port 8080\n    forward udp 53 to app" if scenario_mode in ("nat", "snat", "proxy")
                else "forward tcp 80 to app\n    forward udp 53 to app")
    files = scenario.write(tmp_path, combined=combined)
    argv = ["monitor", spec_file(text)] + ([str(files[0])] if combined else
                                          ["--client-side", str(files[0]), "--backend-side", str(files[1])])
    one = _run(cli, argv, tmp_path / "one")
    two = _run(cli, argv + ["--jobs", "2"], tmp_path / "two")
    assert json.loads(one[0])["monitor"]["verdicts"], "the case must have violations"
    assert two == one


def test_jobs_with_a_compressed_capture_and_a_skewed_clock(cli, spec_file, tmp_path):
    scenario = Scenario("nat")
    _nat(scenario)
    for sent in scenario.packets:
        if sent.side == "backend":
            sent.packet.time += 0.0031  # the backend side's clock runs ahead
    client, backend = scenario.write(tmp_path)
    zipped = tmp_path / "backend.pcap.gz"
    zipped.write_bytes(gzip.compress(backend.read_bytes()))
    argv = ["monitor", spec_file(spec(listen="tcp 80, udp 53", rule="forward tcp 80 to app port 8080\n"
                                      "    forward udp 53 to app")),
            "--client-side", str(client), "--backend-side", str(zipped)]
    one = _run(cli, argv, tmp_path / "one")
    assert "backend-side capture: +3." in one[0]  # corrected, in both runs
    assert _run(cli, argv + ["--jobs", "3"], tmp_path / "two") == one


def test_jobs_report_a_file_that_is_no_capture(cli, spec_file, tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all, just some text")
    scenario = Scenario("nat")
    scenario.flow("10.1.0.11")
    client, _backend = scenario.write(tmp_path)
    run = cli("monitor", spec_file(spec()), "--client-side", str(client), "--backend-side", str(bad), "--jobs", "2")
    assert run.code == 2 and "LB290" in run.out + run.err


def test_udp_and_tcp_payloads_survive_the_shared_memory(tmp_path):
    """The columns a reading process hands over are the columns it decoded."""
    import contextlib

    import lbspec
    from lbspec.runtime import parallel
    from lbspec.runtime.monitor import Monitor
    from lbspec.runtime.sources import CaptureStream

    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", proto="udp", vport=53, bport=53, payload=b"q" * 300)
    scenario.flow("10.1.0.12", 0.05, payload=b"d" * 100)
    client, _backend = scenario.write(tmp_path)
    monitor = Monitor(lbspec.loads(spec(listen="tcp 80, udp 53", rule="forward tcp 80 to app\n"
                                        "    forward udp 53 to app")))
    readers = session.open_readers(monitor, [session.Input(str(client), "client")])
    local = list(CaptureStream(capture.CaptureReader(str(client), 0), 0, monitor.compiled).batches())
    with contextlib.ExitStack() as stack:
        (remote,) = parallel.open_streams(monitor, readers, 1, stack)
        assert isinstance(remote, parallel.RemoteStream)
        batches = list(remote.batches())
        assert [sorted(b.cols) for b in batches] == [sorted(b.cols) for b in local]
        for mine, theirs in zip(batches, local):
            for name in theirs.cols:
                assert mine[name].tolist() == theirs[name].tolist(), name
            assert mine.payload(1) == theirs.payload(1)
    assert any(TCP in s.packet or UDP in s.packet for s in scenario.packets)



# ------------------------------------------------------------------ merging streams by time --

def _stream(number: int, times: list[float], size: int, asked: list[tuple[int, int]]):
    """Batches of ``size`` rows of sorted ``times``; ``asked`` records each batch as it is asked for."""
    for first in range(0, len(times), size):
        asked.append((number, first // size))
        chunk = np.array(times[first:first + size], np.float64)
        yield Packets({"ts": chunk, "stream": np.full(len(chunk), number), "batch": np.full(len(chunk), first // size)},
                      [])


def _merge(lists: list[list[float]], size: int) -> list[list[Packets]]:
    asked: list[tuple[int, int]] = []
    spans = []
    for pieces in merged([_stream(n, sorted(times), size, asked) for n, times in enumerate(lists)]):
        for piece in pieces:  # a reading process reuses a batch's memory once the batch after next is asked for
            number = int(piece["stream"][0])
            newest = max(b for s, b in asked if s == number)
            assert int(piece["batch"].min()) >= newest - 1
        spans.append(pieces)
    return spans


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.floats(0, 100, allow_nan=False), max_size=60), min_size=1, max_size=3),
       st.integers(1, 9))
def test_merged_streams_hand_out_every_row_once_in_spans_of_time(lists, size):
    spans = [sorted(t for p in pieces for t in p["ts"].tolist()) for pieces in _merge(lists, size)]
    assert sorted(t for span in spans for t in span) == sorted(t for times in lists for t in times)
    for before, after in zip(spans, spans[1:]):
        assert before and after and before[-1] <= after[0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=80), st.integers(1, 9))
def test_batches_out_of_time_order_are_put_in_order_unless_a_row_is_a_batch_late(times, size):
    from lbspec.runtime.sources import in_time_order, sort_by_time

    class Reader:
        batch_frames, damage = size, []

    def batch(first: int) -> Packets:
        ts = np.array(times[first:first + size], np.float64)
        return Packets({"ts": ts, "frame": np.arange(first + 1, first + 1 + len(ts)), "buf": np.zeros(len(ts), np.int32)},
                       [b"frames"])

    batches = [batch(first) for first in range(0, len(times), size)]
    out = [t for b in in_time_order(iter(batches), Reader) for t in sort_by_time(b)["ts"].tolist()]
    assert sorted(out) == sorted(times)
    # a row is too late if the whole batch before its own holds later times only
    late = [i for i in range(size, len(times)) if all(t > times[i] for t in times[(i // size - 1) * size:i // size * size])]
    if not late:
        assert out == sorted(out) and Reader.damage == []
    elif out != sorted(out):
        (damage,) = Reader.damage
        assert damage.what == "order"


def test_merged_spans_are_about_a_batch_long_not_slivers():
    """Two captures of the same traffic: each span takes about a batch of each, not a batch then a sliver."""
    client = [k * 1.0 for k in range(1000)]
    backend = [k * 1.0 + 0.5 for k in range(1000)]
    spans = _merge([client, backend], 100)
    assert len(spans) <= 11
    assert sum(len(p) for pieces in spans for p in pieces) == 2000


NAT_SPEC = spec(listen="tcp 80, udp 53", health="health tcp every 1s timeout 500ms fall 2 rise 2",
                rule="forward tcp 80 to app port 8080\n    forward udp 53 to app")


def _verdicts(cli, spec_file, monkeypatch, paths, batch_frames=None, *options) -> tuple[list, int, list]:
    """The verdicts (code and flow), the rows left unjudged at the edges, and the LB210 notes' severity and data."""
    if batch_frames:
        monkeypatch.setattr(session, "CaptureReader", lambda path, source: capture.CaptureReader(
            path, source, batch_frames=batch_frames))
    document = json.loads(cli("monitor", spec_file(NAT_SPEC), *map(str, paths), "--format", "json", *options).out)
    monkeypatch.undo()
    found = document["diagnostics"]
    return (sorted((x["code"], x["data"].get("flow", "")) for x in found if x["code"] not in ("LB210", "LB212")),
            document["monitor"]["unjudged_at_edges"], [(x["severity"], x["data"]) for x in found if x["code"] == "LB210"])


def test_verdicts_do_not_depend_on_where_a_capture_is_cut(cli, spec_file, tmp_path, monkeypatch):
    """Batches of any size, and one capture rotated into two files (tcpdump -C), give the same verdicts."""
    from scapy.utils import rdpcap, wrpcap

    scenario = Scenario("nat")
    _nat(scenario)
    invented = ip("203.0.113.7", "10.1.0.12") / TCP(sport=4444, dport=8080, flags="PA", seq=9) / Raw(b"made up")
    scenario.add(0.2, "backend", Ether(src=LB_MAC, dst=backend_mac("10.1.0.12")) / invented)  # in part 0: LB208
    (whole,) = scenario.write(tmp_path, combined=True)
    frames = rdpcap(str(whole))
    halves = [tmp_path / "part0.pcap", tmp_path / "part1.pcap"]
    wrpcap(str(halves[0]), frames[:len(frames) // 2])
    wrpcap(str(halves[1]), frames[len(frames) // 2:])

    expected = _verdicts(cli, spec_file, monkeypatch, [whole])
    assert ("LB208", "TCP 203.0.113.7:4444 -> 10.1.0.12:8080") in expected[0]
    assert {"LB200", "LB205"} <= {code for code, _flow in expected[0]}
    assert _verdicts(cli, spec_file, monkeypatch, halves) == expected
    for size in (16, 7):
        assert _verdicts(cli, spec_file, monkeypatch, [whole], size) == expected


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_capture_written_out_of_time_order_is_judged_in_time_order(cli, spec_file, tmp_path, monkeypatch, jobs):
    """As a pcapng of two interfaces is written, a buffer of each in turn: here every 100 ms of traffic has
    the backend side's frames first.  Rows late by less than a batch are put back in order across
    batches; a capture out of order by more is judged as it stands, and says so (LB210)."""
    from scapy.utils import wrpcap

    scenario = Scenario("nat")
    _nat(scenario)
    sent = scenario._ended()
    (whole,) = scenario.write(tmp_path, combined=True)
    expected = _verdicts(cli, spec_file, monkeypatch, [whole])
    assert "LB207" in {code for code, _flow in expected[0]}  # lost when judged out of order
    assert expected[2] == []

    def written(path, start_of_block) -> int:
        """Write the blocks, each backend side first; returns the most frames a block has."""
        blocks: dict[int, list] = {}
        for s in sent:
            blocks.setdefault(start_of_block(s), []).append(s)
        wrpcap(str(path), [s.packet for k in sorted(blocks) for side in ("backend", "client")
                           for s in blocks[k] if s.side == side])
        return max(len(block) for block in blocks.values())

    shuffled = tmp_path / "shuffled.pcap"
    longest = written(shuffled, lambda s: int((s.time - sent[0].time) / 0.1))
    assert longest > 16
    for size in (longest, 2 * longest):  # no frame follows a batch of frames all later than itself
        assert _verdicts(cli, spec_file, monkeypatch, [shuffled], size, "--jobs", jobs) == expected
    halves = tmp_path / "halves.pcap"
    written(halves, lambda s: 0)  # the whole backend side first
    found = _verdicts(cli, spec_file, monkeypatch, [halves], 16, "--jobs", jobs)
    assert found[0] != expected[0]
    ((severity, note),) = found[2]
    assert note["damage"] == "order" and note["frame"] > 16 and severity == "warning"
