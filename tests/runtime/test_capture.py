"""Reading captures: formats, link types, encapsulations, and damage that must never stop a read silently."""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapWriter, wrpcap

from lbspec.runtime import capture
from lbspec.runtime.capture import CaptureError, CaptureReader, rows_at
from lbspec.runtime.decode import FRAGMENT, NOT_IP, OK, UNDECODABLE, decode

from . import pcapng

MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def _read(path) -> tuple[list, CaptureReader]:
    reader = CaptureReader(str(path))
    return [decode(f) for f in reader.batches()], reader


def _rows(path):
    batches, reader = _read(path)
    cols = {k: np.concatenate([b[k] for b in batches]) for k in batches[0].cols}
    return cols, reader


def _pcap(tmp_path, frames, linktype=1, name="x.pcap"):
    path = tmp_path / name
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for t, frame in enumerate(frames):
        data = bytes(frame)
        records.append(struct.pack("<IIII", 1000 + t, 0, len(data), len(data)) + data)
    path.write_bytes(b"".join(records))
    return path


TCP_PACKET = IP(src="203.0.113.7", dst="192.0.2.10", ttl=61, id=77) / TCP(sport=40000, dport=80, flags="PA",
                                                                           seq=5, ack=6) / Raw(b"hello")


@pytest.mark.parametrize("linktype, frame", [
    (1, Ether(**MACS) / TCP_PACKET),
    (1, Ether(**MACS) / Dot1Q(vlan=7) / TCP_PACKET),
    (1, Ether(**MACS) / Dot1AD(vlan=8) / Dot1Q(vlan=7) / TCP_PACKET),
    (113, CookedLinux(pkttype=4, proto=0x0800) / TCP_PACKET),
    (276, CookedLinuxV2(pkttype=0, proto=0x0800) / TCP_PACKET),
    (101, TCP_PACKET),
    (228, TCP_PACKET),
    (14, TCP_PACKET),  # raw IP as OpenBSD numbers it
    (0, struct.pack("<I", 2) + bytes(TCP_PACKET)),
    (108, struct.pack(">I", 2) + bytes(TCP_PACKET)),
])
def test_link_types(tmp_path, linktype, frame):
    cols, _ = _rows(_pcap(tmp_path, [frame], linktype))
    assert cols["status"].tolist() == [OK]
    assert (cols["sport"][0], cols["dport"][0], cols["seq"][0], cols["ack"][0]) == (40000, 80, 5, 6)
    assert (cols["ttl"][0], cols["ipid"][0], cols["plen"][0], cols["flags"][0]) == (61, 77, 5, 0x18)


def test_direction_from_cooked_headers(tmp_path):
    frames = [CookedLinuxV2(pkttype=0, proto=0x0800) / TCP_PACKET, CookedLinuxV2(pkttype=4, proto=0x0800) / TCP_PACKET]
    cols, _ = _rows(_pcap(tmp_path, frames, 276))
    assert cols["dirn"].tolist() == [1, 2]


def test_ipv6_extension_headers_and_fragments(tmp_path):
    base = IPv6(src="2001:db8::1", dst="2001:db8::10")
    frames = [Ether(**MACS) / base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=5, dport=53) / Raw(b"q"),
              Ether(**MACS) / base / IPv6ExtHdrFragment(offset=0, m=1, id=9) / UDP(sport=5, dport=53) / Raw(b"q"),
              Ether(**MACS) / base / IPv6ExtHdrFragment(offset=10, m=0, id=9, nh=17) / Raw(b"rest")]
    cols, _ = _rows(_pcap(tmp_path, frames))
    assert cols["status"].tolist() == [OK, OK, FRAGMENT]
    assert cols["dport"].tolist()[:2] == [53, 53] and cols["proto"].tolist() == [17, 17, 17]
    assert cols["ipid"][1] == 9


