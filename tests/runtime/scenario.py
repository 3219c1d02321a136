"""Synthetic traffic around a load balancer, built with scapy, as each side of it sees it.

A :class:`Scenario` holds the packets a client-side and a backend-side capture
would hold, for any mode: ``flow()`` adds a TCP or UDP exchange (client
packets, what the LB sends on, the backend's answers and what the client gets
back), with knobs for every fault the monitor must see -- a packet not
forwarded, forwarded late, twice, to another backend, changed on the way.
``judge()`` runs the monitor on it in memory; ``write()`` writes capture files.

Every frame has explicit MAC addresses: scapy would otherwise look them up on
the network.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import GRE, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

import lbspec
from lbspec.runtime.monitor import Monitor, MonitorOptions, Report

START = 1_700_000_000.0
CLIENT_MAC, LB_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fe"
LB_ADDRESS = "10.1.0.1"


def backend_mac(address: str) -> str:
    last = int(address.replace(":", ".").split(".")[-1] or 0, 16 if ":" in address else 10) & 0xFF
    return f"02:00:00:00:01:{last:02x}"


def ip(src: str, dst: str, **kw) -> Packet:
    return IPv6(src=src, dst=dst, **({"hlim": kw["ttl"]} if "ttl" in kw else {})) if ":" in dst \
        else IP(src=src, dst=dst, **kw)


def ttl(packet: Packet) -> int:
    return packet.hlim if isinstance(packet, IPv6) else packet.ttl


@dataclass
class Sent:
    """One packet and the side it was seen on."""

    time: float
    side: str  # client | backend
    packet: Packet


@dataclass
class Scenario:
    mode: str = "nat"  # nat | snat | dsr | ipip | gre | gue | proxy
    vip: str = "192.0.2.10"
    latency: float = 0.0005
    snat_source: str = LB_ADDRESS  # the LB's address toward backends in snat (some LBs use the VIP)
    packets: list[Sent] = field(default_factory=list)
    ports: itertools.count = field(default_factory=lambda: itertools.count(40000))
    seqs: itertools.count = field(default_factory=lambda: itertools.count(1_000_000, 7_919_011))
    gue_ports: itertools.count = field(default_factory=lambda: itertools.count(50000, 7))
    ip_ids: itertools.count = field(default_factory=lambda: itertools.count(4242, 101))

    # ------------------------------------------------------------ packets --

    def add(self, time: float, side: str, packet: Packet) -> None:
        client = side == "client"
        frame = packet if isinstance(packet, Ether) else \
            Ether(src=CLIENT_MAC if client else LB_MAC, dst=LB_MAC if client else "02:00:00:00:00:aa") / packet
        frame.time = START + time
        self.packets.append(Sent(START + time, side, frame))

    def arp(self, backend: str, time: float = 0.0) -> None:
        """A backend announcing its MAC (how the monitor learns who is who in dsr)."""
        frame = Ether(src=backend_mac(backend), dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=2, hwsrc=backend_mac(backend), psrc=backend, pdst=LB_ADDRESS)
        frame.time = START + time
        self.packets.append(Sent(START + time, "backend", frame))

    def egress(self, inner: Packet, backend: str, client: str, cport: int, lport: int) -> Packet:
        """``inner`` (client -> VIP) as the LB sends it to ``backend`` in this mode."""
        l4 = inner.payload.copy()
        if self.mode == "nat":
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(client, backend, ttl=ttl(inner) - 1) / l4
        if self.mode == "snat":
            l4.sport = lport
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(self.snat_source, backend, ttl=ttl(inner) - 1) / l4
        if self.mode == "dsr":
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / inner.copy()
        outer = ip(LB_ADDRESS, backend)
        if self.mode == "ipip":
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / outer / inner.copy()
        if self.mode == "gre":
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / outer / GRE() / inner.copy()
        if self.mode == "gue":
            gue = Raw(b"\x00" + bytes([4 if inner.version == 4 else 41]) + b"\x00\x00")
            return Ether(src=LB_MAC, dst=backend_mac(backend)) / outer / UDP(sport=next(self.gue_ports), dport=6080) \
                / gue / inner.copy()
        raise ValueError(self.mode)

    # -------------------------------------------------------------- flows --

    def flow(self, backend: str | list[str], start: float = 0.0, *, proto: str = "tcp", client: str = "203.0.113.7",
             cport: int | None = None, vport: int = 80, bport: int | None = 8080, segments: int = 3,
             gap: float = 0.01, payload: bytes = b"data", drop: set[int] = frozenset(),
             late: dict[int, float] | None = None, twice: set[int] = frozenset(), change=None,
             reply: bool = True, reply_from: str | None = None, handshake: bool = True,
             answer: str = "synack") -> dict:
        """A client exchange; packet ``i`` (0 = SYN for TCP) may be dropped, late, sent twice or changed.

        ``backend`` may be a list: packet ``i`` goes to ``backend[i]`` (an affinity break).
        ``change(i, frame)`` returns the frame as the LB (wrongly) sends it.
        """
        cport = cport or next(self.ports)
        lport = next(self.ports) + 10000
        seq = next(self.seqs) % (1 << 32)
        bport = vport if self.mode in ("dsr", "ipip", "gre", "gue") else bport or vport
        packets = self._client_packets(proto, client, cport, vport, seq, segments, payload, handshake)
        self._acked = None  # the backend acknowledges only contiguous bytes
        for i, inner in enumerate(packets):
            t = start + i * gap
            self.add(t, "client", inner)
            target = backend[min(i, len(backend) - 1)] if isinstance(backend, list) else backend
            if i in drop:
                if self._acked is None and TCP in inner:
                    self._acked = inner[TCP].seq
                continue
            out = self._retarget(self.egress(inner, target, client, cport, lport), bport)
            if change is not None:
                out = change(i, out)
            delay = (late or {}).get(i, self.latency)
            self.add(t + delay, "backend", out)
            if i in twice:
                self.add(t + delay + 0.0001, "backend", out.copy())
            if reply and self.mode in ("nat", "snat"):
                self._answer(inner, target, client, cport, vport, bport, lport, t + delay, reply_from, answer, i)
        return {"cport": cport, "seq": seq}

    def datagram(self, backend: str | list[str], start: float = 0.0, *, client: str = "203.0.113.7",
                 cport: int | None = None, vport: int = 53, bport: int = 53, size: int = 4000, mtu: int = 1500,
                 backend_mtu: int | None = None, drop: set[int] = frozenset(), change: set[int] = frozenset(),
                 hidden: set[int] = frozenset(), reverse: str = "", reply: bool = True) -> list[int]:
        """A UDP datagram of ``size`` bytes cut into fragments for an ``mtu``, and what the LB sends on.

        ``backend`` may be a list: fragment ``i`` goes to ``backend[i]``.  Fragment ``i`` may be dropped,
        changed (a byte of it), or ``hidden`` from both captures (they started after it went).  The LB sends
        the fragments at the client's boundaries, or reassembles the datagram and cuts it for
        ``backend_mtu`` (0: sends it whole).  ``reverse`` ("client", "backend" or "both") sends that side's
        fragments last first.  Returns the fragments' offsets."""
        cport = cport or next(self.ports)
        lport = next(self.ports) + 10000
        ident = next(self.ip_ids)
        data = bytes((k * 7 + ident) & 0xFF for k in range(size))
        six = ":" in self.vip
        inner = (IPv6(src=client, dst=self.vip, hlim=64) / IPv6ExtHdrFragment(id=ident) if six
                 else IP(src=client, dst=self.vip, ttl=64, id=ident)) / UDP(sport=cport, dport=vport) / Raw(data)
        pieces = _cut(inner, mtu)
        targets = backend if isinstance(backend, list) else [backend] * len(pieces)
        whole = self._retarget(self.egress(inner.copy(), targets[0], client, cport, lport), bport)
        if not six:
            whole[IP].id = ident  # NAT keeps the IP ID
        if backend_mtu is None and self.mode in ("nat", "snat"):
            out = [Ether(src=LB_MAC, dst=backend_mac(t)) / p for t, p in zip(targets, _cut(_ip_of(whole), mtu))]
            for k, frame in enumerate(out):  # each to its own backend
                frame[IPv6 if six else IP].dst = targets[k]
                if not six:
                    del frame[IP].chksum
        elif backend_mtu is None:
            out = [self.egress(p, t, client, cport, lport) for p, t in zip(pieces, targets)]
        else:
            out = [Ether(src=LB_MAC, dst=backend_mac(targets[0])) / p
                   for p in (_cut(_ip_of(whole), backend_mtu) if backend_mtu else [_ip_of(whole)])]
        for k in change:
            out[k] = Ether(bytes(out[k])[:-1] + bytes([bytes(out[k])[-1] ^ 0xFF]))
        shown = [k for k in range(len(pieces)) if k not in hidden]
        for n, k in enumerate(shown[::-1] if reverse in ("client", "both") else shown):
            self.add(start + n * 0.00001, "client", pieces[k])
        sent = [k for k in range(len(out)) if k not in drop and k not in hidden]
        for n, k in enumerate(sent[::-1] if reverse in ("backend", "both") else sent):
            self.add(start + self.latency + n * 0.00001, "backend", out[k])
        if reply and self.mode in ("nat", "snat"):
            small = (IP(src=client, dst=self.vip) if not six else IPv6(src=client, dst=self.vip)) / UDP(
                sport=cport, dport=vport) / Raw(b"q")
            self._answer(small, targets[0], client, cport, vport, bport, lport, start + self.latency + 0.001, None,
                         "synack", 0)
        return [_offset(p) for p in pieces]

    def _client_packets(self, proto, client, cport, vport, seq, segments, payload, handshake) -> list[Packet]:
        packets = []
        if proto == "tcp":
            if handshake:
                packets.append(ip(client, self.vip, ttl=64) / TCP(sport=cport, dport=vport, flags="S", seq=seq))
                seq += 1
            for k in range(segments):
                data = payload + b"%d" % k
                packets.append(ip(client, self.vip, ttl=64) / TCP(sport=cport, dport=vport, flags="PA", seq=seq,
                                                                   ack=1) / Raw(data))
                seq += len(data)
        else:
            for k in range(segments):
                packets.append(ip(client, self.vip, ttl=64) / UDP(sport=cport, dport=vport) / Raw(payload + b"%d" % k))
        return packets

    def _retarget(self, frame: Packet, bport: int) -> Packet:
        if self.mode in ("nat", "snat"):
            layer = frame.getlayer(TCP) or frame.getlayer(UDP)
            layer.dport = bport
        return frame

    def _answer(self, inner, backend, client, cport, vport, bport, lport, t, reply_from, answer, i) -> None:
        """The backend's answer and what the client gets back (nat and snat: through the LB)."""
        tcp = inner.getlayer(TCP)
        if tcp is not None:
            flags = {"synack": "SA", "rst": "RA"}[answer] if "S" in tcp.flags else "A"
            end = tcp.seq + max(len(tcp.payload), 1 if "S" in tcp.flags else 0)
            end = end if self._acked is None else self._acked
            theirs = TCP(sport=bport, dport=lport if self.mode == "snat" else cport, flags=flags, seq=777, ack=end)
            mine = TCP(sport=vport, dport=cport, flags=flags, seq=777, ack=end)
        else:
            theirs = UDP(sport=bport, dport=lport if self.mode == "snat" else cport) / Raw(b"answer%d" % i)
            mine = UDP(sport=vport, dport=cport) / Raw(b"answer%d" % i)
        target = self.snat_source if self.mode == "snat" else client
        self.add(t + 0.001, "backend", Ether(src=backend_mac(backend), dst=LB_MAC) / ip(backend, target) / theirs)
        source = reply_from or self.vip
        if reply_from is not None:
            mine = theirs.copy()
            mine.dport = cport
        self.add(t + 0.0012, "client", Ether(src=LB_MAC, dst=CLIENT_MAC) / ip(source, client) / mine)

    def proxy_flow(self, backend: str, start: float = 0.0, *, client: str = "203.0.113.7", vport: int = 80,
                   bport: int = 8080, chunks: tuple[bytes, ...] = (b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n"),
                   gap: float = 0.01, regroup: bool = True, lose: int | None = None, alter: bool = False,
                   delay: float = 0.002, open_backend: bool = True, header=None, connect: float = 0.0005,
                   close: float | None = None, answer: bytes = b"", cport: int | None = None) -> int:
        """A client connection the LB terminates, and its own connection to ``backend`` carrying the bytes.

        ``regroup`` sends the client's chunks to the backend as one segment; ``lose`` leaves a chunk out;
        ``alter`` changes a byte on the way; ``header(client, cport, vip, vport)`` is what the LB sends the
        backend ahead of them (a PROXY protocol header), in a segment of its own.  The LB connects to the
        backend ``connect`` seconds after the client's SYN (its bytes follow each chunk by ``delay``), and
        ``close`` seconds after it ends that connection (a FIN to the backend).  The backend sends ``answer``
        (if any) once the bytes are there, and the LB relays it to the client.
        """
        cport, lport = cport or next(self.ports), next(self.ports) + 20000
        cseq, bseq = next(self.seqs) % (1 << 32), next(self.seqs) % (1 << 32)
        self.add(start, "client", ip(client, self.vip, ttl=64) / TCP(sport=cport, dport=vport, flags="S", seq=cseq))
        self.add(start + 0.0002, "client", ip(self.vip, client) / TCP(sport=vport, dport=cport, flags="SA", seq=5,
                                                                       ack=cseq + 1))
        if open_backend:
            self.add(start + connect, "backend", Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(LB_ADDRESS, backend)
                     / TCP(sport=lport, dport=bport, flags="S", seq=bseq))
        offset, t = 1, start
        for k, chunk in enumerate(chunks):
            t = start + (k + 1) * gap
            self.add(t, "client", ip(client, self.vip, ttl=64) / TCP(sport=cport, dport=vport, flags="PA",
                                                                      seq=cseq + offset, ack=6) / Raw(chunk))
            offset += len(chunk)
        sent = [c for k, c in enumerate(chunks) if k != lose]
        if alter and sent:
            sent[-1] = sent[-1][:-1] + bytes([sent[-1][-1] ^ 0xFF])
        pieces = [b"".join(sent)] if regroup else sent
        if header is not None:
            pieces.insert(0, header(client, cport, self.vip, vport))
        boffset = 1
        for piece in pieces if open_backend else []:
            self.add(t + delay, "backend", Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(LB_ADDRESS, backend)
                     / TCP(sport=lport, dport=bport, flags="PA", seq=bseq + boffset, ack=9) / Raw(piece))
            boffset += len(piece)
        if answer and open_backend:
            self.add(t + delay + 0.001, "backend", Ether(src=backend_mac(backend), dst=LB_MAC) / ip(backend, LB_ADDRESS)
                     / TCP(sport=bport, dport=lport, flags="PA", seq=9, ack=bseq + boffset) / Raw(answer))
            self.add(t + delay + 0.0015, "client", ip(self.vip, client) / TCP(sport=vport, dport=cport, flags="PA",
                                                                              seq=6, ack=cseq + offset) / Raw(answer))
        if open_backend and close is not None:
            self.add(start + close, "backend", Ether(src=LB_MAC, dst=backend_mac(backend)) / ip(LB_ADDRESS, backend)
                     / TCP(sport=lport, dport=bport, flags="FA", seq=bseq + boffset, ack=9))
        return cport

    # --------------------------------------------------------------- runs --

    def _ended(self) -> list[Sent]:
        """The packets, and on each side an ARP frame a while after the last one: a capture that kept
        running, so the monitor can judge the last packets (it leaves alone what a capture stopped too
        soon to show)."""
        last = max((s.time for s in self.packets), default=START) + 0.2
        marks = []
        for side in ("client", "backend"):
            frame = Ether(src="02:00:00:00:00:99", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.9.9.9", pdst="10.9.9.8")
            frame.time = last
            marks.append(Sent(last, side, frame))
        return sorted(self.packets + marks, key=lambda s: s.time)

    def judge(self, spec: str, events: list[tuple[float, str, bool]] = (), combined: bool = False,
              **options) -> Report:
        monitor = Monitor(lbspec.loads(spec, "spec.lbspec"), options=MonitorOptions(**options))
        for time, backend, up in events:
            monitor.health(backend, up, START + time)
        for sent in self._ended():
            monitor.feed(sent.packet, side=None if combined else sent.side)
        return monitor.close()

    def write(self, directory: Path, combined: bool = False, name: str = "lb") -> list[Path]:
        ordered = self._ended()
        if combined:
            path = directory / f"{name}.pcap"
            wrpcap(str(path), [s.packet for s in ordered])
            return [path]
        paths = []
        for side in ("client", "backend"):
            path = directory / f"{name}-{side}.pcap"
            wrpcap(str(path), [s.packet for s in ordered if s.side == side])
            paths.append(path)
        return paths


def _ip_of(frame: Packet) -> Packet:
    """The IP packet of a frame (its link header taken off)."""
    return frame.payload.copy() if isinstance(frame, Ether) else frame.copy()


def _cut(packet: Packet, mtu: int) -> list[Packet]:
    """``packet`` cut into fragments for ``mtu``, each with its headers built (as a capture shows them)."""
    if isinstance(packet, IPv6):
        if IPv6ExtHdrFragment not in packet:
            head = packet.copy()
            head.remove_payload()
            packet = head / IPv6ExtHdrFragment(id=4242) / packet.payload.copy()
        pieces = fragment6(packet, mtu)
    else:
        pieces = fragment(packet, mtu - 20)
    return [p.__class__(bytes(p)) for p in pieces]


def _offset(packet: Packet) -> int:
    return packet[IPv6ExtHdrFragment].offset * 8 if IPv6ExtHdrFragment in packet else packet.frag * 8


def codes(report: Report) -> list[str]:
    """The codes of the verdicts (errors and warnings), sorted."""
    return sorted(d.code for d in report.diagnostics if d.severity.value in ("error", "warning"))


def spec(body: str = "", mode: str = "nat", vip: str = "192.0.2.10", backends: str = "", listen: str = "tcp 80",
         rule: str = "forward tcp 80 to app port 8080", health: str = "health tcp every 1s timeout 500ms fall 2 rise 2",
         ) -> str:
    pool = backends or "backend b1 10.1.0.11\n        backend b2 10.1.0.12"
    return f"""
service web {{
    vip {vip}
    listen {listen}
    mode {mode}
    pool app {{
        {pool}
    }}
    {rule}
    {health}
    {body}
}}
"""
