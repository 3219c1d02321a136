"""The runtime monitor: judge traffic around a load balancer against a spec.

The only package that imports scapy (and the one that leans on numpy).  Its
public API, loaded on first use so that ``import lbspec.runtime`` stays cheap::

    from lbspec.runtime import Monitor, MonitorOptions, Report, read_captures

    monitor = Monitor(spec)                          # spec: lbspec.load(...)
    monitor.feed(ip_bytes, time=t, side="client")    # or a scapy packet
    monitor.feed(ip_bytes, time=t2, side="backend")
    monitor.health("app1", up=False, time=t3)
    report = monitor.close()                         # .diagnostics, .summary, .exit_code

``read_captures(monitor, client=[...], backend=[...], combined=[...])`` feeds
capture files through the same monitor.  docs/monitor.md has the details.
"""

from __future__ import annotations

__all__ = ["Monitor", "MonitorOptions", "Report", "read_captures", "CaptureError"]

_EXPORTS = {
    "Monitor": "lbspec.runtime.monitor", "MonitorOptions": "lbspec.runtime.monitor",
    "Report": "lbspec.runtime.monitor", "read_captures": "lbspec.runtime.files",
    "CaptureError": "lbspec.runtime.capture",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lbspec.runtime' has no attribute {name!r}")
