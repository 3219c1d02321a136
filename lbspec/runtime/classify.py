"""Roles and keys: what each packet is to the load balancer, and what identifies it across it.

Roles, from the spec's addresses and the side a capture was taken on:

* ``INGRESS``: a client's packet to a VIP (client side);
* ``EGRESS``: what the LB sends toward a backend (backend side): to a backend
  address (nat, snat, proxy), encapsulated to one (tunnel), or to the VIP with
  a backend's MAC address (dsr);
* ``BREPLY``: a backend's packet back to the LB (backend side);
* ``CREPLY``: what reaches a client from a VIP or a backend address (client
  side): a reply, translated back to the VIP or not;
* ``TRANSIT``: a client's packet to an address that is no VIP (an ICMP error
  about a reply, say): the LB routes it, and its copy on the backend side is
  not something the LB made up.

In one combined capture the side is inferred: from the capture's direction
(Linux cooked headers, pcapng flags) when it has one, otherwise from the
addresses, and -- where one packet crosses the capture twice unchanged (dsr,
an untranslated reply) -- from which copy came first.

Keys are 64-bit hashes of the fields a mode leaves unchanged: equal keys on
both sides of the LB mean the same packet (:mod:`lbspec.runtime.pairing`).
An IP fragment after the first carries no transport header: it is keyed on
its datagram's identification, its offset and its bytes (:func:`fragment_key`),
and a datagram cut at other boundaries on each side on its bytes as a whole
(:func:`datagram_key`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Mapping

import numpy as np

from lbspec.runtime.compiled import Compiled, akey
from lbspec.runtime.decode import ARP, ICMP6, OK, TCP, UDP, V4_MAPPED, Packets, fill_digests
from lbspec.runtime.proxy_protocol import unframe_datagrams

__all__ = ["NONE", "INGRESS", "EGRESS", "BREPLY", "CREPLY", "TRANSIT", "ROLE_NAMES", "classify", "classify_rows",
           "assign_backends", "mix", "pair_key", "reply_key", "segment_length", "segment_end", "reaches", "carries",
           "resent", "fragment_key", "datagram_id", "datagram_key", "later_fragment", "weak_keys", "flow_key",
           "runs_of", "reopened", "returned", "MacTable", "CLIENT", "BACKEND", "COMBINED"]

NONE, INGRESS, EGRESS, BREPLY, CREPLY, TRANSIT = 0, 1, 2, 3, 4, 5
ROLE_NAMES = {NONE: "other", INGRESS: "ingress", EGRESS: "egress", BREPLY: "backend-reply",
              CREPLY: "client-reply", TRANSIT: "transit"}
CLIENT, BACKEND, COMBINED = 0, 1, -1
_SEED = np.uint64(0x243F6A8885A308D3)
_MUL = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_SYN, _ACK = 2, 16
_FRAGMENT_SALT = np.uint64(0x6A09E667F3BCC909)  # keeps fragments' keys apart from whole packets'
_DATAGRAM_SALT = np.uint64(0xBB67AE8584CAA73B)
_BY_MAC = -4  # a dsr packet's backend, to be looked up by MAC
# ICMPv6 messages that never leave their link -- multicast listener discovery (130-132, 143), neighbour and
# router discovery (133-137), inverse and secure neighbour discovery (141, 142, 148, 149), multicast router
# discovery (151-153): a load balancer answers them or sends its own, as with ARP in IPv4, and forwards none.
_LINK_ONLY = np.zeros(256, bool)
_LINK_ONLY[[130, 131, 132, 133, 134, 135, 136, 137, 141, 142, 143, 148, 149, 151, 152, 153]] = True


def mix(columns: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of the columns, row by row."""
    h = np.full(len(columns[0]), _SEED, np.uint64)
    for column in columns:
        h ^= column if column.dtype == np.uint64 else column.astype(np.uint64)
        h *= _MUL
        h ^= h >> _S33
    return h