def test_tunnels_are_read_by_their_inner_packet(tmp_path):
    inner = IP(src="203.0.113.7", dst="192.0.2.10") / TCP(sport=1, dport=80) / Raw(b"in")
    outer = IP(src="10.1.0.1", dst="10.1.0.11")
    gue = UDP(sport=51234, dport=6080) / Raw(b"\x00\x04\x00\x00")
    frames = [Ether(**MACS) / outer / inner, Ether(**MACS) / outer / GRE() / inner,
              Ether(**MACS) / outer / GRE(key_present=1, key=7, seqnum_present=1) / inner,
              Ether(**MACS) / outer / gue / inner, Ether(**MACS) / outer / IPv6(src="::1", dst="::2") / UDP()]
    cols, _ = _rows(_pcap(tmp_path, frames))
    assert cols["status"].tolist() == [OK] * 5
    assert cols["tun"].tolist() == [1, 2, 2, 3, 1]
    assert cols["dport"].tolist()[:4] == [80] * 4
    assert (cols["od_lo"][:4] & 0xFFFFFFFF).tolist() == [0x0A01000B] * 4


def test_icmp(tmp_path):
    frames = [Ether(**MACS) / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=8, id=3, seq=4) / Raw(b"ping")]
    cols, _ = _rows(_pcap(tmp_path, frames))
    assert cols["icmp"][0] >> 8 == 8 and cols["echo"][0] == (3 << 16 | 4) and cols["sport"][0] == 0


def test_non_ip_and_damaged_frames_are_counted_not_fatal(tmp_path):
    bad_ihl = bytearray(bytes(Ether(**MACS) / TCP_PACKET))
    bad_ihl[14] = 0x42
    frames = [bytes(Ether(**MACS) / TCP_PACKET)[:30], bytes(bad_ihl), Ether(type=0x88cc, **MACS) / Raw(b"lldp"),
              bytes(Ether(**MACS) / TCP_PACKET)[:40], b"\x00"]
    cols, _ = _rows(_pcap(tmp_path, frames))
    assert cols["status"].tolist() == [UNDECODABLE, UNDECODABLE, NOT_IP, UNDECODABLE, UNDECODABLE]
    assert cols["why"].tolist() == [3, 5, 0, 7, 1]


def test_pcapng_interfaces_resolutions_directions_and_statistics(tmp_path):
    frame = bytes(Ether(**MACS) / TCP_PACKET)
    data = (pcapng.section() + pcapng.interface(1) + pcapng.interface(101, resolution=9, name="tun0")
            + pcapng.packet(0, 1000.5, frame, direction=1) + pcapng.packet(1, 1001.25, bytes(TCP_PACKET), 1e9, 2)
            + pcapng.simple(frame) + pcapng.statistics(0, 17))
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    cols, reader = _rows(path)
    assert cols["status"].tolist() == [OK, OK, OK]
    assert cols["ts"].tolist() == pytest.approx([1000.5, 1001.25, 1001.25])
    assert cols["dirn"].tolist() == [1, 2, 0]
    assert reader.dropped == 17


def test_pcapng_sections_in_both_byte_orders(tmp_path):
    little = pcapng.section() + pcapng.interface(101) + pcapng.packet(0, 5.0, bytes(TCP_PACKET))
    big = bytes.fromhex("0a0d0d0a0000001c1a2b3c4d00010000ffffffffffffffff0000001c")
    big += struct.pack(">II", 1, 20) + struct.pack(">HHI", 101, 0, 65535) + struct.pack(">I", 20)
    payload = bytes(TCP_PACKET)
    padded = payload + b"\x00" * (-len(payload) % 4)
    body = struct.pack(">IIIII", 0, 0, 7_000_000, len(payload), len(payload)) + padded
    big += struct.pack(">II", 6, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))
    path = tmp_path / "x.pcapng"
    path.write_bytes(little + big)
    cols, _ = _rows(path)
    assert cols["ts"].tolist() == [5.0, 7.0] and cols["sport"].tolist() == [40000, 40000]


