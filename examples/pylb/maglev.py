"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.

Each backend walks its own permutation of the table's slots and claims the
next free one, ``weight`` slots per round, until the table is full.  Removing
a backend frees only its slots (and shifts few others), so most keys keep
their backend when the set changes -- unlike ``hash % n``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["Maglev", "stable_hash"]

TABLE_SIZE = 251  # prime; at least 60 slots per backend for the pools of examples/pylb


def stable_hash(data: bytes, salt: bytes = b"") -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=salt[:64]).digest(), "big")


class Maglev:
    """The lookup table for one set of backends: ``lookup(key_hash)`` -> backend name."""

    def __init__(self, backends: Sequence[tuple[str, int]], size: int = TABLE_SIZE):
        if not backends:
            raise ValueError("Maglev needs at least one backend")
        self.size = size
        self.table = self._populate([(name, max(weight, 1)) for name, weight in backends])

    def lookup(self, key_hash: int) -> str:
        return self.table[key_hash % self.size]

    def _populate(self, backends: list[tuple[str, int]]) -> list[str]:
        size = self.size
        offsets = [stable_hash(name.encode(), b"offset") % size for name, _w in backends]
        skips = [stable_hash(name.encode(), b"skip") % (size - 1) + 1 for name, _w in backends]
        nexts = [0] * len(backends)
        table: list[str | None] = [None] * size
        filled = 0
        while filled < size:
            for i, (name, weight) in enumerate(backends):
                for _turn in range(weight):
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                    while table[slot] is not None:
                        nexts[i] += 1
                        slot = (offsets[i] + nexts[i] * skips[i]) % size
                    table[slot] = name
                    nexts[i] += 1
                    filled += 1
                    if filled == size:
                        return table  # type: ignore[return-value]
        return table  # type: ignore[return-value]
