"""A network-namespace lab for testing real load balancers with the monitor.

``Lab`` builds a client, a load balancer and backends in network namespaces
connected by veth pairs; ``lab.serve()`` starts echo backends that name
themselves in every answer; ``lab.install(balancer)`` puts a load balancer in
place (``NftablesDnat``, ``NftablesDsr``, ``Haproxy``, ``NginxStream``; anything with ``install(lab)`` and
``remove(lab)`` fits); ``lab.capture(dir)`` captures both sides of it;
``lab.traffic(...)`` sends bounded client traffic and says who answered.
Everything is torn down on exit, also when a test fails.

pytest fixtures are in :mod:`lbspec.lab.fixtures`.  Nothing here runs unless
:func:`namespaces_available` says namespaces can be made (root, ``ip``, ``nft``).
"""

from lbspec.lab.balancers import Forward, Haproxy, NftablesDnat, NftablesDsr, NginxStream
from lbspec.lab.netns import LabError, namespaces_available
from lbspec.lab.topology import CLIENT, LB_BACKEND_SIDE, LB_CLIENT_SIDE, VIP, BackendHost, Lab, LoadBalancer

__all__ = ["Lab", "LoadBalancer", "BackendHost", "NftablesDnat", "NftablesDsr", "Haproxy", "NginxStream", "Forward", "LabError", "namespaces_available",
           "CLIENT", "VIP", "LB_CLIENT_SIDE", "LB_BACKEND_SIDE"]
