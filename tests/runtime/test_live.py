"""Live capture: the filter from the spec, interface arguments, and clear errors when capture is not possible."""

from __future__ import annotations

import pytest

import lbspec
from lbspec.diagnostics import InputError
from lbspec.runtime.live import bpf_filter, parse_interface

from .scenario import spec


def test_the_bpf_filter_names_vips_and_backends():
    text = bpf_filter(lbspec.loads(spec(backends="backend b1 10.1.0.11\n        backend b2 2001:db8::12")))
    assert text == "host 10.1.0.11 or host 192.0.2.10 or host 2001:db8::12"
    assert bpf_filter(lbspec.loads(spec(mode="dsr", rule="forward tcp 80 to app"))).endswith(" or arp")


@pytest.mark.parametrize("text, name, side", [("eth0", "eth0", None), ("client:eth0", "eth0", "client"),
                                              ("backend:br-lb", "br-lb", "backend")])
def test_interfaces(text, name, side):
    parsed = parse_interface(text)
    assert (parsed.name, parsed.side) == (name, side)


@pytest.mark.parametrize("text", ["middle:eth0", "client:"])
def test_bad_interfaces(text):
    with pytest.raises(InputError):
        parse_interface(text)


def test_no_permission_to_capture_exits_2(cli, spec_file, monkeypatch):
    import scapy.arch  # noqa: F401
    from scapy.config import conf

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(conf, "L2listen", refuse)
    run = cli("monitor", spec_file(spec()), "--live", "eth0", "--duration", "1")
    assert run.code == 2 and "permission denied" in run.err and "CAP_NET_RAW" in run.err


def test_an_unknown_interface_exits_2(cli, spec_file):
    run = cli("monitor", spec_file(spec()), "--live", "nosuchif0", "--duration", "1")
    assert run.code == 2 and "cannot capture on nosuchif0" in run.err
