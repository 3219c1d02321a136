"""Live capture: sniff interfaces with scapy and judge as packets come.

Each ``--live [client:|backend:]IFACE`` opens a scapy listening socket with a
BPF filter built from the spec (its VIPs and backends, and ARP for dsr) and
reads raw frames -- no per-packet dissection -- on a thread.  The main thread
feeds them to the monitor in time order (a frame waits until every socket has
delivered up to its time, so a backlog in one socket's buffer is not taken
for packets that were never sent), lets time pass (so a packet that is never
forwarded is judged even when traffic stops), and streams verdicts: JSON
lines with ``--format jsonl``, text otherwise.  Ctrl-C, SIGTERM or
``--duration`` ends the run: what the sockets held by then is judged and
streamed too, then the summary.

Packets the kernel dropped because a sniffing socket's buffer was full (the
monitor fell behind) are read from the socket (``PACKET_STATISTICS``) when
capture stops: a note LB209 per interface that dropped any, and
``capture_drops`` in the summary.

An interface that goes away (deleted, or its namespace gone) ends the run as
if it had been stopped then, with a note LB209: the other interfaces alone
would show every packet that crossed the missing one as dropped or invented.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import math
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from lbspec.diagnostics import InputError
from lbspec.runtime.health import read_events
from lbspec.runtime.monitor import Monitor, Report
from lbspec.semantics.model import Spec

__all__ = ["run", "bpf_filter", "parse_interface", "interfaces", "Sniffer", "kernel_drops", "capture_notes"]

_TICK = 0.1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SOL_PACKET, _PACKET_STATISTICS = 263, 6  # linux/if_packet.h
_BUFFER = 32 << 20  # bytes of socket receive buffer per sniffed interface
_DOWN = (errno.ENETDOWN, errno.ENODEV, errno.ENXIO)  # what a socket says once when its interface goes


@dataclass(frozen=True)
class Interface:
    name: str
    side: str | None


def parse_interface(text: str) -> Interface:
    side, _, name = text.rpartition(":")
    if side and side not in ("client", "backend"):
        raise InputError(f"--live {text}: the side is `client:` or `backend:`, not `{side}:`")
    if not name:
        raise InputError(f"--live {text}: no interface name")
    if name == "any":  # tcpdump's pseudo-interface: frames of every interface, some of them twice
        raise InputError(f"--live {text}: `any` is not an interface lbspec can sniff; name the load balancer's "
                         "interfaces (`--live client:eth0 --live backend:eth1`), or record with "
                         "`tcpdump -i any -w FILE` and give lbspec the file")
    return Interface(name, side or None)


def interfaces(texts: Iterable[str]) -> list[Interface]:
    """The ``--live`` arguments, each interface once: a frame read twice would be judged twice."""
    chosen: dict[str, Interface] = {}
    for item in map(parse_interface, texts):
        if item.name in chosen:
            raise InputError(f"--live: {item.name} is given twice; give it once, without a side "
                             f"(`--live {item.name}`), when it carries both sides of the load balancer")
        chosen[item.name] = item
    return list(chosen.values())


def bpf_filter(spec: Spec, services: Iterable[str] | None = None) -> str:
    """Only the traffic of the spec's addresses (and ARP, which tells dsr backends apart)."""
    chosen = [s for s in spec.services if not services or s.name in services]
    hosts = sorted({str(a) for s in chosen for a in (*s.vips, *(b.address for b in s.backends))})
    clauses = [f"host {h}" for h in hosts]
    if any(s.mode.kind == "dsr" for s in chosen):
        clauses.append("arp")
    return " or ".join(clauses) or "ip or ip6"


