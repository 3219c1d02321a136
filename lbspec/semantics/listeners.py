"""Which service a packet belongs to: no two services may claim the same VIP, protocol and port.

A load balancer picks the service from the packet's destination alone, so two
services listening on one VIP, protocol and port leave it no way to choose:
such a spec cannot be deployed (LB027).  Two proxies are the exception, and
only a warning: a proxy terminates the connection and may pick the service by
what it reads (an HTTP Host, a TLS server name), which the spec cannot say --
name-based virtual hosts, as `lbspec import nginx` writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lbspec import diagnostics as d
from lbspec.ir import Span
from lbspec.semantics.model import ALL_PORTS, PORTED_PROTOCOLS, Address

__all__ = ["Claim", "conflicts"]


@dataclass(frozen=True, slots=True)
class Claim:
    """One `listen` item of a service: a protocol and an inclusive port range, where it is written."""

    service: str
    protocol: str
    low: int
    high: int
    span: Span


def conflicts(vips: dict[str, dict[Address, Span]], claims: dict[str, list[Claim]],
              proxies: set[str]) -> Iterator[d.Diagnostic]:
    """LB027 for each claim a later service makes on a VIP, protocol and port an earlier one holds.

    ``vips`` and ``claims`` are keyed by service name, in declaration order; ``proxies`` names the
    services in `mode proxy`.
    """
    reported: set[tuple[Span, str]] = set()
    holders: dict[Address, list[str]] = {}
    for later in claims:
        for vip, vip_span in vips.get(later, {}).items():
            for earlier in holders.get(vip, ()):
                for claim, held in _overlaps(claims[later], claims[earlier]):
                    if (claim.span, earlier) not in reported:
                        reported.add((claim.span, earlier))
                        found = _conflict(vip, claim, held, vip_span, vips[earlier][vip])
                        yield found.with_severity(d.Severity.WARNING) if {later, earlier} <= proxies else found
            holders.setdefault(vip, []).append(later)


def _overlaps(claims: list[Claim], held: list[Claim]) -> Iterator[tuple[Claim, Claim]]:
    for claim in claims:
        first = next((h for h in held if h.protocol == claim.protocol
                      and h.low <= claim.high and claim.low <= h.high), None)
        if first is not None:
            yield claim, first


def _conflict(vip: Address, claim: Claim, held: Claim, vip_span: Span, held_vip_span: Span) -> d.Diagnostic:
    listener = f"{vip} {claim.protocol.upper()}{_ports(claim, held)}"
    return d.LISTENER_CONFLICT.at(
        claim.span, listener=listener, other=held.service,
        label=f"service `{claim.service}` listens here",
        notes=[d.Note(f"service `{held.service}` listens here", held.span),
               d.Note(f"service `{held.service}` has VIP {vip} here", held_vip_span),
               d.Note(f"and so does service `{claim.service}`", vip_span)],
        help="give each service its own VIP, or its own ports on the shared VIP")


def _ports(claim: Claim, held: Claim) -> str:
    low, high = max(claim.low, held.low), min(claim.high, held.high)
    if claim.protocol not in PORTED_PROTOCOLS or (low, high) == ALL_PORTS[0]:
        return ""
    return f" port {low}" if low == high else f" ports {low}-{high}"