def test_unsupported_interface_link_type_is_counted(tmp_path):
    data = pcapng.section() + pcapng.interface(147) + pcapng.packet(0, 1.0, b"\x01\x02\x03\x04")
    path = tmp_path / "x.pcapng"
    path.write_bytes(data)
    cols, reader = _rows(path)
    assert cols["status"].tolist() == [UNDECODABLE] and cols["why"].tolist() == [2]
    assert reader.damage[0].what == "linktype"


@pytest.mark.parametrize("batch", [2, 1000])
def test_an_unsupported_link_type_is_reported_before_the_frame_it_comes_before(tmp_path, batch):
    data = pcapng.section() + pcapng.interface(1) + b"".join(pcapng.packet(0, NOW + t, FRAME) for t in range(5))
    data += pcapng.interface(147) + pcapng.packet(1, NOW + 5, b"\x01\x02\x03\x04")
    reader = CaptureReader(str(_write(tmp_path, data, "x.pcapng")), batch_frames=batch)
    assert sum(len(f) for f in reader.batches()) == 6
    assert [(d.what, d.frame) for d in reader.damage] == [("linktype", 6)]


def test_gzip_and_nanosecond_pcap(tmp_path):
    path = tmp_path / "x.pcap"
    wrpcap(str(path), [Ether(**MACS) / TCP_PACKET], nano=True)
    zipped = tmp_path / "x.pcap.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    cols, _ = _rows(zipped)
    assert cols["sport"].tolist() == [40000]


