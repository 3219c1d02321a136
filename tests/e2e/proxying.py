"""Helpers for the end-to-end tests of proxies (HAProxy, nginx): import a config, run traffic around a
fault, judge the captures with `lbspec monitor`, all through the CLI and its JSON output."""

from __future__ import annotations

import io
import json
from pathlib import Path

from lbspec.cli import main
from lbspec.lab import VIP

CONFIGS = Path(__file__).resolve().parent.parent / "importers" / "configs"
TARGET = f"{VIP}:80"


def imported(kind: str, config: Path, directory: Path, name: str = "imported.lbspec") -> str:
    """The spec `lbspec import` makes of ``config`` (the very file the proxy runs)."""
    path = directory / name
    err = io.StringIO()
    code = main(["import", kind, str(config), "-o", str(path), "-q"], io.StringIO(), err)
    assert code in (0, 1), err.getvalue()
    return str(path)


def monitor(spec: str, capture) -> tuple[int, dict]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["monitor", spec, "--client-side", str(capture.client_side), "--backend-side",
                 str(capture.backend_side), "--format", "json"], out, err)
    assert code in (0, 1), err.getvalue()
    return code, json.loads(out.getvalue())


def verdicts(document: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for item in document["diagnostics"]:
        if item["severity"] in ("error", "warning"):
            found.setdefault(item["code"], []).append(item)
    return found


def around(lab, directory: Path, fault=None, before: int = 6, after: int = 18, timeout: float = 0.5,
           udp: bool = False, pace: float = 0.25) -> tuple[list[dict], list[dict], object]:
    """Traffic, ``fault()`` (on b2, say), more traffic spread over time: all in one capture.

    The first traffic takes over a second (``pace`` apart): HAProxy starts its servers one failed check
    from down, and has them fully up only after a first good check, ``inter`` (1 s) in."""
    with lab.capture(directory) as capture:
        first = lab.traffic(tcp=[TARGET], udp=[f"{VIP}:53"] if udp else [], connections=before, datagrams=6,
                            interval=pace)
        if fault is not None:
            fault()
        then = lab.traffic(tcp=[TARGET], connections=after, interval=0.1, timeout=timeout)
    return first, then, capture


def answered(results: list[dict]) -> list[str | None]:
    return [r["answered_by"] for r in results if r["proto"] == "tcp"]
