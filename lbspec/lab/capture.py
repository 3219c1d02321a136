"""Capturing both sides of the lab's load balancer: tcpdump if installed, scapy otherwise.

``Capture`` is a context manager: captures start (and are listening) on
entry and are flushed and stopped on exit, whatever happens inside.
Separate captures go to ``client.pcap`` (the LB's client-facing interface) and
``backend.pcap`` (its bridge to the backends); ``combined=True`` writes one
``any.pcap`` of every interface, as ``tcpdump -i any`` does -- or, with
``tool="dumpcap"``, one ``both.pcapng`` of the two interfaces, as Wireshark
records several at once (frames written a buffer of each interface in turn,
not in time order).  The scapy fallback is ``python -m lbspec.runtime.sniff``
(scapy stays in lbspec.runtime).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

__all__ = ["Capture"]


# tcpdump's kernel buffer (KiB) and snapshot length.  In immediate mode, on interfaces that offload
# segmentation (veths and bridges do), libpcap sizes each slot of its ring for the snapshot length, not the MTU:
# with tcpdump's defaults (2 MiB, 262,144 bytes) the ring holds 8 packets, and a burst of a hundred lost 15-20
# whenever tcpdump was not running at that moment -- a loss the monitor then saw as the LB's.  Now it holds
# about 500.
BUFFER_KIB = 32768
SNAPLEN = 65535


class Capture:
    """Captures of the lab's load balancer.  After the exit, ``dropped`` is how many packets the kernel
    says it could not hand the capturing tool (None where the tool does not say: the scapy fallback)."""

    def __init__(self, lab, directory: str | os.PathLike, combined: bool = False, tool: str = "auto"):
        self.lab = lab
        self.directory = Path(directory)
        self.combined = combined
        self.tool = ("tcpdump" if shutil.which("tcpdump") else "scapy") if tool == "auto" else tool
        self.processes = []
        self.dropped: int | None = None
        self.client_side = self.directory / "client.pcap"
        self.backend_side = self.directory / "backend.pcap"
        self.both = self.directory / ("both.pcapng" if self.tool == "dumpcap" else "any.pcap")

    def __enter__(self) -> Capture:
        sides = [(self.lab.client_interface, self.client_side), (self.lab.backend_interface, self.backend_side)]
        if self.tool == "dumpcap":
            if not self.combined:
                raise ValueError("dumpcap records the two interfaces into one file: combined=True")
            jobs = [((self.lab.client_interface, self.lab.backend_interface), self.both)]
        else:
            jobs = [("any", self.both)] if self.combined else sides
        try:
            for interface, path in jobs:
                self.processes.append(self._start(interface, path))
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _start(self, interface: str | tuple[str, ...], path: Path):
        if self.tool == "dumpcap":
            argv = ["dumpcap", "-q", "-n", "-w", str(path)] + [x for name in interface for x in ("-i", name)]
            return self.lab.resources.spawn(self.lab.lb.argv(argv), ready="Capturing on", timeout=15)
        if self.tool == "tcpdump":
            argv = ["tcpdump", "-i", interface, "-w", str(path), "-U", "--immediate-mode", "-n", "-s", str(SNAPLEN),
                    "-B", str(BUFFER_KIB), "-Z", "root"]
            return self.lab.resources.spawn(self.lab.lb.argv(argv), ready="listening on", timeout=15)
        argv = [sys.executable, "-m", "lbspec.runtime.sniff", interface, str(path)]
        return self.lab.resources.spawn(self.lab.lb.argv(argv), ready="listening", timeout=30)

    def _stop(self) -> None:
        if self.processes:
            time.sleep(0.2)  # let the last packets in flight through the LB reach the capture
        counts = [_dropped(self.lab.resources.stop(process, signal.SIGINT, timeout=10)) for process in self.processes]
        if counts and None not in counts:
            self.dropped = sum(counts)
        self.processes = []


def _dropped(said: str) -> int | None:
    """The packets the kernel dropped, as tcpdump ("N packets dropped by kernel") or dumpcap ("Packets
    received/dropped on interface 'x': R/D ...", for each interface) tell it at the end; None if not told."""
    found = (re.findall(r"(\d+) packets? dropped by kernel", said)
             or re.findall(r"received/dropped on interface .*?: \d+/(\d+)", said))
    return sum(map(int, found)) if found else None
