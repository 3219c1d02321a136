"""Reference load balancers for lbspec's pytest plugin: one correct, six with a realistic bug each.

``MaglevLB`` (lb.py) is correct; ``VARIANTS`` (buggy.py) maps a name to each
buggy variant, whose docstring's first line says what it gets wrong, and
``EXPECTED`` to the verdict code lbspec fails it with.
service.lbspec is the spec they are held to; test_pylb.py shows the plugin.
"""

from .buggy import EXPECTED, VARIANTS
from .lb import FlowTable, MaglevLB
from .maglev import Maglev

__all__ = ["MaglevLB", "FlowTable", "Maglev", "VARIANTS", "EXPECTED"]