class MacTable:
    """Whose each MAC address is, learned from ARP and from hosts' own packets (for dsr).

    A MAC maps to a backend (its gid), to -2 (a host that is no backend), or is
    unknown (-1): then the backend of a dsr packet sent to it cannot be told.
    """

    UNKNOWN, STRANGER, UNKNOWN_DSR = -1, -2, -3

    def __init__(self):
        self.table: dict[int, int] = {}

    def learn(self, p: Packets, compiled: Compiled) -> None:
        if not compiled.dsr:
            return
        rows = np.nonzero(((p["status"] == ARP) | (p["status"] == OK)) & (p["mac_s"] != 0) & (p["tun"] == 0)
                          & _own(p["sa_hi"], p["sa_lo"]))[0]
        if not len(rows):
            return
        source = akey(p["sa_hi"][rows], p["sa_lo"][rows])
        gid = compiled.backend_of(source)
        gid[gid < 0] = self.STRANGER
        gid[(gid < 0) & (compiled.vip_of(source) >= 0)] = self.UNKNOWN  # a dsr backend's answer: whose is not said
        macs, first = np.unique(p["mac_s"][rows], return_index=True)
        for mac, backend in zip(macs.tolist(), gid[first].tolist()):
            if backend != self.UNKNOWN and self.table.get(mac, self.STRANGER) == self.STRANGER:
                self.table[mac] = backend

    def lookup(self, macs: np.ndarray) -> np.ndarray:
        out = np.full(len(macs), self.UNKNOWN, np.int32)
        if not self.table or not len(macs):
            return out
        unique, inverse = np.unique(macs, return_inverse=True)
        values = np.array([self.table.get(m, self.UNKNOWN) for m in unique.tolist()], np.int32)
        return values[inverse]