@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_damaged_gzip_keeps_every_frame_before_the_damage(tmp_path, damage):
    path = _pcap(tmp_path, [Ether(**MACS) / TCP_PACKET / Raw(bytes([k]) * 600) for k in range(200)])
    packed = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    zipped = bytearray(packed.compress(path.read_bytes()) + packed.flush())
    if damage == "cut":
        zipped = zipped[:len(zipped) * 3 // 4]
    else:
        zipped[-6] ^= 0xFF  # the CRC: every frame decompresses, and the check at the end fails
    (tmp_path / "x.pcap.gz").write_bytes(bytes(zipped))
    cols, reader = _rows(tmp_path / "x.pcap.gz")
    assert (100 < len(cols["ts"]) < 200) if damage == "cut" else len(cols["ts"]) == 200
    assert "compressed" in [d.what for d in reader.damage]
    assert all(d.frame == len(cols["ts"]) + 1 for d in reader.damage)


def test_truncated_file_keeps_what_is_complete(tmp_path):
    path = _pcap(tmp_path, [Ether(**MACS) / TCP_PACKET] * 3)
    path.write_bytes(path.read_bytes()[:-10])
    cols, reader = _rows(path)
    assert len(cols["ts"]) == 2
    assert [d.what for d in reader.damage] == ["truncated"]


def test_a_corrupt_record_header_is_skipped_and_reading_resumes(tmp_path):
    path = _pcap(tmp_path, [Ether(**MACS) / TCP_PACKET] * 8)
    data = bytearray(path.read_bytes())
    data[24 + 8:24 + 12] = b"\xff\xff\xff\x7f"  # the first record claims 2 GB
    path.write_bytes(bytes(data))
    cols, reader = _rows(path)
    assert 6 <= len(cols["ts"]) <= 7
    assert reader.damage and reader.damage[0].what == "skipped"


def test_snaplen_cut_frames(tmp_path):
    frame = bytes(Ether(**MACS) / IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / Raw(b"x" * 500))
    path = tmp_path / "x.pcap"
    writer = RawPcapWriter(str(path), linktype=1, snaplen=96)
    writer._write_header(None)
    writer.write_packet(frame[:96], sec=1, usec=0, caplen=96, wirelen=len(frame))
    writer.close()
    cols, _ = _rows(path)
    assert cols["status"].tolist() == [OK]
    assert cols["plen"][0] == 500 and cols["pcap"][0] == 96 - 54


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"), (b"\x00\x01", "too short"), (b"hello world, not a capture at all", "not a pcap"),
    (bytes.fromhex("d4c3b2a1020004000000000000000000ffff0000"), "cut short"),
    (bytes.fromhex("d4c3b2a102000400000000000000000000000400ee000000"), "unsupported link type"),
    (b"\x1f\x8b\x08\x00garbage", "damaged"),
])
def test_files_that_are_not_captures_raise(tmp_path, content, reason):
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=reason):
        _read(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        _read(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="directory"):
        _read(tmp_path)


def test_rows_at_copies_each_offsets_bytes_and_zeros_past_the_end():
    buf = bytes(range(256)) * 3
    offsets = np.array([0, 5, 700, 767, 760, 1, 768 - 16], np.int64)
    table = rows_at(buf, offsets, 16)
    assert table.shape == (len(offsets), 16)
    for row, at in zip(table, offsets.tolist()):
        piece = buf[at:at + 16]
        assert bytes(row) == piece + bytes(16 - len(piece))
    assert rows_at(buf, np.zeros(0, np.int64), 16).shape == (0, 16)
    assert bytes(rows_at(b"abc", np.array([0, 2]), 8)[1]) == b"c" + bytes(7)


FRAME = bytes(Ether(**MACS) / TCP_PACKET)
NOW = 1_700_000_000  # damage is told apart from records by, among other things, seconds far before the last


def _capture(kind: str, n: int = 8) -> tuple[bytes, list[bytes]]:
    """A capture's head and its ``n`` records (all of one size), a second apart from ``NOW``."""
    if kind == "pcap":
        head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        return head, [struct.pack("<IIII", NOW + t, 0, len(FRAME), len(FRAME)) + FRAME for t in range(n)]
    return pcapng.section() + pcapng.interface(1), [pcapng.packet(0, NOW + t, FRAME) for t in range(n)]


def _damage(reader) -> list[tuple]:
    return [(d.what, d.frame, d.offset, d.size) for d in reader.damage]


def _write(tmp_path, data: bytes, name: str = "x.cap"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
@pytest.mark.parametrize("garbage", [b"\xff" * 7, b"\x00" * 5, bytes(range(1, 10)), b"\xff" * 3])
def test_garbage_between_records_is_stepped_over_byte_by_byte(tmp_path, kind, garbage):
    head, records = _capture(kind)
    at = len(head) + 4 * len(records[0])
    cols, reader = _rows(_write(tmp_path, head + b"".join(records[:4]) + garbage + b"".join(records[4:])))
    assert len(cols["ts"]) == 8
    assert _damage(reader) == [("skipped", 5, at, len(garbage))]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_gzipd_garbage_longer_than_a_read_is_stepped_over_as_one_stretch(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(capture, "READ_SIZE", 1 << 20)  # garbage four reads long, with less to spare than a search needs
    head, records = _capture(kind)
    garbage = b"\xff" * (4 << 20)
    data = head + b"".join(records[:4]) + garbage + b"".join(records[4:])
    cols, reader = _rows(_write(tmp_path, gzip.compress(data, 1), "x.gz"))
    assert len(cols["ts"]) == 8
    assert _damage(reader) == [("skipped", 5, len(head) + 4 * len(records[0]), len(garbage))]


def test_a_pcapng_block_too_short_for_a_packet_at_the_end_is_damage(tmp_path):
    head, records = _capture("pcapng")
    data = head + b"".join(records)
    cols, reader = _rows(_write(tmp_path, data + struct.pack("<III", 6, 12, 12)))
    assert len(cols["ts"]) == 8
    assert _damage(reader) == [("skipped", 9, len(data), 12)]


def test_a_pcapng_block_whose_two_lengths_disagree_is_not_trusted(tmp_path):
    head, records = _capture("pcapng")
    swallow = struct.pack("<II", 0x12345678, 8 + 3 * len(records[0]))  # an unknown block "holding" the next three
    cols, reader = _rows(_write(tmp_path, head + b"".join(records[:4]) + swallow + b"".join(records[4:])))
    assert len(cols["ts"]) == 8
    assert _damage(reader) == [("skipped", 5, len(head) + 4 * len(records[0]), 8)]


def test_a_pcapng_packet_that_does_not_fit_its_block_is_reported_where_it_is(tmp_path):
    head, records = _capture("pcapng")
    bad = bytearray(records[4])
    struct.pack_into("<I", bad, 20, len(FRAME) + 400)  # the captured length
    cols, reader = _rows(_write(tmp_path, head + b"".join(records[:4]) + bytes(bad) + b"".join(records[5:])))
    assert len(cols["ts"]) == 7
    assert _damage(reader) == [("skipped", 5, len(head) + 4 * len(records[0]), len(bad))]


@pytest.mark.parametrize("kind, damage", [("pcap", "length"), ("pcapng", "length"), ("pcapng", "inside")])
def test_a_length_past_the_end_with_records_after_it_is_skipped_not_truncated(tmp_path, kind, damage):
    head, records = _capture(kind)
    bad = bytearray(records[4])
    if damage == "inside":
        bad[40:40] = b"\xde\xad\xbe\xef" * 2  # the block's lengths no longer frame it
    else:  # a length past the end of the file, within what writers write
        struct.pack_into("<I", bad, 8 if kind == "pcap" else 4, 200_000)
    cols, reader = _rows(_write(tmp_path, head + b"".join(records[:4]) + bytes(bad) + b"".join(records[5:])))
    assert len(cols["ts"]) == 7
    assert _damage(reader) == [("skipped", 5, len(head) + 4 * len(records[0]), len(bad))]


def _caplen(record: bytes, caplen: int) -> bytes:
    return record[:8] + struct.pack("<I", caplen) + record[12:]


@pytest.mark.parametrize("damage", ["caplen+4", "caplen 1500", "usec 1500000"])
def test_a_record_that_puts_the_walk_off_is_skipped(tmp_path, damage):
    """Each of these reads every later header a few bytes off its place unless the walk is checked."""
    head, records = _capture("pcap", 40)
    bad = {"caplen+4": _caplen(records[4], len(FRAME) + 4), "caplen 1500": _caplen(records[4], 1500),
           "usec 1500000": records[4][:4] + struct.pack("<I", 1_500_000) + records[4][8:]}[damage]
    cols, reader = _rows(_write(tmp_path, head + b"".join(records[:4]) + bad + b"".join(records[5:])))
    assert len(cols["ts"]) == 39 and (cols["status"] == OK).all()
    assert cols["ts"].tolist() == [NOW + t for t in range(40) if t != 4]
    assert _damage(reader) == [("skipped", 5, len(head) + 4 * len(records[0]), len(records[4]))]


def test_zero_bytes_after_the_last_record_are_no_records(tmp_path):
    head, records = _capture("pcap")
    data = head + b"".join(records)
    cols, reader = _rows(_write(tmp_path, data + bytes(4096)))
    assert len(cols["ts"]) == 8
    assert _damage(reader) == [("skipped", 9, len(data), 4096)]


def test_a_frame_check_sequence_in_the_link_type_field_is_read_and_left_out(tmp_path):
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1 | 1 << 26 | 2 << 28)  # 2 words of FCS
    records = [struct.pack("<IIII", NOW + t, 0, len(FRAME) + 4, len(FRAME) + 4) + FRAME + b"\x01\x02\x03\x04"
               for t in range(3)]
    cols, reader = _rows(_write(tmp_path, head + b"".join(records)))
    assert cols["status"].tolist() == [OK] * 3 and cols["lt"].tolist() == [1] * 3
    assert cols["rlen"].tolist() == [len(FRAME)] * 3 and cols["wlen"].tolist() == [len(FRAME)] * 3
    assert not reader.damage


def test_a_pipe_is_refused_before_anything_is_read_from_it():
    head, records = _capture("pcap")
    read, write = os.pipe()
    try:
        os.write(write, head + b"".join(records))
        os.close(write)
        reader = CaptureReader(f"/dev/fd/{read}")
        with pytest.raises(CaptureError):
            reader.check()
        with pytest.raises(CaptureError):
            _read(f"/dev/fd/{read}")
        assert len(os.read(read, 1 << 16)) == len(head) + sum(map(len, records))  # nothing was taken from it
    finally:
        os.close(read)


def _block(kind: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("<II", kind, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


@pytest.mark.parametrize("batch", [1, 2, 1000])
@pytest.mark.parametrize("zipped", [False, True])
def test_pcapng_blocks_wireshark_lists_as_frames_take_a_frame_number(tmp_path, batch, zipped):
    """Custom blocks, systemd journal entries and sysdig events hold no packet, but Wireshark numbers each as
    a frame: the packets after them keep Wireshark's numbers, and so does damage after them."""
    custom = _block(0x00000BAD, struct.pack("<I", 32473) + b"custom")
    private = _block(0x40000BAD, struct.pack("<I", 32473) + b"not to be copied")
    journal = _block(0x00000009, b"__REALTIME_TIMESTAMP=1700000000000000\nMESSAGE=x\n")
    event = _block(0x00000216, struct.pack("<HQQIHI", 0, 1, 2, 3, 4, 0))
    unknown = _block(0x00012345, b"no frame")  # neither a packet nor anything Wireshark lists
    packet = [pcapng.packet(0, NOW + t, FRAME) for t in range(6)]
    data = (pcapng.section() + custom + pcapng.interface(1) + packet[0] + journal + unknown + packet[1] + packet[2]
            + event + private + packet[3] + b"\xff" * 7 + packet[4] + custom + packet[5] + journal)
    path = _write(tmp_path, gzip.compress(data) if zipped else data)
    reader = CaptureReader(str(path), batch_frames=batch)
    frames = [f for f in reader.batches()]
    assert np.concatenate([f.frame for f in frames]).tolist() == [2, 4, 5, 8, 9, 11]
    assert np.concatenate([f.ts for f in frames]).tolist() == [NOW + t for t in range(6)]
    assert [(d.what, d.frame) for d in reader.damage] == [("skipped", 9)]


@pytest.mark.parametrize("frame", [
    Ether(**MACS) / IP(src="203.0.113.7", dst="192.0.2.10") / UDP(sport=5353, dport=53, len=13) / Raw(b"query"),
    Ether(**MACS) / Dot1Q(vlan=7) / IP(src="203.0.113.7", dst="192.0.2.10") / UDP(sport=5353, dport=53, len=13)
    / Raw(b"query"),
    Ether(**MACS) / IPv6(src="2001:db8::1", dst="2001:db8::10") / UDP(sport=5353, dport=53, len=13) / Raw(b"query"),
], ids=["ipv4", "vlan", "ipv6"])
def test_a_udp_datagram_ends_where_its_length_says_not_where_its_ip_packet_does(tmp_path, frame):
    """Bytes after the datagram but inside its IP packet are no payload: a receiver trims them, tshark too."""
    frame = frame / Raw(b"trailing bytes")  # inside the IP packet (its length counts them), after the datagram
    path = _pcap(tmp_path, [frame])
    (frames,) = CaptureReader(str(path)).batches()
    for general in (False, True):
        p = decode(frames, general=general)
        assert p["status"].tolist() == [OK] and p["dport"].tolist() == [53]
        assert (p["plen"][0], p["pcap"][0], p.payload(0)) == (5, 5, b"query")


def test_a_udp_length_that_cannot_be_right_leaves_the_ip_length_in_charge(tmp_path):
    frames = [Ether(**MACS) / IP(src="203.0.113.7", dst="192.0.2.10") / UDP(sport=1, dport=53, len=length)
              / Raw(b"query") for length in (100, 7, 0)]  # past the packet, shorter than its header, jumbo-style
    cols, _ = _rows(_pcap(tmp_path, frames))
    assert cols["status"].tolist() == [OK] * 3 and cols["plen"].tolist() == [5] * 3


@pytest.mark.parametrize("digits", [6, 9])
def test_pcapng_timestamps_are_the_ones_a_pcap_of_the_same_packets_gives(tmp_path, digits):
    """Each time is the float nearest the exact one, as a pcap's seconds-and-fraction gives it: a tick count
    since 1970 is past what a float holds exactly, and scaling it rounded many times the other way."""
    from fractions import Fraction

    units = 10 ** digits
    ticks = [NOW * units + k * (123_457 if digits == 6 else 123_456_789) for k in range(1, 40)]
    magic = 0xA1B2C3D4 if digits == 6 else 0xA1B23C4D
    pcap = struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 65535, 1) + b"".join(
        struct.pack("<IIII", t // units, t % units, len(FRAME), len(FRAME)) + FRAME for t in ticks)
    padded = FRAME + bytes(-len(FRAME) % 4)
    ng = pcapng.section() + pcapng.interface(1, resolution=None if digits == 6 else 9) + b"".join(
        _block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(FRAME), len(FRAME)) + padded) for t in ticks)
    ng += _block(2, struct.pack("<HHIIII", 0, 0, ticks[0] >> 32, ticks[0] & 0xFFFFFFFF, len(FRAME), len(FRAME))
                 + padded)  # the obsolete packet block too
    exact = [float(Fraction(t, units)) for t in ticks]
    from_pcap, _ = _rows(_write(tmp_path, pcap, "x.pcap"))
    from_pcapng, _ = _rows(_write(tmp_path, ng, "x.pcapng"))
    assert from_pcap["ts"].tolist() == exact
    assert from_pcapng["ts"].tolist() == exact + exact[:1]


def test_pcapng_binary_resolutions_and_offsets(tmp_path):
    frame_at = lambda ticks: _block(6, struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(FRAME),  # noqa: E731
                                                   len(FRAME)) + FRAME + bytes(-len(FRAME) % 4))
    offset = struct.pack("<HHq", 14, 8, 1000) + struct.pack("<HH", 9, 1) + b"\x94\x00\x00\x00" + bytes(4)
    idb = _block(1, struct.pack("<HHI", 1, 0, 65535) + offset)  # 2**-20 s ticks, 1000 s later
    cols, _ = _rows(_write(tmp_path, pcapng.section() + idb + frame_at(NOW << 20 | 1 << 19), "x.pcapng"))
    assert cols["ts"].tolist() == [NOW + 1000.5]


# ------------------------------------------------------------ the record walk, by lanes --

def _records(rng: np.random.Generator, count: int, order: str, decoys: bool) -> tuple[bytes, list[int]]:
    """``count`` pcap records (no file header) of random sizes, seconds crossing a 65,536-second boundary
    (where lanes find no start with the first record's seconds); with ``decoys``, payloads made of record
    headers (four and more in a row that could be right) where no record starts."""
    head = struct.Struct(order + "IIII")
    out, starts, at = bytearray(), [], 0
    second = 0x6553_FFF0
    for k in range(count):
        size = int(rng.choice([0, 1, 60, 64, 1514, int(rng.integers(0, 3000))]))
        payload = (head.pack(second, 5, 16, 16) * (size // 16 + 1))[:size] if decoys else rng.bytes(size)
        starts.append(at)
        out += head.pack(second + k // 64, int(rng.integers(0, 1_000_000)), size, size + int(rng.integers(0, 2)) * 7)
        out += payload
        at = len(out)
    return bytes(out), starts


def _damaged(rng: np.random.Generator, data: bytes, starts: list[int], order: str, length_at: int, damage: str,
             at_a_record: bool) -> tuple[bytes, int]:
    """The records with ``damage`` done to them ("length": one record's length, which sends the walk off;
    "bytes": 20 random bytes; "cut": the end), and where to walk from (a record, or not)."""
    data = bytearray(data)
    if damage == "length":
        where = starts[int(rng.integers(len(starts)))] + length_at
        data[where:where + 4] = struct.pack(order + "I", int(rng.integers(0, 2**32)))
    elif damage == "bytes":
        for where in rng.integers(0, len(data), 20).tolist():
            data[where] = int(rng.integers(0, 256))
    elif damage == "cut":
        data = data[:int(rng.integers(len(data) // 2, len(data)))]
    return bytes(data), starts[int(rng.integers(len(starts) // 4))] if at_a_record else int(rng.integers(0, 100))


WALKS = (st.integers(0, 2**32 - 1), st.sampled_from(["<", ">"]), st.booleans(), st.sampled_from([True, True, False]),
         st.one_of(st.integers(1, 1300), st.integers(1300, 6000)), st.sampled_from(["none", "length", "bytes", "cut"]))


@settings(max_examples=80, deadline=None)
@given(*WALKS)
def test_the_walk_by_lanes_visits_what_a_walk_record_by_record_does(seed, order, decoys, at_a_record, most,
                                                                     damage):
    """Lanes start at records found by their looks; a start that is none (decoys, damage) is found out, and
    the walk is still the one record by record."""
    rng = np.random.default_rng(seed)
    buf, pos = _damaged(rng, *_records(rng, int(rng.integers(1200, 4000)), order, decoys), order, 8, damage,
                        at_a_record)
    expected = capture._visit(buf, pos, most, order)
    expected = expected[:-1] if expected[-1] > len(buf) else expected
    head = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)  # microseconds, Ethernet
    walker = capture._PcapWalker(CaptureReader.__new__(CaptureReader), head)
    assert walker._walk(buf, pos, most).tolist() == expected.tolist()


def _blocks(rng: np.random.Generator, count: int, order: str, decoys: bool) -> tuple[bytes, list[int]]:
    """``count`` pcapng blocks (no section header): mostly EPBs of random sizes, now and then a statistics
    or custom block; with ``decoys``, packets made of EPBs whose lengths agree, where no block starts."""
    out, starts = bytearray(), []

    def block(kind: int, body: bytes) -> bytes:
        size = 12 + len(body)
        return struct.pack(order + "II", kind, size) + body + struct.pack(order + "I", size)

    decoy = block(6, bytes(20) + bytes(4)) if decoys else b""
    for _ in range(count):
        starts.append(len(out))
        if rng.random() < 0.002:
            out += block(int(rng.choice([5, 0xBAD])), bytes(int(rng.integers(0, 5)) * 4))
            continue
        size = int(rng.choice([0, 1, 60, 64, 1514, int(rng.integers(0, 3000))]))
        data = (decoy * (size // max(len(decoy), 1) + 1))[:size] if decoys else rng.bytes(size)
        out += block(6, struct.pack(order + "IIIII", 0, 1, int(rng.integers(0, 2**32)), size, size)
                     + data + bytes(-size % 4))
    return bytes(out), starts


@settings(max_examples=60, deadline=None)
@given(*WALKS)
def test_the_pcapng_walk_by_lanes_stops_where_a_walk_block_by_block_does(seed, order, decoys, at_a_block, most,
                                                                         damage):
    rng = np.random.default_rng(seed)
    buf, pos = _damaged(rng, *_blocks(rng, int(rng.integers(1200, 4000)), order, decoys), order, 4, damage,
                        at_a_block)
    walker = capture._PcapngWalker(CaptureReader.__new__(CaptureReader))
    walker.order = order
    assert walker._walk(buf, pos, most) == walker._each(buf, pos, most)
