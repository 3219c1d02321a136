"""Per-flow state with bounded memory: entries expire after a timeout, and a cap evicts the oldest.

Every table the monitor keeps per flow or per client is a :class:`FlowTable`.
Expiry is what a load balancer's own flow table does and loses nothing;
eviction under the cap drops state that may still matter, so it is counted and
reported (LB211).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["FlowTable"]

LAST = 1  # every entry is a list whose item 1 is the time it was last seen


class FlowTable:
    """A dict of key -> list (``entry[1]`` = last seen), with expiry and a size cap.  ``on_drop`` is handed
    the entries that leave together (expired, evicted or drained)."""

    def __init__(self, cap: int, timeout: float, on_drop: Callable[[list[list]], None] | None = None):
        self.items: dict[int, list] = {}
        self.cap = cap
        self.timeout = timeout
        self.on_drop = on_drop
        self.evicted = 0
        self.expired = 0
        self._swept = float("-inf")

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: int) -> list | None:
        return self.items.get(key)

    def put(self, key: int, entry: list) -> None:
        self.items[key] = entry

    def maintain(self, now: float) -> None:
        """Expire idle entries (at most every tenth of the timeout) and enforce the cap."""
        if now - self._swept >= min(self.timeout / 10, 10.0):
            self._swept = now
            stale = [k for k, v in self.items.items() if now - v[LAST] > self.timeout]
            self.expired += len(stale)
            self._drop(stale)
        if len(self.items) > self.cap:
            oldest = sorted(self.items, key=lambda k: self.items[k][LAST])[:len(self.items) - self.cap * 9 // 10]
            self.evicted += len(oldest)
            self._drop(oldest)

    def end(self, keys: list[int]) -> None:
        """Hand the entries of ``keys`` (those there are) to ``on_drop``: flows that are over."""
        self._drop([key for key in keys if key in self.items])

    def drain(self) -> None:
        """Hand every entry to ``on_drop`` (at the end of a run)."""
        self._drop(list(self.items))

    def _drop(self, keys: list[int]) -> None:
        entries = [self.items.pop(key) for key in keys]
        if entries and self.on_drop is not None:
            self.on_drop(entries)
