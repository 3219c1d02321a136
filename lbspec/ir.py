"""The syntax tree of a spec file: what was written, where.

Every node is a frozen, slotted dataclass with a ``span``.  Spans do not take
part in equality, so two files that say the same thing in different layouts
give equal trees (``lbspec fmt`` relies on this).  Values are kept as written
(addresses as text, quantities as number and unit); checking and converting
them is the job of :mod:`lbspec.semantics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "Span", "Node", "Ident", "Address", "Prefix", "PortRange", "Quantity", "Endpoint",
    "Comment", "Vip", "ListenItem", "Listen", "Mode", "Weight", "Backup", "MaxConn",
    "Backend", "Pool", "Traffic", "Forward", "Otherwise", "Balance", "Affinity",
    "HealthSetting", "Health", "Failover", "Capacity", "Require", "Waive", "OnlyRoute",
    "Assert", "Service", "Property", "Include", "SpecFile", "Response", "Absence",
    "Stickiness", "Distribution", "Integrity", "ReversePath", "FilterOr", "FilterAnd",
    "FilterNot", "FilterWord", "FilterTest", "ValueSet",
    "Pattern", "Filter", "FilterValue", "Statement", "Item", "BackendOption",
]


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of source text: 1-based lines and columns, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NO_SPAN = Span("<none>", 0, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class Node:
    """The base of every node: where it was written (not part of equality)."""

    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


# ------------------------------------------------------------------- values --

@dataclass(frozen=True, slots=True)
class Ident(Node):
    """A name as written: a service, pool, backend or property, or a word in a filter."""

    name: str


@dataclass(frozen=True, slots=True)
class Address(Node):
    """An IPv4 or IPv6 address as written, not yet checked."""

    text: str


@dataclass(frozen=True, slots=True)
class Prefix(Node):
    """An address with an optional prefix length (`10.0.0.0/8`, `2001:db8::1`)."""

    address: Address
    length: int | None = None


@dataclass(frozen=True, slots=True)
class PortRange(Node):
    """`80` (low and high equal) or `8000-8100`."""

    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Quantity(Node):
    """A number and its unit as written: `300s` is ("300", "s"); `5` is ("5", "")."""

    number: str
    unit: str

    def __str__(self) -> str:
        return self.number + self.unit


@dataclass(frozen=True, slots=True)
class Endpoint(Node):
    """A backend's address and optional port: `10.0.0.1:8080`, `[2001:db8::1]:80`, `2001:db8::1`."""

    address: Address
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Comment(Node):
    """A `#` comment, kept so that `lbspec fmt` can write it back."""

    text: str


# ---------------------------------------------------------------- filters --

@dataclass(frozen=True, slots=True)
class ValueSet(Node):
    """`{v, ...}`: a filter value that matches any of its items."""

    items: tuple[FilterValue, ...]


FilterValue = Union[Prefix, PortRange, Ident, ValueSet]


@dataclass(frozen=True, slots=True)
class FilterOr(Node):
    """`F or F ...`"""

    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class FilterAnd(Node):
    """`F and F ...`"""

    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class FilterNot(Node):
    """`not F`"""

    item: Filter


@dataclass(frozen=True, slots=True)
class FilterWord(Node):
    """A bare word: `tcp`, `udp`, `icmp`, `ipv4`, `ipv6`, `syn`, `any`..."""

    word: Ident


@dataclass(frozen=True, slots=True)
class FilterTest(Node):
    """`field [comparison] value`, e.g. `dport in 8000-8100`, `src 10.0.0.0/8`."""

    field: str
    op: str | None
    value: FilterValue


Filter = Union[FilterOr, FilterAnd, FilterNot, FilterWord, FilterTest]


# --------------------------------------------------------------- patterns --

@dataclass(frozen=True, slots=True)
class Response(Node):
    """`forward every packet [for F] within D [unless no backend healthy]`"""

    scope: Filter | None
    within: Quantity
    unless_no_backend: bool = False


@dataclass(frozen=True, slots=True)
class Absence(Node):
    """`never forward [for F] to down backend|to undeclared|to NAMES|twice`"""

    scope: Filter | None
    event: str  # "down" | "undeclared" | "names" | "twice"
    after_detection: bool = False
    names: tuple[Ident, ...] = ()


@dataclass(frozen=True, slots=True)
class Stickiness(Node):
    """`stick flow|client [for F] [while backend healthy]`"""

    key: str
    scope: Filter | None
    while_healthy: bool = False


@dataclass(frozen=True, slots=True)
class Distribution(Node):
    """`balance flows|bytes|packets [for F] within P%`"""

    unit: str
    scope: Filter | None
    within: Quantity


@dataclass(frozen=True, slots=True)
class Integrity(Node):
    """`preserve FIELD, ... [for F]`"""

    fields: tuple[str, ...]
    scope: Filter | None


@dataclass(frozen=True, slots=True)
class ReversePath(Node):
    """`reply from vip [for F]`"""

    scope: Filter | None


Pattern = Union[Response, Absence, Stickiness, Distribution, Integrity, ReversePath]


# ------------------------------------------------------------- statements --

@dataclass(frozen=True, slots=True)
class Vip(Node):
    """`vip ADDRESS, ...`"""

    addresses: tuple[Address, ...]


