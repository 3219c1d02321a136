"""``python -m lbspec.runtime.sniff IFACE FILE``: capture an interface to a pcap with scapy until SIGINT/SIGTERM.

The lab uses it where tcpdump is not installed.  Frames are written raw, as
they were read (no dissection).
"""

from __future__ import annotations

import signal
import sys
import threading
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    import scapy.arch  # noqa: F401  (sets conf.L2listen for this platform)
    from scapy.config import conf
    from scapy.utils import RawPcapWriter

    interface, path = (argv if argv is not None else sys.argv[1:])[:2]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sock = conf.L2listen(iface=interface)
    sock.ins.settimeout(0.1)
    writer = None
    print("listening", flush=True)
    try:
        while not stop.is_set():
            try:
                layer, data, when = sock.recv_raw(65535)
            except OSError:
                continue
            if not data:
                continue
            if writer is None:
                writer = RawPcapWriter(path, linktype=conf.l2types.layer2num.get(layer, 1), sync=True)
                writer._write_header(None)
            when = when or time.time()
            seconds = int(when)
            writer.write_packet(data, sec=seconds, usec=min(int((when - seconds) * 1e6), 999_999))
    finally:
        sock.close()
        if writer is None:
            writer = RawPcapWriter(path, linktype=1, sync=True)
            writer._write_header(None)
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