def _own(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Which source addresses say who a host is: not the unspecified address (IPv4 or IPv6; an ARP probe,
    an IGMP report), nor an IPv6 link-local one -- every IPv6 host speaks from its link-local address on
    its link (router solicitations, listener reports), whatever else it holds."""
    link_local = (hi >> np.uint64(54)) == np.uint64(0x3FA)  # fe80::/10
    return ~link_local & ~((hi == 0) & ((lo == 0) | (lo == np.uint64(V4_MAPPED))))


def classify(p: Packets, compiled: Compiled, macs: MacTable) -> None:
    """Add ``role``, ``svc``, ``gid``, ``unknown``, ``ckey`` and one pairing key per mode (``k_<mode>``)."""
    classify_rows(p, compiled)
    assign_backends(p, compiled, macs)


def classify_rows(p: Packets, compiled: Compiled) -> None:
    """All of :func:`classify` that each row's own headers decide; what the MAC table decides (the backend
    of a dsr packet) is left to :func:`assign_backends`.  Reading processes do this part."""
    n = len(p)
    ok = (p["status"] == OK) & ~_link_only(p)
    skey, dkey = akey(p["sa_hi"], p["sa_lo"]), akey(p["da_hi"], p["da_lo"])
    vip_d, be_d = compiled.address_of(dkey)
    vip_s, be_s = compiled.address_of(skey)
    vip_d = compiled.service_at(p["da_hi"], p["da_lo"], p["proto"], p["dport"], vip_d)  # services may share a VIP
    tunnel = p["tun"] != 0
    side, dirn = p["side"], p["dirn"]
    role = np.zeros(n, np.int8)
    to_vip = ok & (vip_d >= 0) & ~tunnel
    dsr_vips = [s.index for s in compiled.services if s.mode == "dsr"]  # (isin of nothing imports numpy.ma)
    dsr = to_vip & np.isin(vip_d, dsr_vips) if dsr_vips else np.zeros(n, bool)
    near, far, rest = side == 0, side == 1, ok & ~to_vip
    role[to_vip & near] = INGRESS
    role[to_vip & far] = EGRESS
    toward_client = (vip_s >= 0) | (be_s >= 0)
    role[rest & near & toward_client] = CREPLY
    role[rest & near & ~toward_client] = TRANSIT
    from_backend = (be_s >= 0) & ~tunnel
    role[rest & far & from_backend] = BREPLY
    role[rest & far & ~from_backend] = EGRESS
    combined = ok & (side == -1)
    if combined.any():
        _combined(p, role, combined, to_vip, dsr, vip_s, be_s, be_d, tunnel, dirn)
    fill_digests(p, np.nonzero((role == INGRESS) | (role == EGRESS) | (role == TRANSIT))[0])
    svc = np.where(role == INGRESS, vip_d, -1).astype(np.int16)
    gid = np.full(n, -1, np.int32)
    egress = role == EGRESS
    gid[egress] = _egress_backend(p, compiled, egress, dkey, be_d, vip_d)
    replies = role == BREPLY
    gid[replies] = compiled.by_port(skey[replies], p["sport"][replies], be_s[replies])
    if "proxy" in compiled.modes:
        unframe_datagrams(p, np.nonzero(egress & (p["proto"] == UDP) & compiled.proxied[gid])[0])
    p["role"], p["svc"], p["gid"] = role, svc, gid
    p["ckey"] = client_key(p, role)
    paired = np.nonzero((role == INGRESS) | (role == EGRESS))[0]  # only these are keyed (0 elsewhere)
    for mode in compiled.modes:
        p["k_" + mode] = _scattered(n, paired, pair_key(p, "snat" if mode == "proxy" else mode, paired))
    if {"nat", "snat", "proxy"} & set(compiled.modes):  # replies carrying something (lbspec.runtime.replies)
        carrying = (p["plen"] > 0) | ((p["flags"] & (_SYN | _ACK)) == (_SYN | _ACK))
        tcp = bool({"nat", "snat"} & set(compiled.modes))  # (a proxy's TCP is byte streams)
        replies = np.nonzero(((role == BREPLY) | (role == CREPLY)) & carrying & (p["frag"] == 0)
                             & ((tcp & (p["proto"] == TCP)) | (p["proto"] == UDP)))[0]
        fill_digests(p, replies[p["proto"][replies] == UDP])
        p["k_reply"] = _scattered(n, replies, reply_key(p, replies))


def _link_only(p: Packets) -> np.ndarray:
    """Which rows are ICMPv6 messages of their link alone (see :data:`_LINK_ONLY`): no role of their own."""
    out = np.zeros(len(p), bool)
    six = np.nonzero(p["proto"] == ICMP6)[0]
    if len(six):
        out[six] = _LINK_ONLY[(p["icmp"][six] >> 8) & 0xFF]
    return out


def assign_backends(p: Packets, compiled: Compiled, macs: MacTable) -> None:
    """The backends of dsr packets, by destination MAC (after ``macs`` learned from these rows); then
    ``unknown`` marks those whose MAC nobody announced."""
    gid = p["gid"]
    wanted = np.nonzero(gid == _BY_MAC)[0]
    if len(wanted):
        found = macs.lookup(p["mac_d"][wanted])  # no MAC (Linux cooked captures): not known
        gid[wanted] = np.where(found == MacTable.UNKNOWN, MacTable.UNKNOWN_DSR, found)
    p["unknown"] = gid == MacTable.UNKNOWN_DSR
    gid[gid < 0] = -1


def _scattered(n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(n, np.uint64)
    out[rows] = values
    return out


def _combined(p, role, combined, to_vip, dsr, vip_s, be_s, be_d, tunnel, dirn) -> None:
    """Roles in a capture of both sides at once.  From a VIP to a backend is the LB forwarding with the
    VIP as its source (snat), not a reply to a client."""
    known = dirn != 0
    inbound, outbound = known & (dirn == 1), known & (dirn == 2)
    role[combined & to_vip & ~dsr] = INGRESS
    role[combined & to_vip & dsr & ~outbound] = INGRESS
    role[combined & to_vip & dsr & outbound] = EGRESS
    rest = combined & ~to_vip
    from_vip = rest & (vip_s >= 0) & ~tunnel
    role[from_vip & (be_d < 0)] = CREPLY
    role[from_vip & (be_d >= 0)] = EGRESS
    role[rest & (be_s >= 0) & ~tunnel & ~outbound] = BREPLY
    role[rest & (be_s >= 0) & ~tunnel & outbound] = CREPLY
    role[rest & tunnel] = EGRESS
    role[rest & (vip_s < 0) & (be_s < 0) & ~tunnel & ~inbound] = EGRESS
    role[rest & (vip_s < 0) & (be_s < 0) & ~tunnel & inbound] = TRANSIT
    if not known.all():
        dsr_copies = combined & ~known & to_vip & dsr
        reply_copies = combined & ~known & (be_s >= 0) & ~tunnel & ~to_vip
        # replies are told apart by their payloads only where headers cannot (TCP has sequence numbers)
        fill_digests(p, np.nonzero(dsr_copies | (reply_copies & (p["proto"] != TCP)))[0])
        transit_copies = combined & ~known & ~to_vip & (vip_s < 0) & (be_s < 0) & ~tunnel
        fill_digests(p, np.nonzero(transit_copies)[0])
        _copies(p, role, dsr_copies, INGRESS, EGRESS)
        _copies(p, role, reply_copies, BREPLY, CREPLY)
        _first_copies(p, role, transit_copies, TRANSIT)


def _copies(p: Packets, role: np.ndarray, rows_mask: np.ndarray, before: int, after: int) -> None:
    """The same packet seen twice: the first copy is ``before`` the LB; a later copy with
    another destination MAC or a lower TTL is ``after`` it."""
    rows = np.nonzero(rows_mask)[0]
    if len(rows) < 2:
        return
    key = mix([p["sa_lo"][rows], p["da_lo"][rows], p["sport"][rows], p["dport"][rows], p["proto"][rows],
               p["seq"][rows], p["ack"][rows], p["ipid"][rows], p["frag"][rows], p["plen"][rows],
               p["digest"][rows]])
    rows, _head, changed = _sightings(p, rows, key)
    role[rows[changed]] = after


def _first_copies(p: Packets, role: np.ndarray, rows_mask: np.ndarray, first: int) -> None:
    """Packets routed through the LB show twice in a combined capture: the first copy is the client's --
    where a later copy shows the routing (another destination MAC or a lower TTL).  Copies alike in
    every byte are one packet the LB sent twice, left as they are to be judged as such."""
    rows = np.nonzero(rows_mask)[0]
    if len(rows) < 2:
        return
    rows, head, changed = _sightings(p, rows, pair_key(p, "dsr", rows))
    group = np.cumsum(head) - 1
    role[rows[head & (np.bincount(group, changed, len(rows)) > 0)[group]]] = first


def _sightings(p: Packets, rows: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` grouped by ``key`` in time order; which is the first of its group; and which later ones
    differ from that first as a packet passing the LB does (another destination MAC, a lower TTL)."""
    order = np.lexsort((p["ts"][rows], key))
    key, rows = key[order], rows[order]
    head = np.r_[True, key[1:] != key[:-1]]
    lead = rows[np.maximum.accumulate(np.where(head, np.arange(len(rows)), 0))]
    changed = ~head & ((p["mac_d"][rows] != p["mac_d"][lead]) | (p["ttl"][rows] < p["ttl"][lead]))
    return rows, head, changed


