"""Statistics for the monitor: latency quantiles and the balance test.

The balance test asks whether backend shares differ from the weights more
than chance explains.  Flows are assigned to backends independently of their
size, so for any per-flow quantity ``x`` (1 for flows, bytes, packets) the
total ``X_b`` a backend gets has mean ``p_b * sum(x)`` and variance
``p_b (1 - p_b) sum(x^2)``; the statistic ``sum_b (X_b - p_b T)^2 / (p_b S2)``
follows a chi-square law with ``k - 1`` degrees of freedom (for flows, this is
Pearson's test).  The p-value comes from the regularised incomplete gamma
function, computed here (no SciPy dependency).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LatencyHistogram", "chi2_sf", "share_test", "ShareTest"]


class LatencyHistogram:
    """Log-spaced buckets from 1 us to 100 s, about 1% wide: bounded memory, quantiles within 1%."""

    LOW, HIGH, STEPS = 1e-6, 100.0, 1900

    def __init__(self):
        self.counts = np.zeros(self.STEPS + 2, np.int64)
        self.total = 0
        self._scale = self.STEPS / math.log(self.HIGH / self.LOW)

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        clipped = np.clip(values, self.LOW, self.HIGH)
        index = (np.log(clipped / self.LOW) * self._scale).astype(np.int64) + 1
        index[values < self.LOW] = 0
        self.counts += np.bincount(index, minlength=len(self.counts))[:len(self.counts)]
        self.total += len(values)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts += other.counts
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = q * (self.total - 1)
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="right"))
        if index == 0:
            return 0.0
        return self.LOW * math.exp((index - 0.5) / self._scale)


def _gamma_series(a: float, x: float) -> float:
    total = term = 1.0 / a
    n = a
    for _ in range(10_000):
        n += 1
        term *= x / n
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_fraction(a: float, x: float) -> float:
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        step = d * c
        h *= step
        if abs(step - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for a chi-square variable with ``dof`` degrees of freedom."""
    if dof <= 0 or statistic <= 0:
        return 1.0
    a, x = dof / 2, statistic / 2
    if x < a + 1:
        return max(0.0, 1.0 - _gamma_series(a, x))
    return min(1.0, _gamma_fraction(a, x))


@dataclass(frozen=True)
class ShareTest:
    statistic: float
    p_value: float
    shares: tuple[float, ...]
    expected: tuple[float, ...]
    deviation: float  # the largest |share - expected|


def share_test(totals: Sequence[float], squares: float, expected: Sequence[float]) -> ShareTest | None:
    """Test observed per-backend totals against expected shares (which sum to 1).

    ``squares`` is the sum of squared per-flow amounts (the flow count, for
    flows).  None when there is nothing to test.
    """
    total = float(sum(totals))
    if total <= 0 or squares <= 0 or len(totals) < 2:
        return None
    shares = tuple(t / total for t in totals)
    statistic = sum((t - p * total) ** 2 / (p * squares) for t, p in zip(totals, expected) if p > 0)
    if any(t > 0 for t, p in zip(totals, expected) if p <= 0):
        statistic = math.inf  # traffic where the weights allow none
    dof = sum(1 for p in expected if p > 0) - 1
    p_value = 0.0 if math.isinf(statistic) else chi2_sf(statistic, max(dof, 1))
    deviation = max(abs(s - p) for s, p in zip(shares, expected))
    return ShareTest(statistic, p_value, shares, tuple(expected), deviation)
