"""Pairing follows its rule exactly, whichever path (numpy or Python) a key takes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lbspec.runtime.pairing import match


def _rule(in_keys, in_ts, out_keys, out_ts, tolerance, window):
    """The rule in its plainest form: keys in sorted order; a key seen once on each side pairs if close
    enough, and in other keys each egress takes the latest unpaired ingress before it."""
    items = sorted([(k, t, 0, i) for i, (k, t) in enumerate(zip(in_keys, in_ts))]
                   + [(k, t + tolerance, 1, i) for i, (k, t) in enumerate(zip(out_keys, out_ts))])
    real = {(0, i): t for i, t in enumerate(in_ts)} | {(1, i): t for i, t in enumerate(out_ts)}
    groups: dict[int, list] = {}
    for key, _shifted, kind, index in items:
        groups.setdefault(key, []).append((kind, index))
    simple, busy = [], []
    for members in groups.values():
        if len(members) == 2:
            (k1, i1), (k2, i2) = members
            if k1 == 0 and k2 == 1 and -tolerance <= real[(1, i2)] - real[(0, i1)] <= window:
                simple.append((i1, i2))
        elif len(members) > 2:
            waiting: list[int] = []
            for kind, index in members:
                if kind == 0:
                    waiting.append(index)
                elif waiting and -tolerance <= real[(1, index)] - real[(0, waiting[-1])] <= window:
                    busy.append((waiting.pop(), index))
    return simple + busy


def _follows_the_rule(packets, tolerance: float, window: float) -> None:
    ingress = [(k, t / 1000) for k, t, out in packets if not out]
    egress = [(k, t / 1000) for k, t, out in packets if out]
    in_keys = np.array([k for k, _ in ingress], np.uint64)
    out_keys = np.array([k for k, _ in egress], np.uint64)
    in_ts, out_ts = np.array([t for _, t in ingress]), np.array([t for _, t in egress])
    a, b = match(in_keys, in_ts, out_keys, out_ts, tolerance, window)
    expected = _rule(in_keys.tolist(), in_ts.tolist(), out_keys.tolist(), out_ts.tolist(), tolerance, window)
    assert sorted(zip(a.tolist(), b.tolist())) == sorted(expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40), st.booleans()), max_size=60),
       st.sampled_from([0.0, 0.002]), st.sampled_from([0.005, 0.02]))
def test_match_follows_the_rule(packets, tolerance, window):
    _follows_the_rule(packets, tolerance, window)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 40), st.booleans()), max_size=200),
       st.integers(0, 200))
def test_hash_buckets_and_sorting_find_the_same_pairs(packets, repeats):
    """Keys spread over all 64 bits (as the monitor's hashes are): most take the hash-bucket path; those
    repeated, or sharing a bucket, the sorting one.  Together they follow the rule."""
    _follows_the_rule(packets + packets[:repeats], 0.001, 0.02)  # repeats: retransmissions, duplicate ACKs


def test_repeated_acks_pair_one_to_one():
    in_ts = np.array([0.0, 0.010, 0.020])
    a, b = match(np.array([7, 7, 7], np.uint64), in_ts, np.array([7, 7, 7], np.uint64), in_ts + 0.0001, 0.002, 0.1)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 0), (1, 1), (2, 2)]


def test_pairs_are_judged_in_time_order_ties_by_row():
    from lbspec.runtime.monitor import _time_order

    ts = np.array([0.0, 1.0, 1.0, 0.5, 3.0, 2.0])
    rows = np.array([4, 2, 1, 3, 5])
    assert rows[_time_order(ts, rows)].tolist() == [3, 1, 2, 5, 4]  # 0.5, 1.0 (row 1), 1.0 (row 2), 2.0, 3.0
    in_order = np.array([3, 0, 1])
    assert _time_order(np.arange(4.0), in_order).tolist() == [1, 2, 0]
    twice = np.array([1, 3, 1])  # never given by pairing; still a full order, not a lost row
    assert sorted(_time_order(ts, twice).tolist()) == [0, 1, 2]
