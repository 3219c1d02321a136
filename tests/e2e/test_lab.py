"""The lab's faults do what they say, seen from a client through an nftables DNAT balancer."""

from __future__ import annotations

import pytest

from lbspec.lab import VIP, Forward, NftablesDnat

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