def _egress_backend(p, compiled, egress, dkey, be_d, vip_d) -> np.ndarray:
    """The backend an egress packet goes to: by outer address, by address, or (dsr) marked to be found
    by its MAC."""
    rows = np.nonzero(egress)[0]
    out = compiled.by_port(dkey[rows], p["dport"][rows], be_d[rows])
    tunnel = p["tun"][rows] != 0
    if tunnel.any():
        outer = rows[tunnel]
        out[tunnel] = compiled.backend_of(akey(p["od_hi"][outer], p["od_lo"][outer]))
    mac = p["mac_d"][rows]
    host = (mac != 0) & ((mac >> np.uint64(40)) & np.uint64(1) == 0)  # a group's MAC (multicast) is no host's
    dsr = ~tunnel & (out < 0) & (host | (vip_d[rows] >= 0))
    if dsr.any() and compiled.dsr:
        out[dsr] = _BY_MAC
    return out


def client_key(p: Packets, role: np.ndarray) -> np.ndarray:
    """The client's end of the flow (protocol, address, port): shared by a flow's packets on both sides."""
    toward_client = (role == BREPLY) | (role == CREPLY)
    hi = np.where(toward_client, p["da_hi"], p["sa_hi"])
    lo = np.where(toward_client, p["da_lo"], p["sa_lo"])
    port = np.where(toward_client, p["dport"], p["sport"])
    return mix([_proto_class(p["proto"]), hi, lo, port])


def _proto_class(proto: np.ndarray) -> np.ndarray:
    return np.where(proto == 58, 1, proto)


