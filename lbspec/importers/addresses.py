"""Addresses and ports as load balancer configurations write them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lbspec.importers.draft import Address

__all__ = ["HostPort", "split_host_port", "every_address", "ip", "port_number", "port_range", "prefix_text",
           "overlap"]


@dataclass(frozen=True)
class HostPort:
    """``host`` as written (brackets removed), ``port`` as written ('' when absent)."""

    host: str
    port: str


def every_address(host: str) -> bool:
    """Does a listener on ``host`` (as :func:`split_host_port` gives it) listen on every address of the host?"""
    return host in ("", "*", "0.0.0.0", "::")


def split_host_port(text: str) -> HostPort:
    """`10.0.0.1:80`, `[2001:db8::1]:80`, `:80`, `*:80`, `2001:db8::1:80` (last colon: the port).

    A single bare address without a colon (`10.0.0.1`) has no port; an
    unbracketed IPv6 address always has its port after the last colon, as
    HAProxy reads it.
    """
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return HostPort(text, "")
        rest = text[close + 1:]
        return HostPort(text[1:close], rest[1:] if rest.startswith(":") else rest)
    if ":" not in text:
        return HostPort(text, "")
    host, port = text.rsplit(":", 1)
    return HostPort(host, port)


def ip(text: str) -> Address | None:
    """The address, or None if ``text`` is not one (a host name, a variable)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def port_number(text: str) -> int | None:
    """A port from 1 to 65535, or None."""
    if not re.fullmatch(r"[0-9]{1,5}", text):
        return None
    value = int(text)
    return value if 1 <= value <= 65535 else None


def port_range(text: str) -> tuple[int, int] | None:
    """`80` or `8000-8100`, or None when it is neither."""
    low, _, high = text.partition("-")
    first = port_number(low)
    last = port_number(high) if high else first
    if first is None or last is None or last < first:
        return None
    return first, last


def prefix_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A prefix as a spec writes it: ``10.0.0.0/8``, and a single address without its length."""
    return str(network) if network.prefixlen != network.max_prefixlen else str(network.network_address)


def overlap(sources: Sequence[str] | None, allowed: Sequence[str]) -> list[str]:
    """The addresses in both lists of prefixes (``sources`` None: every address), each as the narrower of two
    prefixes that overlap: a rule's sources of the clients a firewall lets in."""
    if sources is None:
        return list(allowed)
    out = []
    for one in map(ipaddress.ip_network, sources):
        for other in map(ipaddress.ip_network, allowed):
            if one.version == other.version and (one.subnet_of(other) or other.subnet_of(one)):
                out.append(prefix_text(one if one.prefixlen >= other.prefixlen else other))
    return list(dict.fromkeys(out))
