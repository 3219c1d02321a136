"""Live capture: the filter from the spec, interface arguments, and clear errors when capture is not possible."""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time

import pytest

import lbspec
from lbspec.diagnostics import InputError
from lbspec.runtime.live import bpf_filter, kernel_drops, parse_interface

from .scenario import Scenario, spec


def test_the_bpf_filter_names_vips_and_backends():
    text = bpf_filter(lbspec.loads(spec(backends="backend b1 10.1.0.11\n        backend b2 2001:db8::12")))
    assert text == "host 10.1.0.11 or host 192.0.2.10 or host 2001:db8::12"
    assert bpf_filter(lbspec.loads(spec(mode="dsr", rule="forward tcp 80 to app"))).endswith(" or arp")


@pytest.mark.parametrize("text, name, side", [("eth0", "eth0", None), ("client:eth0", "eth0", "client"),
                                              ("backend:br-lb", "br-lb", "backend")])
def test_interfaces(text, name, side):
    parsed = parse_interface(text)
    assert (parsed.name, parsed.side) == (name, side)


@pytest.mark.parametrize("text", ["middle:eth0", "client:"])
def test_bad_interfaces(text):
    with pytest.raises(InputError):
        parse_interface(text)


def test_no_permission_to_capture_exits_2(cli, spec_file, monkeypatch):
    import scapy.arch  # noqa: F401
    from scapy.config import conf

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(conf, "L2listen", refuse)
    run = cli("monitor", spec_file(spec()), "--live", "eth0", "--duration", "1")
    assert run.code == 2 and "permission denied" in run.err and "CAP_NET_RAW" in run.err


def test_an_unknown_interface_exits_2(cli, spec_file):
    run = cli("monitor", spec_file(spec()), "--live", "nosuchif0", "--duration", "1")
    assert run.code == 2 and "cannot capture on nosuchif0" in run.err


# ------------------------------------------------------------ kernel drops --

class _Counters:
    """An AF_PACKET socket's statistics as the kernel keeps them: read, then reset."""

    family = socket.AF_PACKET

    def __init__(self, *reads: tuple[int, int]):
        self.reads = list(reads)

    def getsockopt(self, level, name, size):
        assert (level, name, size) == (263, 6, 8)  # SOL_PACKET, PACKET_STATISTICS, struct tpacket_stats
        return struct.pack("II", *(self.reads.pop(0) if self.reads else (0, 0)))

    def settimeout(self, _seconds):
        pass

    def setsockopt(self, *_option):
        pass


class _Listening:
    """A scapy listening socket that reads nothing (each read times out) and whose kernel dropped frames."""

    def __init__(self, counters: _Counters):
        self.ins = counters

    def recv_raw(self, _size):
        time.sleep(0.01)
        raise socket.timeout

    def close(self):
        pass


class _Busy(_Listening):
    """A socket on an interface that never falls quiet: a frame every millisecond, ``frames`` of them."""

    def __init__(self, frames: int):
        super().__init__(_Counters())
        self.left = frames

    def recv_raw(self, size):
        if not self.left:
            return super().recv_raw(size)
        self.left -= 1
        time.sleep(0.001)
        return None, bytes(60), time.time()


def test_kernel_drops_are_read_and_reset():
    counters = _Listening(_Counters((10, 3), (4, 0)))
    assert [kernel_drops(counters) for _ in range(3)] == [3, 0, 0]
    assert kernel_drops(object()) == 0  # not an AF_PACKET socket: nothing to read


def _quiet(monkeypatch, *reads: tuple[int, int]):
    """Every interface a socket that reads nothing, whose kernel counts ``reads`` (see _Counters)."""
    import scapy.arch  # noqa: F401
    from scapy.config import conf

    monkeypatch.setattr(conf, "L2listen", lambda **kwargs: _Listening(_Counters(*reads)))


def _jsonl(out: str) -> tuple[list[str], dict]:
    """The codes of the diagnostics streamed, and the summary."""
    lines = [json.loads(line) for line in out.splitlines()]
    return [x["code"] for x in lines[:-1]], lines[-1]["summary"]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_frames_the_kernel_dropped_are_a_note_and_counted_in_the_summary(cli, spec_file, monkeypatch, fmt):
    # the first read is at start (drops while the socket was set up: not counted), the second at the end
    _quiet(monkeypatch, (5, 2), (900, 7))
    run = cli("monitor", spec_file(spec()), "--live", "eth0", "--duration", "0.3", "--format", fmt)
    assert run.code == 0, run.err
    if fmt == "jsonl":
        streamed, summary = _jsonl(run.out)
        assert streamed == ["LB209"]
    else:
        document = json.loads(run.out)
        summary = document["monitor"]
        notes = [x for x in document["diagnostics"] if x["code"] == "LB209"]
        assert [x["data"]["dropped"] for x in notes] == [7]
    assert summary["capture_drops"] == 7 and summary["sources"][0]["dropped"] == 7


def test_no_drops_no_note(cli, spec_file, monkeypatch):
    _quiet(monkeypatch)
    run = cli("monitor", spec_file(spec()), "--live", "eth0", "--duration", "0.2", "--format", "json")
    document = json.loads(run.out)
    assert run.code == 0 and document["monitor"]["capture_drops"] == 0
    assert not [x for x in document["diagnostics"] if x["code"] == "LB209"]


def test_the_duration_ends_the_run_while_traffic_goes_on(cli, spec_file, monkeypatch):
    """What the socket held when the time was up is read; what came after is not waited for."""
    import scapy.arch  # noqa: F401
    from scapy.config import conf

    busy = _Busy(20_000)
    monkeypatch.setattr(conf, "L2listen", lambda **kwargs: busy)
    run = cli("monitor", spec_file(spec()), "--live", "eth0", "--duration", "0.3", "--format", "jsonl")
    assert run.code == 0 and busy.left > 0, run.err


