"""Drive load balancers with traffic generated from a spec, and judge them with the runtime monitor.

The public surface::

    from lbspec.harness import Harness, InProcess, Trace, Send, Fault, Segment

    harness = Harness("service.lbspec")
    judgement = harness.run(InProcess(lambda: MyLB()), trace)     # one trace
    harness.check(lambda: MyLB())                                  # a hypothesis search
    harness.run(Network(lab, NftablesDnat(...)), trace)            # a real LB in the lab (lbspec.lab)

:mod:`lbspec.harness.adapter` defines what a load balancer under test
implements (:class:`LoadBalancer`) and what the harness calls (:class:`Driver`);
docs/plugin.md explains both.  Nothing here imports scapy or z3; the monitor
(numpy) and hypothesis are loaded when a trace is judged or a search starts.
"""

from __future__ import annotations

from lbspec.harness.adapter import Clocked, Driver, HealthAware, LoadBalancer, Observed, Recording
from lbspec.harness.harness import Failure, Harness, Search, SearchSettings
from lbspec.harness.health import HealthChecks
from lbspec.harness.inprocess import EPOCH, InProcess, LoadBalancerError, UnsupportedMode
from lbspec.harness.judge import Judgement
from lbspec.harness.network import CaptureLoss, LabMismatch, Network, TraceTooLong
from lbspec.harness.trace import Event, Fault, Send, Trace
from lbspec.harness.wire import Outer, Segment, decode

__all__ = [
    "Harness", "SearchSettings", "Search", "Failure", "Judgement",
    "LoadBalancer", "HealthAware", "Clocked", "Driver", "Observed", "Recording", "InProcess", "EPOCH",
    "UnsupportedMode", "LoadBalancerError", "Network", "LabMismatch", "TraceTooLong", "CaptureLoss", "HealthChecks",
    "Trace", "Send", "Fault", "Event",
    "Segment", "Outer", "decode",
]