class Sniffer(threading.Thread):
    """Reads raw frames from one interface into a queue: (time, bytes, linktype, source).

    ``frontier`` is a time before which every frame the interface saw has been
    queued (the last frame read, or when the socket was last found empty): the
    monitor judges no further, so a backlog in one socket's buffer is never
    taken for packets that were not sent.
    """

    def __init__(self, interface: str, source: int, bpf: str, out: queue.Queue):
        super().__init__(daemon=True, name=f"sniff-{interface}")
        self.interface, self.source, self.out = interface, source, out
        self.socket = _open(interface, bpf)
        self.index = _index(interface)  # the interface the socket is bound to (one made again gets a new index)
        self.gone: float | None = None  # when the interface was found gone: nothing comes after
        self.stopping = threading.Event()
        self.finishing = threading.Event()
        kernel_drops(self.socket)  # reading resets the counters: what was dropped while the socket was set up
        self.dropped = 0  # frames the kernel dropped for want of room in the socket's buffer
        self.frontier = time.time()
        self.until = math.inf  # when capture stopped: what the socket held until then is read, nothing after

    def run(self) -> None:
        from scapy.config import conf

        numbers = conf.l2types.layer2num
        while not self.stopping.is_set():
            mark = time.time()
            try:
                layer, data, when = self.socket.recv_raw(65535)
            except (OSError, ValueError) as error:
                if self.stopping.is_set() or self.finishing.is_set():
                    return  # stopped, or read to the end of what the socket held
                if getattr(error, "errno", None) in _DOWN and _index(self.interface) != self.index:
                    self.gone = mark  # the frontier stays where it was: the run ends there
                    return
                self.frontier = mark  # nothing came since: everything before was read
                continue
            if data:
                when = when or time.time()
                if when > self.until:
                    return  # frames come in time order: everything up to the end has been read
                self.out.put((when, data, numbers.get(layer, 1), self.source))
                self.frontier = max(self.frontier, when)

    def finish(self, until: float) -> None:
        """Read what the socket still holds of the time before ``until``, then end."""
        self.until = until
        self.finishing.set()

    def stop(self) -> None:
        """Stop reading; count the kernel's drops before the socket goes."""
        self.stopping.set()
        self.dropped += kernel_drops(self.socket)
        try:
            self.socket.close()
        except OSError:
            pass


