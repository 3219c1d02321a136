"""The reference load balancer, tested as a team would test its own: a marker, a fixture, one line each.

Run it with ``pytest examples/pylb`` (``--lbspec-examples 1000`` to search
harder).  To watch lbspec catch a bug, swap ``MaglevLB`` for one of
``VARIANTS`` (buggy.py): the test fails with the verdict, the minimal trace,
its captures and the ``lbspec monitor`` command that replays them.
"""

import pytest

from .lb import MaglevLB


@pytest.mark.lbspec("service.lbspec")
def test_generated_traffic_and_faults(lb_harness, lbspec_spec):
    lb_harness.check(lambda: MaglevLB(lbspec_spec.service("pylb")))


@pytest.mark.lbspec("service.lbspec")
def test_flows_failures_recoveries_and_bursts(lb_harness, lbspec_spec):
    lb_harness.check_stateful(lambda: MaglevLB(lbspec_spec.service("pylb")))
