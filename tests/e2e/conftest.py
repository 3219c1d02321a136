"""Fixtures for end-to-end tests: labs in network namespaces (skipped only where they cannot be made).

A real load balancer's timing varies from run to run, and a test that fails once in many runs (on a
machine thrown away after) leaves nothing to look at but its report.  So a failed test's report holds its
captures, packet by packet: every capture file under its ``tmp_path``, as ``tcpdump -r`` prints it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lbspec.lab.fixtures import lab, lab_factory  # noqa: F401

SHOWN = 3000  # packets shown per capture file


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    directory = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or directory is None:
        return
    for path in sorted(directory.rglob("*.pcap*")):
        report.sections.append((f"capture {path.relative_to(directory)}", _packets(path)))


def _packets(path: Path) -> str:
    if shutil.which("tcpdump"):
        done = subprocess.run(["tcpdump", "-nn", "-tt", "-e", "-r", str(path), "-c", str(SHOWN)],
                              capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr
    from scapy.utils import PcapReader  # noqa: PLC0415 - only where tcpdump is missing

    with PcapReader(str(path)) as packets:
        return "\n".join(f"{float(p.time):.6f} {p.summary()}" for _n, p in zip(range(SHOWN), packets))
