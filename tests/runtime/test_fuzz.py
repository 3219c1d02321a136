"""Mutated captures never crash the reader or the monitor: damage is reported, never raised (but LB290)."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lbspec
from lbspec.runtime import CaptureError, Monitor, capture, read_captures
from lbspec.runtime.capture import CaptureReader

from . import pcapng
from .scenario import Scenario, spec

SPEC = lbspec.loads(spec(listen="tcp 80, udp 53", rule="forward tcp 80 to app port 8080\n    forward udp 53 to app"))


def _pcap() -> bytes:
    import tempfile
    from pathlib import Path

    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", 0.0)
    scenario.flow("10.1.0.12", 0.05, proto="udp", vport=53, bport=53)
    with tempfile.TemporaryDirectory() as directory:
        (path,) = scenario.write(Path(directory), combined=True)
        return path.read_bytes()


def _pcapng(base: bytes) -> bytes:
    from scapy.utils import rdpcap
    import io

    frames = [bytes(p) for p in rdpcap(io.BytesIO(base))]
    return pcapng.section() + pcapng.interface(1) + b"".join(pcapng.packet(0, 1000 + i, f, direction=1 + i % 2)
                                                              for i, f in enumerate(frames))


def _proxied() -> bytes:
    """A proxy's traffic, both sides in one capture: alike requests, a lost chunk, a changed byte."""
    import tempfile
    from pathlib import Path

    scenario = Scenario("proxy")
    for k in range(6):
        scenario.proxy_flow(["10.1.0.11", "10.1.0.12"][k % 2], k * 0.001, client=f"203.0.113.{k + 1}",
                            lose=1 if k == 2 else None, alter=k == 4, regroup=k % 2 == 0)
    with tempfile.TemporaryDirectory() as directory:
        (path,) = scenario.write(Path(directory), combined=True)
        return path.read_bytes()


PCAP = _pcap()
PCAPNG = _pcapng(PCAP)
PROXIED = _proxied()
PROXY_SPEC = lbspec.loads(spec(mode="proxy"))

mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "zero", "repeat"]),
                               st.floats(0, 1), st.binary(min_size=1, max_size=16)), min_size=1, max_size=6)


def _mutate(data: bytes, changes) -> bytes:
    data = bytearray(data)
    for kind, where, blob in changes:
        at = int(where * max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= blob[0] or 0xFF
        elif kind == "cut":
            del data[at:at + len(blob) * 7]
        elif kind == "insert":
            data[at:at] = blob
        elif kind == "zero":
            data[at:at + len(blob)] = bytes(len(data[at:at + len(blob)]))
        elif kind == "repeat":
            data[at:at] = data[at:at + 40]
    return bytes(data)


def _judge(tmp_path, data: bytes, judged=SPEC) -> None:
    path = tmp_path / "fuzzed.cap"
    path.write_bytes(data)
    try:
        report = read_captures(Monitor(judged), combined=[path])
    except CaptureError:
        return  # not a capture at all: LB290, exit 2
    assert report.summary["packets"] >= 0


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations, base=st.sampled_from(["pcap", "pcapng", "gzip"]))
def test_mutated_captures_never_crash(tmp_path, changes, base):
    data = {"pcap": PCAP, "pcapng": PCAPNG, "gzip": gzip.compress(PCAP)}[base]
    _judge(tmp_path, _mutate(data, changes))


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=600), head=st.sampled_from([b"", PCAP[:24], PCAPNG[:28 + 20]]))
def test_garbage_after_a_valid_header_never_crashes(tmp_path, garbage, head):
    _judge(tmp_path, head + garbage)


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations)
def test_mutated_proxy_captures_never_crash(tmp_path, changes):
    """Proxy mode follows byte streams connection by connection: damaged ones must not break it either."""
    _judge(tmp_path, _mutate(PROXIED, changes), PROXY_SPEC)


def _frames_and_damage(path) -> tuple[list, list] | None:
    try:
        reader = CaptureReader(path, batch_frames=7)
        frames = [(int(f), int(c)) for batch in reader.batches() for f, c in zip(batch.frame, batch.caplen)]
    except CaptureError:
        return None
    return frames, [(d.what, d.frame, d.offset, d.size) for d in reader.damage]


@pytest.mark.timeout(300)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=mutations, base=st.sampled_from(["pcap", "pcapng"]), read_size=st.sampled_from([1, 7, 100, 4096]))
@example(changes=[("cut", 0.5, bytes(8))] * 3 + [("insert", 0.4375, bytes(4))], base="pcap", read_size=1).via(
    "a record captured longer than on the wire, cut off from the header after it that condemns it")
def test_a_gzipd_capture_reads_as_the_plain_one_however_small_the_reads(tmp_path, monkeypatch, changes, base,
                                                                        read_size):
    """Decompressed piece by piece, damage found before the rest is there must be stepped over just the same."""
    monkeypatch.setattr(capture, "READ_SIZE", read_size)
    data = _mutate({"pcap": PCAP, "pcapng": PCAPNG}[base], changes)
    (tmp_path / "x.cap").write_bytes(data)
    (tmp_path / "x.gz").write_bytes(gzip.compress(data, 1))
    assert _frames_and_damage(tmp_path / "x.gz") == _frames_and_damage(tmp_path / "x.cap")
