"""End to end: `lbspec monitor --live` as a process of its own, sniffing interfaces in network namespaces.

It is stopped the ways a user stops it (Ctrl-C, a service manager's SIGTERM)
and must end with the summary; verdicts are read from its output as it runs.
Skipped (with the reason) only where network namespaces cannot be made.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from lbspec.lab.fixtures import require_namespaces
from lbspec.lab.netns import Namespace, Resources, unique_prefix

pytestmark = pytest.mark.e2e

SPEC = """
service web {
    vip 192.0.2.10
    listen udp 53
    pool app {
        backend b1 10.0.2.11:5353
    }
    forward udp 53 to app
}
"""


@pytest.fixture
def resources():
    require_namespaces()
    made = Resources()
    try:
        yield made
    finally:
        made.close()


def start(resources: Resources, namespace: Namespace, spec: str, *argv: str) -> subprocess.Popen:
    """`lbspec monitor SPEC ARGV --format jsonl` in ``namespace``, once it listens."""
    command = [sys.executable, "-m", "lbspec", "monitor", spec, *argv, "--format", "jsonl"]
    return resources.spawn(namespace.argv(command), ready="listening on", timeout=30)


def stop(process: subprocess.Popen, sig: int) -> tuple[int, list[dict]]:
    """Send ``sig``; the exit code and every line the monitor printed, as JSON."""
    process.send_signal(sig)
    out, _err = process.communicate(timeout=60)
    return process.returncode, [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_run_with_the_summary(resources, tmp_path, sig):
    namespace = resources.namespace(unique_prefix() + "-live")
    spec = tmp_path / "web.lbspec"
    spec.write_text(SPEC)
    process = start(resources, namespace, str(spec), "--live", "lo")
    code, lines = stop(process, sig)
    assert code == 0 and "summary" in lines[-1]
