"""Addresses, prefixes and ports as written, checked and converted."""

from __future__ import annotations

import ipaddress

from lbspec import diagnostics as d
from lbspec import ir
from lbspec.semantics.model import Address, Network, PortRanges, merge_ranges

__all__ = ["address", "prefix", "port", "port_ranges"]


def _reason(error: ValueError) -> str:
    text = str(error)
    # ipaddress repeats the input in quotes; keep only what is wrong with it
    return text.split(": ", 1)[-1] if ": " in text else text


def address(node: ir.Address, diags: list[d.Diagnostic]) -> Address | None:
    try:
        return ipaddress.ip_address(node.text)
    except ValueError as error:
        diags.append(d.INVALID_ADDRESS.at(node.span, text=node.text, reason=_address_reason(node.text, error)))
        return None


def _address_reason(text: str, error: ValueError) -> str:
    if ":" not in text:
        octets = text.split(".")
        bad = next((o for o in octets if not o.isdigit() or int(o) > 255), None)
        if bad is not None:
            return f"octet {bad} is above 255" if bad.isdigit() else f"octet `{bad}` is not a number"
    return _reason(error)


def prefix(node: ir.Prefix, diags: list[d.Diagnostic]) -> Network | None:
    """A network; an address without a length is a host (/32, /128)."""
    host = address(node.address, diags)
    if host is None:
        return None
    bits = host.max_prefixlen
    length = bits if node.length is None else node.length
    text = node.address.text + ("" if node.length is None else f"/{node.length}")
    if length > bits:
        diags.append(d.INVALID_PREFIX.at(node.span, text=text,
                                         reason=f"an IPv{host.version} prefix is at most /{bits}"))
        return None
    network = ipaddress.ip_network(f"{host}/{length}", strict=False)
    if network.network_address != host:
        diags.append(d.INVALID_PREFIX.at(node.span, text=text, reason="host bits are set",
                                         help=f"did you mean `{network}`?"))
        return None
    return network


def port(value: int, span: ir.Span, diags: list[d.Diagnostic], *, allow_zero: bool = False) -> int | None:
    if (0 if allow_zero else 1) <= value <= 65535:
        return value
    diags.append(d.PORT_RANGE.at(span, port=value, label="ports run from 1 to 65535"
                                 if not allow_zero else "ports run from 0 to 65535"))
    return None


def port_ranges(nodes: tuple[ir.PortRange, ...] | list[ir.PortRange], diags: list[d.Diagnostic],
                *, allow_zero: bool = False) -> PortRanges | None:
    """Merged ranges, or None if any range is invalid (each problem is reported)."""
    ranges, ok = [], True
    for node in nodes:
        low = port(node.low, node.span, diags, allow_zero=allow_zero)
        high = port(node.high, node.span, diags, allow_zero=allow_zero) if node.high != node.low else low
        if low is None or high is None:
            ok = False
        elif low > high:
            diags.append(d.EMPTY_RANGE.at(node.span, low=low, high=high, help=f"write `{high}-{low}`"))
            ok = False
        else:
            ranges.append((low, high))
    return merge_ranges(ranges) if ok else None