@dataclass(frozen=True, slots=True)
class ListenItem(Node):
    """One comma-separated item of `listen`: a protocol, a port, or both.

    A port without a protocol belongs to the protocol before it
    (`listen tcp 80, 443` is `tcp 80` and `443`).
    """

    protocol: str | None
    ports: PortRange | None


@dataclass(frozen=True, slots=True)
class Listen(Node):
    """`listen ITEM, ...`"""

    items: tuple[ListenItem, ...]


@dataclass(frozen=True, slots=True)
class Mode(Node):
    """`mode nat|snat|dsr|proxy` or `mode tunnel ipip|gre|gue [port N]`"""

    kind: str  # nat | snat | dsr | proxy | tunnel
    encap: str | None = None  # ipip | gre | gue
    port: int | None = None  # the GUE UDP port


@dataclass(frozen=True, slots=True)
class Weight(Node):
    """`weight N` of a backend."""

    value: int


@dataclass(frozen=True, slots=True)
class Backup(Node):
    """`backup`: a backend that gets traffic only once a `failover` hands it over."""


@dataclass(frozen=True, slots=True)
class MaxConn(Node):
    """`max_conn N` of a backend."""

    value: int


BackendOption = Union[Weight, Backup, MaxConn]


@dataclass(frozen=True, slots=True)
class Backend(Node):
    """`backend NAME ENDPOINT [weight N] [backup] [max_conn N]`"""

    name: Ident
    endpoint: Endpoint
    options: tuple[BackendOption, ...] = ()


@dataclass(frozen=True, slots=True)
class Pool(Node):
    """`pool NAME { backend ... }`"""

    name: Ident
    backends: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class Traffic(Node):
    """`tcp 80, 443`: a protocol (or `any`) and the ports it applies to."""

    protocol: str
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True, slots=True)
class Forward(Node):
    """`forward TRAFFIC [from PREFIXES] to POOL [port N]`"""

    traffic: Traffic
    sources: tuple[Prefix, ...]
    pool: Ident
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class Otherwise(Node):
    """`otherwise drop|reject`: what happens to listened traffic no rule takes."""

    action: str  # drop | reject


@dataclass(frozen=True, slots=True)
class Balance(Node):
    """`balance ALGORITHM [(FIELDS)]`"""

    algorithm: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Affinity(Node):
    """`affinity flow|client|none [timeout D]`"""

    kind: str  # flow | client | none
    timeout: Quantity | None = None


@dataclass(frozen=True, slots=True)
class HealthSetting(Node):
    """One option of `health`: `every D`, `timeout D`, `fall N` or `rise N`."""

    name: str  # every | timeout | fall | rise
    value: Quantity | int


@dataclass(frozen=True, slots=True)
class Health(Node):
    """`health KIND ["PATH"] [OPTIONS]`"""

    kind: str  # tcp | udp | icmp | http | none
    path: str | None = None
    settings: tuple[HealthSetting, ...] = ()


@dataclass(frozen=True, slots=True)
class Failover(Node):
    """`failover [from POOL] to BACKUPS|POOL when healthy < N`"""

    source: Ident | None
    targets: tuple[Ident, ...]
    below: int


@dataclass(frozen=True, slots=True)
class Capacity(Node):
    """`capacity N conns [with K down]`"""

    conns: int
    down: int | None = None
    down_span: Span | None = field(default=None, compare=False, repr=False)  # where K of `with K down` stands


@dataclass(frozen=True, slots=True)
class Require(Node):
    """`require PROPERTY [within D]`"""

    property: Ident
    within: Quantity | None = None


@dataclass(frozen=True, slots=True)
class Waive(Node):
    """`waive PROPERTY [for F] ["REASON"]`"""

    property: Ident
    scope: Filter | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class OnlyRoute(Node):
    """`assert [from PREFIXES] [to PROTO PORTS] only NAMES`"""

    sources: tuple[Prefix, ...]
    traffic: Traffic | None
    targets: tuple[Ident, ...]


@dataclass(frozen=True, slots=True)
class Assert(Node):
    """`assert PATTERN` or `assert ... only NAMES`: a property written in the service."""

    body: Pattern | OnlyRoute


Statement = Union[
    Vip, Listen, Mode, Pool, Forward, Otherwise, Balance, Affinity, Health, Failover,
    Capacity, Require, Waive, Assert,
]


# ------------------------------------------------------------- top level --

@dataclass(frozen=True, slots=True)
class Service(Node):
    """`service NAME { ... }`: its statements in the order written."""

    name: Ident
    body: tuple[Statement, ...]

    def statements(self, kind: type) -> list:
        """The statements of one kind, in the order written."""
        return [s for s in self.body if isinstance(s, kind)]


@dataclass(frozen=True, slots=True)
class Property(Node):
    """`property NAME "TITLE" { PATTERN }`"""

    name: Ident
    title: str
    pattern: Pattern


@dataclass(frozen=True, slots=True)
class Include(Node):
    """`include "PATH"`"""

    path: str


Item = Union[Service, Property, Include]


@dataclass(frozen=True, slots=True)
class SpecFile(Node):
    """One parsed file: its items in order and its comments."""

    file: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = ()
