"""The decoder's fast path (fixed positions in each frame's first bytes) agrees with the general path."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Raw

from lbspec.runtime.capture import CaptureReader
from lbspec.runtime.decode import COLUMNS, FRAGMENT, OK, UNDECODABLE, decode

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
ADDRESSES = {"src": "203.0.113.7", "dst": "192.0.2.10"}

PACKETS = [
    IP(**ADDRESSES, ttl=61, id=77) / TCP(sport=40000, dport=80, flags="PA", seq=5, ack=6) / Raw(b"hello"),
    IP(**ADDRESSES) / TCP(sport=1, dport=80, flags="S", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
    IP(**ADDRESSES) / UDP(sport=5353, dport=53) / Raw(b"query"),
    IP(**ADDRESSES) / UDP(sport=5353, dport=6080) / Raw(b"\x00\x04\x00\x00") / IP() / TCP(),
    IP(**ADDRESSES, options=b"\x01\x01\x01\x00") / TCP(sport=2, dport=80),
    IP(**ADDRESSES, flags=1, frag=0) / TCP(sport=3, dport=80) / Raw(b"first"),
    IP(**ADDRESSES, frag=20) / Raw(b"later fragment"),
    IP(**ADDRESSES) / ICMP(type=8, id=1, seq=2) / Raw(b"ping"),
    IP(**ADDRESSES) / GRE() / IP() / UDP(),
    IP(**ADDRESSES) / IP() / TCP(),
    IPv6(src="2001:db8::1", dst="2001:db8::10") / TCP(sport=4, dport=80) / Raw(b"six"),
    IP(**ADDRESSES) / TCP(sport=5, dport=80, dataofs=3) / Raw(b"bad offset"),
    IP(**ADDRESSES) / UDP(sport=5353, dport=53, len=13) / Raw(b"query") / Raw(b"after the datagram"),
    IP(**ADDRESSES) / AH(nh=6, payloadlen=4, spi=1, seq=1, icv=bytes(12)) / TCP(sport=6, dport=80) / Raw(b"ah"),
]


def _ether(packet):
    return Ether(**MACS) / packet


FRAMES = {
    1: [_ether(p) for p in PACKETS] + [Ether(**MACS) / Dot1Q(vlan=3) / PACKETS[0],
                                       Ether(**MACS) / Dot1Q(vlan=3, type=0x8100) / Dot1Q(vlan=4, type=0x8100)
                                       / Dot1Q(vlan=5) / PACKETS[0],
                                       Ether(**MACS) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
                                       Ether(type=0x88CC, **MACS) / Raw(b"lldp")],
    113: [CookedLinux(pkttype=4 * (i % 2), proto=0x0800) / p for i, p in enumerate(PACKETS[:10])]
    + [CookedLinux(proto=0x8100) / Dot1Q(vlan=5) / PACKETS[0]],
    276: [CookedLinuxV2(pkttype=4 * (i % 2), proto=0x0800, ifindex=i) / p for i, p in enumerate(PACKETS[:10])]
    + [CookedLinuxV2(proto=0x8100) / Dot1Q(vlan=5) / PACKETS[0]],
    101: PACKETS,
    14: PACKETS,
    0: [struct.pack("<I", 2) + bytes(p) for p in PACKETS],
}


def _write(tmp_path, linktype: int, frames: list[bytes], name: str = "x.pcap", cut: int = 0):
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for t, data in enumerate(frames):
        kept = data[:max(len(data) - cut, 0)] if cut else data
        records.append(struct.pack("<IIII", 1000 + t, t, len(kept), len(data)) + kept)
    path = tmp_path / name
    path.write_bytes(b"".join(records))
    return path


def _assert_paths_agree(path) -> int:
    decoded = 0
    for frames in CaptureReader(str(path)).batches():
        general = decode(frames, 0, general=True)
        for variant in (frames, dataclasses.replace(frames, head=None)):
            fast = decode(variant, 0)
            for name in COLUMNS:
                assert fast[name].tolist() == general[name].tolist(), name
        decoded += int((general["status"] == OK).sum())
    return decoded


def test_every_link_type_and_kind_of_frame(tmp_path):
    for linktype, frames in FRAMES.items():
        assert _assert_paths_agree(_write(tmp_path, linktype, [bytes(f) for f in frames]))


def test_frames_cut_by_the_snap_length(tmp_path):
    frames = [bytes(_ether(p / Raw(b"x" * 40))) for p in PACKETS]
    for cut in (1, 30, 40, 60, 80):
        _assert_paths_agree(_write(tmp_path, 1, frames, cut=cut))


def test_mixed_link_types_in_one_pcapng(tmp_path):
    from . import pcapng

    data = pcapng.section() + pcapng.interface(1) + pcapng.interface(101) + pcapng.interface(113)
    for i, packet in enumerate(PACKETS):
        data += pcapng.packet(0, 10.0 + i, bytes(_ether(packet)))
        data += pcapng.packet(1, 10.5 + i, bytes(packet))
        data += pcapng.packet(2, 10.7 + i, bytes(CookedLinux(proto=0x0800) / packet))
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    assert _assert_paths_agree(path)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, len(PACKETS) - 1), st.integers(0, 80), st.integers(0, 255)),
                        min_size=1, max_size=30),
       linktype=st.sampled_from(sorted(FRAMES)))
def test_damaged_headers(tmp_path, changes, linktype):
    frames = [bytearray(bytes(f)) for f in FRAMES[linktype]]
    for which, at, value in changes:
        frame = frames[which % len(frames)]
        if at < len(frame):
            frame[at] = value
    _assert_paths_agree(_write(tmp_path, linktype, [bytes(f) for f in frames]))


def test_the_last_frame_of_a_buffer(tmp_path):
    frames = [bytes(_ether(PACKETS[0])), bytes(_ether(IP(**ADDRESSES) / UDP(sport=1, dport=2)))]
    path = _write(tmp_path, 1, frames)
    assert _assert_paths_agree(path) == 2
    columns = {k: np.concatenate([decode(f)[k] for f in CaptureReader(str(path)).batches()]) for k in COLUMNS}
    assert columns["dport"].tolist() == [80, 2]


@pytest.mark.parametrize("linktype, frame", [
    (113, CookedLinux(proto=0x8100) / Dot1Q(vlan=5) / PACKETS[0]),  # tcpdump -i any on a VLAN trunk
    (276, CookedLinuxV2(proto=0x8100) / Dot1Q(vlan=5) / PACKETS[0]),
    (1, Ether(**MACS) / Dot1Q(vlan=3, type=0x8100) / Dot1Q(vlan=4, type=0x8100) / Dot1Q(vlan=5) / PACKETS[0]),
], ids=["sll", "sll2", "three-tags"])
def test_vlan_tags_behind_any_link_header_are_read_through(tmp_path, linktype, frame):
    (frames,) = CaptureReader(str(_write(tmp_path, linktype, [bytes(frame)]))).batches()
    for general in (False, True):
        cols = decode(frames, 0, general=general)
        assert cols["status"].tolist() == [OK] and cols["dport"].tolist() == [PACKETS[0][TCP].dport]


def test_the_transport_header_behind_ipsec_ah_is_read_in_ipv4_as_in_ipv6(tmp_path):
    ah = AH(nh=6, payloadlen=4, spi=1, seq=1, icv=bytes(12))  # 12 bytes of header, 12 of check value
    tcp = TCP(sport=40001, dport=80, flags="PA", seq=9) / Raw(b"behind AH")
    packets = [IP(**ADDRESSES) / ah / tcp, IPv6(src="2001:db8::1", dst="2001:db8::10") / ah / tcp,
               IP(**ADDRESSES, proto=51) / Raw(bytes(6)),  # cut short inside the AH header
               IP(**ADDRESSES, proto=51, frag=20) / Raw(bytes(40))]  # a later fragment: no headers in it
    (frames,) = CaptureReader(str(_write(tmp_path, 101, [bytes(p) for p in packets]))).batches()
    cols = decode(frames, 0, general=True)
    assert cols["status"].tolist() == [OK, OK, UNDECODABLE, FRAGMENT]
    assert cols["proto"].tolist()[:2] == [6, 6] and cols["dport"].tolist()[:2] == [80, 80]
    assert cols["seq"].tolist()[:2] == [9, 9] and cols["plen"].tolist()[:2] == [9, 9]