def flow_key(p, rows=None, reverse=None) -> np.ndarray:
    """The 5-tuple, as the packet has it -- or, for rows where ``reverse`` (a mask, or True for all) says, as
    packets the other way have it: a reply's key is its flow's."""
    c = {k: (p[k] if rows is None else p[k][rows]) for k in ("proto", "sa_hi", "sa_lo", "da_hi", "da_lo",
                                                             "sport", "dport")}
    if reverse is not None:
        for near, far in (("sa_hi", "da_hi"), ("sa_lo", "da_lo"), ("sport", "dport")):
            c[near], c[far] = np.where(reverse, c[far], c[near]), np.where(reverse, c[near], c[far])
    return mix([c["proto"], c["sa_hi"], c["sa_lo"], c["da_hi"], c["da_lo"], c["sport"], c["dport"]])


def _payload(p, rows=None):
    get = (lambda k: p[k]) if rows is None else (lambda k: p[k][rows])
    cut = get("pcap") < get("plen")
    return [get("plen"), np.where(cut, 0, get("digest"))]


def pair_key(p, mode: str, rows=None) -> np.ndarray:
    """The exact pairing key: every field ``mode`` leaves unchanged, and the payload."""
    get = (lambda k: p[k]) if rows is None else (lambda k: p[k][rows])
    common = [_proto_class(get("proto")), get("flags"), get("seq"), get("ack"), get("icmp"), *_payload(p, rows)]
    if mode == "snat":
        return mix(common + [get("echo") & 0xFFFF])
    ends = [get("sa_hi"), get("sa_lo"), get("sport"), get("echo")]
    if mode in ("dsr", "tunnel"):
        ends += [get("da_hi"), get("da_lo"), get("dport"), get("ipid")]
    return mix(common + ends)


def reply_key(p: Packets, rows: np.ndarray) -> np.ndarray:
    """What every mode keeps of a reply on its way back (snat changes both ends): the protocol, sequence and
    acknowledgement numbers, flags, length and payload digest (0 where none was taken, or where a capture
    cut the payload short)."""
    get = lambda k: p[k][rows]  # noqa: E731
    digest = np.where(get("pcap") < get("plen"), 0, get("digest"))
    return mix([get("proto"), get("seq"), get("ack"), get("flags"), get("plen"), digest])


def segment_length(p: Packets, rows):
    """How many sequence numbers TCP segments take (``rows``: an array, or one): their bytes, and one for a SYN
    or FIN."""
    flags = p["flags"][rows]
    return p["plen"][rows] + (flags & _SYN != 0) + (flags & 1 != 0)


def segment_end(p: Packets, row: int) -> int:
    """The sequence number just past a TCP segment: what the other end acknowledges once it has it."""
    return (int(p["seq"][row]) + int(segment_length(p, row))) & 0xFFFFFFFF


def reaches(numbers, end: int):
    """Which of ``numbers`` (acknowledgement or sequence numbers: an array, or one) are at ``end`` or past it,
    in sequence-number arithmetic."""
    if isinstance(numbers, np.ndarray):
        return ((numbers.astype(np.int64) - end) & 0xFFFFFFFF) < 1 << 31
    return (numbers - end) & 0xFFFFFFFF < 1 << 31


def carries(p: Packets, rows: np.ndarray, number: int) -> np.ndarray:
    """Which of TCP segments ``rows`` carry sequence number ``number`` (a byte, or their SYN or FIN)."""
    return ((number - p["seq"][rows].astype(np.int64)) & 0xFFFFFFFF) < segment_length(p, rows)


def resent(p: Packets, row: int, rows: np.ndarray) -> float:
    """When a retransmission of TCP segment ``row`` -- one of ``rows``, later segments of its flow, that carries
    its first sequence number -- first got across the LB: the time of the earliest one's partner on the other
    side (``mate``), or inf.  An acknowledgement of the segment from then on may be the retransmission's."""
    role, ts = p["role"], p["ts"]
    later = rows[(role[rows] == role[row]) & (ts[rows] > ts[row]) & (p["mate"][rows] >= 0)]
    carried = later[carries(p, later, int(p["seq"][row]))]
    serials = p["sn"]
    at = np.minimum(np.searchsorted(serials, p["mate"][carried]), len(serials) - 1)
    at = at[serials[at] == p["mate"][carried]]
    return float(ts[at].min()) if len(at) else math.inf


