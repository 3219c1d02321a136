"""Quantities: durations and percentages, with their units."""

from __future__ import annotations

import math

from lbspec import diagnostics as d
from lbspec import ir

__all__ = ["DURATION_UNITS", "duration", "percentage"]

DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PERCENT_UNITS = {"%": 0.01}
# Spellings people reach for, and the unit they mean.
_ALIASES = {"sec": "s", "secs": "s", "second": "s", "seconds": "s", "msec": "ms", "msecs": "ms",
            "min": "m", "mins": "m", "minute": "m", "minutes": "m", "hr": "h", "hour": "h",
            "hours": "h", "usec": "us", "µs": "us", "pct": "%", "percent": "%"}


def _convert(q: ir.Quantity, units: dict[str, float], expected: str, other: dict[str, float],
             diags: list[d.Diagnostic]) -> float | None:
    if q.unit in units:
        return _finite(q, float(q.number) * units[q.unit], expected, diags)
    if not q.unit:
        example = f"{q.number}s" if "s" in units else f"{q.number}%"
        diags.append(d.UNKNOWN_UNIT.at(q.span, problem="missing unit", text=str(q),
                                       help=f"write `{example}`", label=f"{expected} needs a unit"))
    elif q.unit in other:
        diags.append(d.WRONG_QUANTITY.at(q.span, expected=expected, text=str(q)))
    else:
        meant = _ALIASES.get(q.unit.lower()) or d.suggest(q.unit, units)
        known = ", ".join(f"`{u}`" for u in units)
        diags.append(d.UNKNOWN_UNIT.at(
            q.span, problem=f"unknown unit `{q.unit}`", text=str(q),
            help=f"did you mean `{q.number}{meant}`?" if meant in units else f"units here: {known}"))
    return None


def _finite(q: ir.Quantity, value: float, expected: str, diags: list[d.Diagnostic]) -> float | None:
    if math.isfinite(value):
        return value
    diags.append(d.OUT_OF_RANGE.at(q.span, what=expected.removeprefix("a "), value=str(q),
                                   reason="it is too large to compute with"))
    return None


def duration(q: ir.Quantity, diags: list[d.Diagnostic]) -> float | None:
    """Seconds, or None (with a diagnostic) if ``q`` is not a duration."""
    return _convert(q, DURATION_UNITS, "a duration", PERCENT_UNITS, diags)


def percentage(q: ir.Quantity, diags: list[d.Diagnostic]) -> float | None:
    """A fraction (10% is 0.1), or None (with a diagnostic) if ``q`` is not a percentage."""
    return _convert(q, PERCENT_UNITS, "a percentage", DURATION_UNITS, diags)