def kernel_drops(sock) -> int:
    """Frames the kernel dropped on a scapy listening socket since the last call (AF_PACKET only: 0 elsewhere).

    ``PACKET_STATISTICS`` returns ``struct tpacket_stats`` (packets, drops) and resets it.
    """
    raw = getattr(sock, "ins", None)
    if raw is None or getattr(raw, "family", None) != getattr(socket, "AF_PACKET", None):
        return 0
    try:
        _packets, drops = struct.unpack("II", raw.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
    except OSError:
        return 0
    return drops


def capture_notes(sniffers: Iterable[Sniffer]):
    """LB209 for each interface whose capture lost frames, or that went away: missing packets are not LB drops."""
    from lbspec import diagnostics as d

    notes = []
    for s in sniffers:
        if s.dropped:
            notes.append(d.CAPTURE_GAP.at(None, what=f"live:{s.interface}: the kernel dropped {s.dropped} frames "
                                          "the monitor could not read in time: missing packets are not LB drops",
                                          data={"file": f"live:{s.interface}", "dropped": s.dropped}))
        if s.gone is not None:
            notes.append(d.CAPTURE_GAP.at(None, what=f"live:{s.interface}: the interface went away; capture "
                                          "stopped then on every interface",
                                          data={"file": f"live:{s.interface}", "gone_at": s.gone}))
    return notes


def _index(interface: str) -> int | None:
    """The interface's index, or None when there is no such interface (any more)."""
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        return None


def _open(interface: str, bpf: str):
    """A scapy listening socket, or InputError saying why there is none."""
    import scapy.arch  # noqa: F401  (sets conf.L2listen for this platform)
    from scapy.config import conf

    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no warnings about guessing link types
    try:
        sock = conf.L2listen(iface=interface, filter=bpf)
    except PermissionError:
        raise InputError(f"cannot capture on {interface}: permission denied (run as root, or give the "
                         "interpreter CAP_NET_RAW)") from None
    except OSError as error:
        raise InputError(f"cannot capture on {interface}: {error.strerror or error}") from None
    except Exception as error:  # scapy reports a bad filter or an unknown interface in its own ways
        raise InputError(f"cannot capture on {interface}: {error}") from None
    if hasattr(sock, "ins"):
        sock.ins.settimeout(_TICK)
        _room(sock.ins)
    return sock


def _room(raw) -> None:
    """A receive buffer that rides out bursts while the reading thread waits for the interpreter: scapy asks
    for 64 KiB, a hundred small frames.  Root may go past net.core.rmem_max (SO_RCVBUFFORCE)."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            raw.setsockopt(socket.SOL_SOCKET, option, _BUFFER)
            return
        except OSError:
            continue


def run(args, spec: Spec, stdout: TextIO, stderr: TextIO) -> Report:
    from lbspec.runtime.session import Stream, options_from

    chosen = interfaces(args.live)
    monitor = Monitor(spec, args.service or None, options_from(args))
    if args.events:
        monitor.health_events(read_events(args.events, monitor.compiled))
    packets: queue.Queue = queue.Queue(maxsize=200_000)
    bpf = bpf_filter(spec, args.service)
    stream = Stream(args, stdout, live_text=args.format == "text")
    sniffers: list[Sniffer] = []
    with _stopping() as stop:  # from before the first socket: a signal never lands between two steps
        try:
            _listen(chosen, monitor, bpf, packets, sniffers)
            stderr.write(f"lbspec monitor: listening on {', '.join(s.interface for s in sniffers)} ({bpf})\n")
            stderr.flush()
            _loop(monitor, packets, sniffers, stream, args.duration, stop)
        finally:
            for sniffer in sniffers:
                sniffer.stop()
    return _last(monitor, stream, capture_notes(sniffers))


def _listen(interfaces: list[Interface], monitor: Monitor, bpf: str, packets: queue.Queue,
            sniffers: list[Sniffer]) -> None:
    """Open a socket on each interface (into ``sniffers``, so that the caller closes what opened), then read."""
    for item in interfaces:
        source = monitor.add_source(f"live:{item.name}", item.side)
        sniffers.append(Sniffer(item.name, source, bpf, packets))
    for sniffer in sniffers:
        sniffer.start()


def _last(monitor: Monitor, stream, notes: list) -> Report:
    """Judge what is still pending and stream it like every verdict before it, with the notes on the capture
    (text shows notes with the summary)."""
    for note in notes:
        monitor.note(note)
    monitor.close()
    stream.emit(monitor)
    return monitor.close()  # the report, naming every witness file


def _loop(monitor: Monitor, packets: queue.Queue, sniffers: list[Sniffer], stream, duration: float | None,
          stop: threading.Event) -> None:
    """Feed packets in time order until the duration is over or ``stop`` is set; judge and stream as time
    passes; at the end, read what the sockets still hold."""
    end = time.monotonic() + duration if duration else float("inf")
    merge = _Merge(monitor, packets)
    gone = lambda: [s.gone for s in sniffers if s.gone is not None]  # noqa: E731
    while time.monotonic() < end and not stop.is_set() and not gone():
        frontier = min((s.frontier for s in sniffers if s.is_alive() or s.gone is not None),
                       default=time.time())  # before pulling
        merge.pull(min(_TICK, max(0.0, end - time.monotonic())))
        upto = min(time.time(), frontier)
        merge.release(upto)
        monitor.advance(upto - monitor.options.tolerance)
        stream.emit(monitor)
    stopped = min([time.time(), *gone()])
    for sniffer in sniffers:
        sniffer.finish(stopped)
    while any(s.is_alive() for s in sniffers):
        merge.pull(_TICK)  # the queue is bounded: keep it moving while the sniffers finish
        for sniffer in sniffers:
            sniffer.join(0)
    merge.pull(0.0)
    merge.release(stopped)  # frames read after an interface went away are not judged


class _Merge:
    """The frames of every interface, fed to the monitor in time order: a frame is held until every socket
    has delivered up to its time (each socket delivers its own frames in order)."""

    def __init__(self, monitor: Monitor, packets: queue.Queue):
        self.monitor, self.packets = monitor, packets
        self.held: list[tuple] = []

    def pull(self, wait: float) -> None:
        """Take what is queued, waiting up to ``wait`` seconds for the first frame."""
        try:
            self.held.append(self.packets.get(timeout=wait) if wait > 0 else self.packets.get_nowait())
            while True:
                self.held.append(self.packets.get_nowait())
        except queue.Empty:
            return

    def release(self, upto: float) -> None:
        """Feed the frames up to time ``upto``, oldest first."""
        self.held.sort(key=lambda item: item[0])
        ready = bisect.bisect_right(self.held, upto, key=lambda item: item[0])
        for when, data, linktype, source in self.held[:ready]:
            self.monitor.feed_raw(data, when, linktype, source)
        del self.held[:ready]


@contextlib.contextmanager
def _stopping():
    """An event Ctrl-C (SIGINT) or SIGTERM sets, instead of an exception that could land in the middle of
    judging, or an end without the summary."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        yield stop
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
