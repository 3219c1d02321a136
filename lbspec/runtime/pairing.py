"""Pairing packets across the load balancer.

Each packet that left the LB (egress) is paired with the packet that caused it
(ingress): the two have the same key.  Within a key, an egress packet pairs
with the *latest* ingress packet not yet paired that came before it -- so a
dropped packet whose retransmission got through leaves the dropped copy, not
the retransmission, unpaired.  "Before" allows ``tolerance`` seconds of clock
disagreement, and a pair may be at most ``window`` seconds apart.

The common cases are paired with numpy alone.  Most keys are seen once on each
side: packets are spread over a hash table twice their number, and a bucket
holding just one ingress and one egress packet of the same key is a pair (or
too far apart to be one) -- no sort.  Packets in fuller buckets are sorted by
key: a key seen once on each side again, or a key whose packets alternate
ingress, egress, ingress, egress... (a repeated ACK, a retransmission that got
through), where the rule pairs each egress packet with the ingress packet just
before it.  Other keys go through the rule above in Python.  Pairs come out in
no particular order.
"""

from __future__ import annotations

import numpy as np

__all__ = ["match"]


SPREAD = 2  # hash buckets per packet
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def match(in_keys: np.ndarray, in_ts: np.ndarray, out_keys: np.ndarray, out_ts: np.ndarray,
          tolerance: float, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the ingress and egress arrays) of the pairs found, in no particular order."""
    n_in, n_out = len(in_keys), len(out_keys)
    if not n_in or not n_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate([in_keys, out_keys])
    ts = np.concatenate([in_ts, out_ts])
    bits = max((len(keys) * SPREAD - 1).bit_length(), 4)
    bucket = ((keys * _GOLDEN) >> np.uint64(64 - bits)).astype(np.intp)  # any keys, spread evenly
    count = np.bincount(bucket, minlength=1 << bits)[bucket]
    two = np.flatnonzero(count == 2)
    ingress, egress = np.split(two, [int(np.searchsorted(two, n_in))])
    owner = np.full(1 << bits, -1, np.intp)
    owner[bucket[ingress]] = ingress
    partner = owner[bucket[egress]]  # the bucket's other packet, if it came in
    egress, partner = egress[partner >= 0], partner[partner >= 0]
    gap = ts[egress] - ts[partner]
    alone = (keys[partner] == keys[egress]) & (gap >= -tolerance) & (gap <= window)
    rest = np.flatnonzero(count > 2)
    rest_in, rest_out = np.split(rest, [int(np.searchsorted(rest, n_in))])
    rest_out -= n_in
    found_in, found_out = _by_sorting(in_keys[rest_in], in_ts[rest_in], out_keys[rest_out], out_ts[rest_out],
                                      tolerance, window)
    return (np.concatenate([partner[alone], rest_in[found_in]]).astype(np.int64),
            np.concatenate([egress[alone] - n_in, rest_out[found_out]]).astype(np.int64))


def _by_sorting(in_keys: np.ndarray, in_ts: np.ndarray, out_keys: np.ndarray, out_ts: np.ndarray,
                tolerance: float, window: float) -> tuple[np.ndarray, np.ndarray]:
    """The rule, with the packets sorted by key (and time within a key)."""
    n_in, n_out = len(in_keys), len(out_keys)
    if not n_in or not n_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate([in_keys, out_keys])
    ts = np.concatenate([in_ts, out_ts])
    shifted = np.concatenate([in_ts, out_ts + tolerance])  # egress sorts after ingress it may follow
    kind = np.concatenate([np.zeros(n_in, np.int8), np.ones(n_out, np.int8)])
    order, start, size = _sorted(keys, shifted, kind)
    keys, ts, kind = keys[order], ts[order], kind[order]
    simple = np.nonzero(start & (size == 2))[0]
    simple = simple[(kind[simple] == 0) & (kind[simple + 1] == 1)]
    gap = ts[simple + 1] - ts[simple]
    simple = simple[(gap <= window) & (gap >= -tolerance)]
    pairs_in, pairs_out = [order[simple]], [order[simple + 1] - n_in]
    busy = np.nonzero(start & (size > 2))[0]
    if len(busy):
        extra_in, extra_out = _busy(busy, size, kind, ts, order, tolerance, window)
        pairs_in.append(extra_in)
        pairs_out.append(extra_out - n_in)
    return np.concatenate(pairs_in).astype(np.int64), np.concatenate(pairs_out).astype(np.int64)


def _sorted(keys, shifted, kind) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.lexsort((kind, shifted, keys))``, with one unstable sort by key: most keys are seen once or
    twice, and a pair is put in order by comparing it; only keys seen more often are sorted again.
    Also: where each key starts, and how many packets have it."""
    order = np.argsort(keys)
    ordered = keys[order]
    start = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(start) - 1
    size = np.bincount(group)[group]
    two = np.nonzero(start & (size == 2))[0]
    a, b = order[two], order[two + 1]
    after = (shifted[a] > shifted[b]) | ((shifted[a] == shifted[b]) & ((kind[a] > kind[b]) | ((kind[a] == kind[b])
                                                                                             & (a > b))))
    order[two[after]], order[two[after] + 1] = b[after], a[after]
    many = np.nonzero(size > 2)[0]
    if len(many):
        rows = order[many]
        order[many] = rows[np.lexsort((rows, kind[rows], shifted[rows], group[many]))]
    return order, start, size


def _busy(starts, size, kind, ts, order, tolerance, window) -> tuple[np.ndarray, np.ndarray]:
    """Keys seen more than twice, in the order the greedy rule finds their pairs (by egress position)."""
    lengths = size[starts]
    even = lengths % 2 == 0
    member = np.repeat(np.arange(len(starts)), lengths)
    position = np.arange(len(member)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    at = np.repeat(starts, lengths) + position
    wrong = np.bincount(member, kind[at] != (position % 2), len(starts)) > 0  # not 0, 1, 0, 1...
    simple = even & ~wrong
    lead = at[simple[member] & (position % 2 == 0)]  # ingress positions of alternating keys
    gap = ts[lead + 1] - ts[lead]
    lead = lead[(gap <= window) & (gap >= -tolerance)]
    found_in, found_out = [order[lead]], [order[lead + 1]]
    positions = [lead + 1]
    rest = starts[~simple]
    if len(rest):
        greedy_in, greedy_out, greedy_at = _greedy(rest, size, kind, ts, order, tolerance, window)
        found_in.append(greedy_in)
        found_out.append(greedy_out)
        positions.append(greedy_at)
    sequence = np.argsort(np.concatenate(positions), kind="stable")
    return np.concatenate(found_in)[sequence], np.concatenate(found_out)[sequence]


def _greedy(starts, size, kind, ts, order, tolerance, window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys seen several times: each egress takes the latest unpaired ingress before it."""
    found_in: list[int] = []
    found_out: list[int] = []
    found_at: list[int] = []
    kinds, times, positions = kind.tolist(), ts.tolist(), order.tolist()
    for start in starts.tolist():
        waiting: list[int] = []
        for j in range(start, start + int(size[start])):
            if kinds[j] == 0:
                waiting.append(j)
                continue
            if waiting and -tolerance <= times[j] - times[waiting[-1]] <= window:
                i = waiting.pop()
                found_in.append(positions[i])
                found_out.append(positions[j])
                found_at.append(j)
    return np.array(found_in, np.int64), np.array(found_out, np.int64), np.array(found_at, np.int64)
