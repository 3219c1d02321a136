"""pytest fixtures for the lab.  Import them into a conftest.py::

    from lbspec.lab.fixtures import lab, lab_factory  # noqa: F401

``lab`` is a built :class:`~lbspec.lab.Lab` with backends b1..b4 serving TCP
8080 and UDP 5353; tests that cannot make network namespaces are skipped with
the reason.  ``lab_factory(backends=..., serve=..., family=6)`` builds others
(an IPv6 lab with ``family=6``).  Each lab is torn down after its test, passed
or failed.
"""

from __future__ import annotations

import pytest

from lbspec.lab.netns import namespaces_available
from lbspec.lab.topology import Lab

__all__ = ["lab", "lab_factory", "require_namespaces"]


def require_namespaces() -> None:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab_factory():
    require_namespaces()
    made: list[Lab] = []

    def make(backends=("b1", "b2", "b3", "b4"), serve: bool = True, tcp=(8080,), udp=(5353,), family: int = 4) -> Lab:
        built = Lab(backends, family=family).__enter__()
        made.append(built)
        if serve:
            built.serve(tcp=tcp, udp=udp)
        return built

    yield make
    for built in made:
        built.close()


@pytest.fixture
def lab(lab_factory):
    return lab_factory()
