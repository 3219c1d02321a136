"""Live capture: sniff interfaces with scapy and judge as packets come.

Each ``--live [client:|backend:]IFACE`` opens a scapy listening socket with a
BPF filter built from the spec (its VIPs and backends, and ARP for dsr) and
reads raw frames -- no per-packet dissection -- on a thread.  The main thread
feeds them to the monitor, lets time pass (so a packet that is never
forwarded is judged even when traffic stops), and streams verdicts: JSON
lines with ``--format jsonl``, text otherwise.  Ctrl-C or ``--duration`` ends
the run with the summary.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from lbspec.diagnostics import InputError
from lbspec.runtime.health import read_events
from lbspec.runtime.monitor import Monitor, Report
from lbspec.semantics.model import Spec

__all__ = ["run", "bpf_filter", "parse_interface", "Sniffer"]

_TICK = 0.1


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
    return Interface(name, side or None)


def bpf_filter(spec: Spec, services: Iterable[str] | None = None) -> str:
    """Only the traffic of the spec's addresses (and ARP, which tells dsr backends apart)."""
    chosen = [s for s in spec.services if not services or s.name in services]
    hosts = sorted({str(a) for s in chosen for a in (*s.vips, *(b.address for b in s.backends))})
    clauses = [f"host {h}" for h in hosts]
    if any(s.mode.kind == "dsr" for s in chosen):
        clauses.append("arp")
    return " or ".join(clauses) or "ip or ip6"


class Sniffer(threading.Thread):
    """Reads raw frames from one interface into a queue: (time, bytes, linktype, source)."""

    def __init__(self, interface: str, source: int, bpf: str, out: queue.Queue):
        super().__init__(daemon=True, name=f"sniff-{interface}")
        self.interface, self.source, self.out = interface, source, out
        self.socket = _open(interface, bpf)
        self.stopping = threading.Event()

    def run(self) -> None:
        from scapy.config import conf

        numbers = conf.l2types.layer2num
        while not self.stopping.is_set():
            try:
                layer, data, when = self.socket.recv_raw(65535)
            except (OSError, ValueError):
                if self.stopping.is_set():
                    return
                continue
            if data:
                self.out.put((when or time.time(), data, numbers.get(layer, 1), self.source))

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.socket.close()
        except OSError:
            pass


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
    return sock


def run(args, spec: Spec, stdout: TextIO, stderr: TextIO) -> Report:
    from lbspec.runtime.session import Stream, options_from

    monitor = Monitor(spec, args.service or None, options_from(args))
    if args.events:
        monitor.health_events(read_events(args.events, monitor.compiled))
    packets: queue.Queue = queue.Queue(maxsize=200_000)
    bpf = bpf_filter(spec, args.service)
    sniffers = []
    try:
        for item in map(parse_interface, args.live):
            source = monitor.add_source(f"live:{item.name}", item.side)
            sniffers.append(Sniffer(item.name, source, bpf, packets))
        for sniffer in sniffers:
            sniffer.start()
        stderr.write(f"lbspec monitor: listening on {', '.join(s.interface for s in sniffers)} ({bpf})\n")
        stderr.flush()
        _loop(monitor, packets, Stream(args, stdout, live_text=args.format == "text"), args.duration)
    finally:
        for sniffer in sniffers:
            sniffer.stop()
    return monitor.close()


def _loop(monitor: Monitor, packets: queue.Queue, stream, duration: float | None) -> None:
    """Feed packets until the duration is over or Ctrl-C; judge and stream as time passes."""
    end = time.monotonic() + duration if duration else float("inf")
    try:
        while time.monotonic() < end:
            _drain(monitor, packets, min(_TICK, max(0.0, end - time.monotonic())))
            monitor.advance(time.time() - monitor.options.tolerance)
            stream.emit(monitor)
    except KeyboardInterrupt:
        pass
    _drain(monitor, packets, 0.0)


def _drain(monitor: Monitor, packets: queue.Queue, wait: float) -> None:
    try:
        item = packets.get(timeout=wait) if wait > 0 else packets.get_nowait()
    except queue.Empty:
        return
    while True:
        when, data, linktype, source = item
        monitor.feed_raw(data, when, linktype, source)
        try:
            item = packets.get_nowait()
        except queue.Empty:
            return