def later_fragment(frag: np.ndarray) -> np.ndarray:
    """Which rows are IP fragments after the first (``frag``: the decoder's column)."""
    return frag > 1


def datagram_id(p, rows, compiled: Compiled) -> np.ndarray:
    """Which datagram a fragment belongs to, on the side it was seen: its source address, protocol and IP ID,
    and the side.  Not its destination, as reassembly has it (RFC 791, RFC 8200): an LB may send pieces of
    one datagram to different backends, and that is what is judged; only whether it is a VIP, which tells a
    client's datagram from the LB's copy in a capture of both sides."""
    get = lambda k: p[k][rows]  # noqa: E731
    to_vip = compiled.vip_of(akey(get("da_hi"), get("da_lo"))) >= 0
    return mix([get("side"), get("sa_hi"), get("sa_lo"), get("proto"), get("ipid"), to_vip])


def _ends(get, mode: str) -> list[np.ndarray]:
    """The addresses (and ports) ``mode`` keeps: nat the source, snat none, dsr and tunnels both."""
    if mode in ("snat", "proxy"):
        return []
    ends = [get("sa_hi"), get("sa_lo")]
    return ends + [get("da_hi"), get("da_lo")] if mode in ("dsr", "tunnel") else ends


def fragment_key(p, mode: str, rows) -> np.ndarray:
    """The exact pairing key of fragments after the first: the datagram's IP ID, the offset and the bytes,
    and the addresses ``mode`` keeps.  Ports are left out: the fragment does not carry them."""
    get = lambda k: p[k][rows]  # noqa: E731
    salt = np.full(len(rows), _FRAGMENT_SALT)
    return mix([salt, _proto_class(get("proto")), get("ipid"), get("frag"), *_payload(p, rows), *_ends(get, mode)])


def datagram_key(p, mode: str, rows, length: np.ndarray, digest: np.ndarray) -> np.ndarray:
    """The key of whole datagrams (``rows``: the first piece of each; ``length`` and ``digest`` of all their
    transport payload, 0 where a piece was cut short): what ``mode`` keeps of the headers, and the bytes.
    Neither the IP ID nor the cut into fragments: an LB that reassembles may send the datagram whole, or cut
    at its own MTU."""
    get = lambda k: p[k][rows]  # noqa: E731
    ports = [] if mode in ("snat", "proxy") else [get("sport")] + ([get("dport")] if mode in ("dsr", "tunnel") else [])
    salt = np.full(len(rows), _DATAGRAM_SALT)
    return mix([salt, _proto_class(get("proto")), length, digest, *_ends(get, mode), *ports])


def weak_keys(p, mode: str, rows) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Keys for packets the LB changed: (what is assumed intact, key, rows it is usable for)."""
    mode = "snat" if mode == "proxy" else mode
    keys = _weak_keys(p, mode, rows)
    frag = p["frag"][rows]
    if not frag.any():
        return keys
    cut_up = frag != 0  # fragments: their headers are the datagram's IP ID and where they lie in it
    get = lambda k: p[k][rows[cut_up]]  # noqa: E731
    salt = np.full(int(cut_up.sum()), _FRAGMENT_SALT)
    (_what, key, usable) = keys[0]
    key[cut_up] = mix([salt, _proto_class(get("proto")), get("ipid"), get("frag"), *_ends(get, mode)])
    usable[cut_up] = True
    later = later_fragment(frag)  # after the first: no transport header; their bytes, where they lie
    get = lambda k: p[k][rows[later]]  # noqa: E731
    (_what, key, usable), (_same, _key, tcp) = keys[1], keys[2]
    key[later] = mix([salt[:int(later.sum())], _proto_class(get("proto")), get("frag"), get("plen"), get("digest")])
    usable[later] = (get("plen") > 0) & (get("pcap") >= get("plen"))
    tcp[later] = False
    return keys


def _weak_keys(p, mode: str, rows) -> list[tuple[str, np.ndarray, np.ndarray]]:
    get = lambda k: p[k][rows]  # noqa: E731
    proto = _proto_class(get("proto"))
    tcp = get("proto") == TCP
    header = [proto, get("flags"), get("seq"), get("ack")]
    if mode in ("dsr", "tunnel"):
        header += [get("sa_hi"), get("sa_lo"), get("sport"), get("da_hi"), get("da_lo"), get("dport")]
    elif mode == "nat":
        header += [get("sa_hi"), get("sa_lo"), get("sport"), get("echo")]
    headers_usable = tcp | (mode != "snat")
    cut = get("pcap") < get("plen")
    payload_usable = (get("plen") > 0) & ~cut
    payload = [proto, get("seq"), get("plen"), get("digest")]
    ports = [] if mode == "snat" else [get("sport")]
    transport = [proto, get("seq"), get("ack"), get("flags"), *ports]
    return [("headers", mix(header), headers_usable), ("payload", mix(payload), payload_usable),
            ("transport", mix(transport), tcp)]


def runs_of(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by key: an order that sorts ``keys`` (not stable: ties in any order), where each key's
    run starts in it, and each key's first and last row (in row order)."""
    order = np.argsort(keys)
    if not len(keys):
        return order, order, order, order
    ordered = keys[order]
    starts = np.nonzero(np.r_[True, ordered[1:] != ordered[:-1]])[0]
    return order, starts, np.minimum.reduceat(order, starts), np.maximum.reduceat(order, starts)


