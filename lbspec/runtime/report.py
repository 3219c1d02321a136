"""The summary of a monitor run: what was read, how much was paired, who got the load."""

from __future__ import annotations

import math
from typing import Any

from lbspec.runtime.classify import ROLE_NAMES
from lbspec.runtime.decode import ARP, FRAGMENT, NOT_IP, OK, UNDECODABLE
from lbspec.runtime.evidence import SIDE_NAMES
from lbspec.runtime.verdicts import timestamp

__all__ = ["summarize"]


def summarize(monitor) -> dict[str, Any]:
    """A JSON-ready summary (docs/monitor.md describes every field)."""
    c = monitor.counts
    status = c.status
    first, last = _span(monitor)
    summary = {
        "packets": c.packets,
        "decoded": status.get(OK, 0),
        "not_ip": status.get(NOT_IP, 0) + status.get(ARP, 0),
        "undecodable": status.get(UNDECODABLE, 0),
        "fragments": status.get(FRAGMENT, 0),
        "sources": _sources(monitor),
        "roles": {ROLE_NAMES[k]: v for k, v in sorted(c.roles.items())},
        "duration_s": (last - first) if math.isfinite(first) and math.isfinite(last) else 0.0,
        "start": timestamp(first) if math.isfinite(first) else None,
        "flows": c.new_flows,
        "listened_ingress": c.listened,
        "paired": c.paired,
        "pairing_rate": (c.paired / c.listened) if c.listened else None,
        "changed_in_flight": c.mutated_pairs,
        "probes": c.probes,
        "unjudged_at_edges": c.unjudged,
        "capture_copies": c.copies,
        "unattributed": c.unattributed,
        "latency_ms": _latency(monitor),
        "backends": _backends(monitor),
        "health": _health(monitor),
        "verdicts": monitor.book.counts(),
        "violating_packets": dict(sorted(monitor.book.packets.items())),
        "verdicts_unlisted": monitor.book.unlisted(),
        "evictions": monitor.evictions(),
        "capture_drops": sum(_capture_drops(monitor).values()),
    }
    if monitor.proxy.services:
        summary["proxy"] = monitor.proxy.summary()
    if monitor.replies.active:
        summary["replies_relayed"] = monitor.replies.paired
    return summary


def _span(monitor) -> tuple[float, float]:
    entries = monitor.counts.per_source.values()
    if not entries:
        return math.inf, -math.inf
    return min(e[1] for e in entries), max(e[2] for e in entries)


def _sources(monitor) -> list[dict[str, Any]]:
    out = []
    dropped = _capture_drops(monitor)
    for index, name in enumerate(monitor.sources.names):
        packets, _first, _last = monitor.counts.per_source.get(index, [0, 0.0, 0.0])
        out.append({"file": name, "side": SIDE_NAMES.get(monitor.sources.sides[index], "combined"),
                    "packets": packets, "dropped": dropped.get(name, 0)})
    return out


def _capture_drops(monitor) -> dict[str, int]:
    """Packets each capture says it dropped (pcapng interface statistics, a live socket's kernel counters),
    as the LB209 notes about them report."""
    found: dict[str, int] = {}
    for note in monitor.notes:
        data = note.data or {}
        if note.code == "LB209" and "dropped" in data:
            found[data.get("file", "")] = found.get(data.get("file", ""), 0) + int(data["dropped"])
    return found


def _latency(monitor) -> dict[str, float | None]:
    h = monitor.latency
    quantile = lambda q: None if h.quantile(q) is None else round(h.quantile(q) * 1e3, 6)  # noqa: E731
    return {"p50": quantile(0.5), "p99": quantile(0.99), "pairs": h.total}


def _backends(monitor) -> list[dict[str, Any]]:
    compiled, traffic = monitor.compiled, monitor.traffic
    out = []
    for plan in compiled.services:
        for pool in plan.service.pools:
            weights = sum(b.weight for b in pool.primaries)
            refs = [r for r in plan.backends if r.backend.pool == pool.name]
            flows = sum(int(traffic.backend_flows[r.gid]) for r in refs)
            volume = sum(float(traffic.backend_bytes[r.gid]) for r in refs)
            for ref in refs:
                b = ref.backend
                out.append({"service": plan.service.name, "pool": pool.name, "backend": b.name,
                            "weight": b.weight, "backup": b.backup, "flows": int(traffic.backend_flows[ref.gid]),
                            "share": traffic.backend_flows[ref.gid] / flows if flows else None,
                            "expected": (0.0 if b.backup else b.weight / weights) if weights else None,
                            "bytes": int(traffic.backend_bytes[ref.gid]),
                            "bytes_share": traffic.backend_bytes[ref.gid] / volume if volume else None})
    return out


def _health(monitor) -> list[dict[str, Any]]:
    return [{"time": e.time, "backend": monitor.compiled.backends[e.gid].name, "state": "up" if e.up else "down",
             "evidence": e.source} for e in monitor.timeline.events()]
