"""How many flows move when a backend leaves: modulo hashing against Maglev, measured.

Both are computed over the same sample of flow hashes with real
implementations (Maglev's table population from Eisenbud et al., NSDI 2016,
with weights as turns per round), so LB109 reports a number rather than a rule
of thumb.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

__all__ = ["remapped_fraction", "maglev_table"]

SAMPLE = 20_000


def _hash(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{salt}:{text}".encode(), digest_size=8).digest(), "big")


def _table_size(backends: int) -> int:
    size = max(1009, 100 * backends)
    while any(size % d == 0 for d in range(2, int(size ** 0.5) + 1)):
        size += 1
    return size


def maglev_table(names: tuple[str, ...], weights: tuple[int, ...]) -> np.ndarray:
    """The Maglev lookup table: entry -> index into ``names``."""
    size = _table_size(len(names))
    offsets = [_hash(n, "offset") % size for n in names]
    skips = [_hash(n, "skip") % (size - 1) + 1 for n in names]
    table = np.full(size, -1, dtype=np.int64)
    following = [0] * len(names)
    credit = [0.0] * len(names)
    top = max(weights)
    filled = 0
    while filled < size:
        for i in range(len(names)):
            credit[i] += weights[i] / top
            while credit[i] >= 1 and filled < size:
                credit[i] -= 1
                while True:
                    slot = (offsets[i] + following[i] * skips[i]) % size
                    following[i] += 1
                    if table[slot] < 0:
                        break
                table[slot] = i
                filled += 1
    return table


def _keys() -> np.ndarray:
    return np.random.default_rng(20161116).integers(0, 2 ** 62, SAMPLE, dtype=np.int64)


def _maglev(names: tuple[str, ...], weights: tuple[int, ...], keys: np.ndarray) -> np.ndarray:
    table = maglev_table(names, weights)
    return np.array(names, dtype=object)[table[keys % len(table)]]


def _modulo(names: tuple[str, ...], weights: tuple[int, ...], keys: np.ndarray) -> np.ndarray:
    slots = np.array([n for n, w in zip(names, weights) for _ in range(w)], dtype=object)
    return slots[keys % len(slots)]


@lru_cache(maxsize=256)
def remapped_fraction(algorithm: str, names: tuple[str, ...], weights: tuple[int, ...]) -> tuple[float, float]:
    """When the first backend leaves: (share of all flows that move, share of the others' flows that move).

    The second number is the avoidable part: flows whose backend did not leave.
    """
    place = _maglev if algorithm == "maglev" else _modulo
    keys = _keys()
    before = place(names, weights, keys)
    after = place(names[1:], weights[1:], keys)
    moved = before != after
    stayed = before != names[0]
    return float(moved.mean()), float(moved[stayed].mean()) if stayed.any() else 0.0