def syn_only(flags: np.ndarray) -> np.ndarray:
    return ((flags & _SYN) != 0) & ((flags & _ACK) == 0)


def reopened(keys: np.ndarray, seqs: np.ndarray, times: np.ndarray, preceded: np.ndarray, known: Container[int],
             stored: Callable[[int], tuple[int, float]]) -> np.ndarray:
    """Of pure SYNs (each flow's in time order), the positions of those that open a TCP connection on a
    5-tuple that carried another before: a client that reuses its source port, or a NAT in front of
    clients that does.  A SYN sent again repeats its sequence number; a new connection's has another.

    ``preceded``: an earlier packet of the flow is among those looked at with the SYN; ``known``: the
    flows seen before them, and ``stored(key)`` for each -- the sequence number of the SYN that opened its
    connection (-1: none was seen, the capture began after it) and the time of its last packet (a SYN from
    before that, paired late, opens nothing)."""
    maybe = preceded | np.fromiter(map(known.__contains__, keys.tolist()), bool, len(keys))
    if not maybe.any():  # the common case: each SYN the first packet of a flow not seen before
        return np.zeros(0, np.int64)
    rows = np.nonzero(np.isin(keys, keys[maybe]))[0]  # and the other SYNs of those flows
    last: dict[int, int] = {}
    found = []
    for row, key, seq, time, before in zip(rows.tolist(), keys[rows].tolist(), seqs[rows].tolist(),
                                           times[rows].tolist(), preceded[rows].tolist()):
        isn = last.get(key)
        if isn is None:
            if key in known:
                isn, since = stored(key)
                if time < since:
                    last[key] = seq  # late: of the connection the flow is in
                    continue
            elif before:
                isn = -1
        if isn is not None and isn != seq:
            found.append(row)
        last[key] = seq
    return np.array(found, np.int64)


def returned(keys: np.ndarray, ts: np.ndarray, begins: np.ndarray, known: Mapping[int, list],
             timeout: float | np.ndarray) -> np.ndarray:
    """Of UDP (or ICMP) packets ordered by flow (each flow's in time order, ``begins`` marking its first), the
    positions of those more than ``timeout`` seconds (one for all, or one each) after the flow's packet before
    -- for a flow's first, after it was last seen before them (``known[key][1]``; a flow not known is new
    anyway): the LB has ended the flow's session and balances it anew.  (A TCP flow is a connection: see
    :func:`reopened`.)"""
    gaps = np.r_[-np.inf, ts[1:] - ts[:-1]]
    first = np.nonzero(begins)[0]
    gaps[first] = ts[first] - np.array([known[k][1] if k in known else np.inf for k in keys[first].tolist()])
    return np.nonzero(gaps > timeout)[0]


def ported(proto: np.ndarray) -> np.ndarray:
    return (proto == TCP) | (proto == UDP)