@pytest.mark.parametrize("given", [("lo", "lo"), ("client:eth0", "backend:eth0", "backend:eth1")])
def test_an_interface_given_twice_exits_2(cli, spec_file, monkeypatch, given):
    """Every frame would be judged twice: sent twice, or both sent and received."""
    _quiet(monkeypatch)
    run = cli("monitor", spec_file(spec()), *(x for item in given for x in ("--live", item)), "--duration", "0.2")
    assert run.code == 2 and not run.out


def test_the_any_pseudo_interface_exits_2(cli, spec_file, monkeypatch):
    """Refused before any socket opens (here one would open and read nothing), with what to do instead."""
    _quiet(monkeypatch)
    run = cli("monitor", spec_file(spec()), "--live", "any", "--duration", "0.2")
    assert run.code == 2 and not run.out


def test_what_the_run_finds_as_it_ends_is_streamed_too(cli, spec_file, monkeypatch, tmp_path):
    """A packet the LB dropped just before the capture stopped is judged at the end: its verdict, and the
    note on the kernel's drops, are lines of their own and have a witness, like every other verdict."""
    from lbspec.runtime import live

    scenario = Scenario("nat")
    scenario.flow("10.1.0.11", proto="udp", segments=3, drop={1})
    sources = {"client": 0, "backend": 1}

    def at_the_end(monitor, *_args):  # every frame reaches the monitor as the run ends
        for sent in scenario._ended():
            monitor.feed_raw(bytes(sent.packet), sent.time, 1, sources[sent.side])

    _quiet(monkeypatch, (0, 0), (50, 4))
    monkeypatch.setattr(live, "_loop", at_the_end)
    run = cli("monitor", spec_file(spec(listen="udp 80", rule="forward udp 80 to app port 8080")),
              "--live", "client:a0", "--live", "backend:b0", "--duration", "1", "--format", "jsonl",
              "--witness-dir", str(tmp_path / "witnesses"))
    streamed, summary = _jsonl(run.out)
    assert run.code == 1 and sorted(streamed) == ["LB200", "LB209", "LB209"], run.err
    assert summary["verdicts"] == {"LB200": 1} and summary["capture_drops"] == 8
    assert len(list((tmp_path / "witnesses").iterdir())) == 1


FLOOD = """
import socket
from lbspec.runtime.live import _open, kernel_drops

sniffing = _open("lo", "udp")
sniffing.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the smallest buffer, never read
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(2000):
    sender.sendto(b"x" * 200, ("127.0.0.1", 9))
print(kernel_drops(sniffing), kernel_drops(sniffing))
"""


def test_a_socket_that_is_not_read_in_time_counts_the_kernels_drops():
    """A real AF_PACKET socket on the loopback of a namespace of its own (no traffic leaves it)."""
    from lbspec.lab.netns import Resources, namespaces_available, unique_prefix

    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    resources = Resources()
    try:
        namespace = resources.namespace(unique_prefix() + "-drops")
        first, second = map(int, namespace.run(sys.executable, "-c", FLOOD, timeout=60).split())
    finally:
        resources.close()
    assert first > 0 and second == 0


class _Watermark:
    """A monitor that records how far time was let pass."""

    class options:
        tolerance = 0.002

    def __init__(self):
        self.advanced: list[float] = []
        self.fed: list[float] = []

    def advance(self, now: float) -> None:
        self.advanced.append(now)

    def feed_raw(self, data, when, linktype, source) -> None:
        self.fed.append(when)


class _Behind:
    """A sniffer whose socket still holds frames from ``frontier`` on."""

    def __init__(self, frontier: float, gone: float | None = None):
        self.frontier, self.finishing = frontier, threading.Event()
        self.gone = gone  # when its interface went away

    def is_alive(self) -> bool:
        return not self.finishing.is_set()

    def finish(self, _until: float) -> None:
        self.finishing.set()

    def join(self, _timeout=None) -> None:
        pass


def test_time_passes_for_the_monitor_only_as_far_as_every_socket_has_delivered():
    import queue

    from lbspec.runtime.live import _loop

    monitor, packets = _Watermark(), queue.Queue()
    packets.put((time.time(), b"frame", 1, 0))
    behind = time.time() - 5.0
    stream = type("Stream", (), {"emit": lambda self, monitor: None})()
    _loop(monitor, packets, [_Behind(time.time()), _Behind(behind)], stream, 0.25, threading.Event())
    assert monitor.advanced and max(monitor.advanced) <= behind
    assert len(monitor.fed) == 1  # held while the other socket was behind, fed at the end


def test_an_interface_gone_ends_the_loop_and_nothing_after_it_is_judged():
    import queue

    from lbspec.runtime.live import _loop

    monitor, packets = _Watermark(), queue.Queue()
    gone = time.time() - 1.0
    for when in (gone - 0.5, gone + 0.5):  # the other interface's frames, from before and after
        packets.put((when, b"frame", 1, 0))
    stop = threading.Event()
    bound = threading.Timer(10.0, stop.set)  # as Ctrl-C would, should the loop not end by itself
    bound.start()
    try:
        _loop(monitor, packets, [_Behind(time.time()), _Behind(gone - 0.1, gone=gone)], type(
            "Stream", (), {"emit": lambda self, monitor: None})(), None, stop)  # no --duration
    finally:
        bound.cancel()
    assert not stop.is_set()  # it ended by itself
    assert monitor.fed == [gone - 0.5]
    assert all(now <= gone for now in monitor.advanced)
