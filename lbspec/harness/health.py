"""What a load balancer's health checks conclude, for in-process load balancers.

An in-process LB has no backend to probe: the harness tells it when a backend
really fails or recovers (:meth:`LoadBalancer.backend_health`), and
:class:`HealthChecks` works out when periodic checks would notice.  Probes of
every backend start at ``phase``, ``phase + every``, ...; a probe of a live
backend succeeds at once, a probe of a dead one fails ``timeout`` later.
``fall`` failures in a row mark a backend down, ``rise`` successes in a row
mark it up -- so a failure is noticed after at least ``(fall - 1) x every +
timeout`` and less than ``fall x every + timeout``, the window the spec's
semantics allow (docs/semantics.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from lbspec.semantics.model import Health

__all__ = ["HealthChecks"]


@dataclass
class _Probed:
    """One backend: its real state changes, and what the checks have concluded up to ``probe``."""

    changes: list[float] = field(default_factory=list)  # times of real changes (sorted)
    states: list[bool] = field(default_factory=list)  # the real state from each change on
    probe: int = 0  # index of the next probe to account for
    fails: int = 0
    oks: int = 0
    up: bool = True  # the checks' verdict

    def alive(self, time: float) -> bool:
        at = bisect.bisect_right(self.changes, time) - 1
        return True if at < 0 else self.states[at]


class HealthChecks:
    """The LB's view of its backends' health, from periodic checks with the spec's settings."""

    def __init__(self, health: Health, backends: Iterable[str], phase: float = 0.0):
        self.health = health
        self.phase = phase
        self.backends = {name: _Probed() for name in backends}

    def change(self, backend: str, up: bool, time: float) -> None:
        """The backend really failed (``up=False``) or recovered at ``time``."""
        probed = self._get(backend)
        at = bisect.bisect_right(probed.changes, time)
        probed.changes.insert(at, time)
        probed.states.insert(at, up)

    def up(self, backend: str, time: float) -> bool:
        """Do the checks say ``backend`` is up at ``time``?  (Always, with ``health none``.)"""
        probed = self._get(backend)
        if self.health.kind == "none":
            return True
        self._probe_until(probed, time)
        return probed.up

    def seen_up(self, time: float) -> frozenset[str]:
        return frozenset(name for name in self.backends if self.up(name, time))

    def _get(self, backend: str) -> _Probed:
        try:
            return self.backends[backend]
        except KeyError:
            raise KeyError(f"no backend named {backend!r}; known: {', '.join(sorted(self.backends))}") from None

    def _probe_until(self, probed: _Probed, time: float) -> None:
        every, timeout = self.health.every, self.health.timeout
        while True:
            start = self.phase + probed.probe * every
            ok = probed.alive(start)
            if (start if ok else start + timeout) > time:
                return
            probed.probe += 1
            self._count(probed, ok)

    def _count(self, probed: _Probed, ok: bool) -> None:
        if ok:
            probed.oks, probed.fails = probed.oks + 1, 0
            probed.up = probed.up or probed.oks >= self.health.rise
        else:
            probed.fails, probed.oks = probed.fails + 1, 0
            probed.up = probed.up and probed.fails < self.health.fall
