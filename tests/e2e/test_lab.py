"""The lab's faults do what they say, seen from a client through an nftables DNAT balancer."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from lbspec.lab import VIP, Forward, NftablesDnat
from lbspec.lab.netns import namespaces_available, unique_prefix

pytestmark = pytest.mark.e2e


@pytest.fixture
def one(lab_factory):
    lab = lab_factory(backends=("b1",))
    lab.install(NftablesDnat(VIP, [Forward("tcp", 80, [(lab.address("b1"), 8080)])]))
    return lab


def _errors(lab, timeout: float = 0.3) -> set:
    return {r["error"] for r in lab.traffic(tcp=[f"{VIP}:80"], connections=2, messages=1, timeout=timeout)}


def test_a_killed_backend_refuses_and_a_restarted_one_answers(one):
    one.kill_backend("b1")
    assert _errors(one) == {"ConnectionRefusedError"}
    one.restart_backend("b1")
    assert _errors(one) == {None}


def test_a_blocked_backend_is_silent_until_unblocked(one):
    one.block_backend("b1")
    assert _errors(one) == {"TimeoutError"}
    one.unblock_backend("b1")
    assert _errors(one) == {None}


def test_a_slowed_backend_answers_late(one):
    one.slow_backend("b1")
    assert _errors(one, timeout=0.2) == {"TimeoutError"}  # the servers answer 0.5 s late
    assert _errors(one, timeout=2.0) == {None}
    one.slow_backend("b1", slow=False)
    assert _errors(one, timeout=0.2) == {None}


def test_a_lab_process_stopped_with_sigterm_leaves_no_namespace():
    """A run stopped from outside (a time limit, `timeout`) gets SIGTERM, which skips atexit: the lab undoes
    itself first, then the process dies of the signal as it would have.  A process forked from it (a
    `--jobs` reader) inherits the handler but not the lab: stopped, it leaves the lab alone."""
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    name = f"{unique_prefix()}-term"
    code = "\n".join([
        "import multiprocessing, subprocess, sys, time",
        "from lbspec.lab.netns import Resources",
        "lab = Resources(); lab.namespace(sys.argv[1])",
        "forked = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))",
        "forked.start(); forked.terminate(); forked.join()",
        "listed = subprocess.run(['ip', 'netns', 'list'], capture_output=True, text=True).stdout",
        "print('kept' if sys.argv[1] in listed else 'lost', flush=True)",
        "time.sleep(60)"])
    child = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "kept"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        child.kill()
        child.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
