"""What every importer builds: services in the spec's terms, with notes on what they leave out.

An importer reads a configuration and fills :class:`ServiceDraft` objects:
addresses, listeners, pools and one line of spec text per statement, each with
the notes that belong above it.  :func:`render` lays the drafts out as spec
text; :func:`finish` puts that text in canonical layout (``format_tree``) and
refuses to hand out anything that ``lbspec`` cannot load.

Notes come from :class:`ImportContext`: ``lost`` for a setting the spec
language cannot express (a comment starting ``not represented:`` and an LB301
diagnostic pointing into the configuration), ``explain`` for a comment that
says how a setting was read.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import NoReturn, Union

from lbspec import diagnostics as d
from lbspec.ir import Span
from lbspec.loader import read_source
from lbspec.syntax.format import quote

__all__ = [
    "Address", "Note", "Options", "ConfigError", "ImportContext", "BackendDraft", "PoolDraft",
    "Line", "ServiceDraft", "Names", "identifier", "duration", "forward_text", "balance_text",
    "affinity_text", "conntrack_affinity", "health_text", "failover_text", "render", "finish", "line_span", "file_span",
]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NOT_REPRESENTED = "not represented:"


@dataclass(frozen=True)
class Note:
    """One comment line of the output, without its `#`."""

    text: str


@dataclass(frozen=True)
class Options:
    """What the user told `lbspec import` beyond the files.

    ``vips`` replace wildcard listen addresses (`bind *:80`, `listen 80`);
    ``service_name`` names the one service the configuration gives.
    """

    vips: tuple[Address, ...] = ()
    service_name: str | None = None


class ConfigError(d.InputError):
    """A configuration that cannot be read or parsed; ``diagnostics`` holds the LB300s."""

    def __init__(self, diagnostics: list[d.Diagnostic], sources: dict[str, str]):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources)
        first = self.diagnostics[0]
        where = f"{first.span}: " if first.span else ""
        super().__init__(f"{where}{first.code} {first.message}")


def line_span(sources: dict[str, str], file: str, line: int | None) -> Span | None:
    """The span of a whole line (for configurations whose parser gives no columns)."""
    if line is None:
        return None
    lines = sources.get(file, "").split("\n")
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    start = len(text) - len(text.lstrip()) + 1
    return Span(file, line, start, line, max(start + 1, len(text.rstrip()) + 1))


def file_span(sources: dict[str, str], file: str) -> Span:
    """The span of a whole file, for what is about the file rather than one of its lines."""
    lines = sources.get(file, "").split("\n")
    return Span(file, 1, 1, len(lines), len(lines[-1]) + 1)


class ImportContext:
    """The options, the texts read so far and the notes taken, for one `lbspec import` run."""

    def __init__(self, options: Options | None = None):
        self.options = options or Options()
        self.sources: dict[str, str] = {}
        self.diagnostics: list[d.Diagnostic] = []
        self.skipped = False

    def read(self, path: str) -> str:
        """The text of a configuration file, or LB300 saying why it cannot be read."""
        text, reason = read_source(path)
        if text is None:
            self.fail(None, f"cannot read {path}: {reason}")
        self.sources[path] = text
        return text

    def fail(self, span: Span | None, what: str, help: str | None = None,
             label: str | None = None) -> NoReturn:
        raise ConfigError([d.BAD_CONFIG.at(span, what=what, help=help, label=label)], self.sources)

    def lost(self, span: Span | None, setting: str, why: str) -> Note:
        """A setting the spec cannot express: an LB301 and a comment naming it and its line.

        A setting shared by several services (a `defaults` line, an upstream
        used twice) gets a comment in each but one diagnostic.
        """
        setting = _one_line(setting)
        diagnostic = d.NOT_REPRESENTED.at(span, what=f"`{setting}` is not represented: {why}")
        if diagnostic not in self.diagnostics:
            self.diagnostics.append(diagnostic)
        return Note(f"{NOT_REPRESENTED} {_where(span)}`{setting}`: {why}")

    def skip(self, span: Span | None, setting: str, why: str) -> Note:
        """A service the configuration has but the spec cannot express, left out: :meth:`lost`, remembered.

        An import that found services and left them all out has still found
        something, and says what (LB301); one that found none is an LB300.
        """
        self.skipped = True
        return self.lost(span, setting, why)

    def explain(self, span: Span | None, text: str) -> Note:
        """A comment saying how a setting was read."""
        return Note(_where(span) + text)


def _where(span: Span | None) -> str:
    return f"{span.file}:{span.line} " if span is not None and span.line > 0 else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ names --

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def identifier(raw: str, fallback: str = "x") -> str:
    """A spec name for ``raw``: other characters become `_`; a leading digit gets a `_`."""
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")
    if not text:
        text = fallback
    return text if _NAME.fullmatch(text) else "_" + text


class Names:
    """Hands out names that are unique within one namespace (a service's pools and backends)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def take(self, raw: str, fallback: str = "x", prefix: str | None = None) -> str:
        """``raw`` as a name; if taken, ``prefix-raw``; then with a number."""
        base = identifier(raw, fallback)
        candidates = [base] + ([identifier(f"{prefix}-{raw}", fallback)] if prefix else [])
        for candidate in candidates:
            if candidate not in self.taken:
                self.taken.add(candidate)
                return candidate
        number = 2
        while f"{candidates[-1]}-{number}" in self.taken:
            number += 1
        name = f"{candidates[-1]}-{number}"
        self.taken.add(name)
        return name


# ------------------------------------------------------------- statements --

def duration(seconds: float) -> str:
    """A duration in the spec's units: whole seconds as `30s`, else `ms` or `us`."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    millis = round(seconds * 1000, 6)
    if millis.is_integer():
        return f"{int(millis)}ms"
    return f"{max(1, round(seconds * 1_000_000))}us"


def _ports(ports: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in ports)


def forward_text(protocol: str, ports: list[tuple[int, int]] | tuple[tuple[int, int], ...], pool: str,
                 sources: list[str] | tuple[str, ...] = (), target_port: int | None = None) -> str:
    text = f"forward {protocol}" + (f" {_ports(ports)}" if ports else "")
    if sources:
        text += " from " + ", ".join(sources)
    text += f" to {pool}"
    return text + (f" port {target_port}" if target_port is not None else "")


# what an LB that sends a PROXY protocol header ahead of a client's bytes (HAProxy `send-proxy`, nginx
# `proxy_protocol on`) does that a spec cannot say
PROXY_HEADER = ("a PROXY protocol header is sent first: the monitor reads it (and checks it names the client), "
                "the spec cannot ask for it")

# ... and one that takes a PROXY protocol header from its clients (HAProxy `accept-proxy`, nginx `listen ...
# proxy_protocol`)
ACCEPT_PROXY = "clients must send a PROXY protocol header first: the monitor reads it as the name of the client " \
               "behind them"

# what an HTTP proxy does that `mode proxy` does not say, and what it means for monitoring
HTTP_REQUESTS = ("{} balances each HTTP request, so the requests of one client connection may reach different "
                 "servers, and rewrites them ({}); `lbspec monitor` pairs connections by their bytes and finds none "
                 "of these alike: this spec is for `lbspec check`")

# why a balance that hashes what the monitor cannot see (HTTP headers, URIs, variables) is waived
UNSEEN_HASH = "`{}` hashes data a capture does not show: how many keys there are, and so the shares, is chance"

# ... and one that picks among a few servers drawn at random by their load (power of two choices)
LOAD_AWARE = "balanced as `least_conn`, which follows load, not weights, as this does"


def balance_text(algorithm: str, fields: tuple[str, ...] = ()) -> str:
    return f"balance {algorithm}" + (f"({', '.join(fields)})" if fields else "")


def affinity_text(kind: str, timeout: float | None = None) -> str:
    return f"affinity {kind}" + (f" timeout {duration(timeout)}" if timeout is not None else "")


CONNTRACK_UDP_TIMEOUT = 30.0  # `nf_conntrack_udp_timeout`'s default: the least time conntrack keeps an idle UDP flow


def conntrack_affinity(service: ServiceDraft, ctx: ImportContext, why: str) -> Line:
    """`affinity flow` as conntrack keeps flows (``why`` says so): a service that takes UDP keeps a flow only as
    long as conntrack keeps an idle UDP one, far less than the language's default; TCP connections it keeps
    for days."""
    note = ctx.explain(None, why)
    if not any(protocol == "udp" for protocol, _low, _high in service.listens):
        return Line(affinity_text("flow"), [note])
    return Line(affinity_text("flow", CONNTRACK_UDP_TIMEOUT), [note, ctx.explain(
        None, "conntrack forgets an idle UDP flow after `nf_conntrack_udp_timeout` (30s by default; 120s, "
              "`_stream`, once it has seen replies): its next datagram is balanced anew")])


def health_text(kind: str, path: str | None = None, every: float | None = None, timeout: float | None = None,
                fall: int | None = None, rise: int | None = None) -> str:
    text = f"health {kind}"
    if path is not None:
        text += " " + quote(path)
    for name, value in (("every", every), ("timeout", timeout)):
        if value is not None:
            text += f" {name} {duration(value)}"
    for name, count in (("fall", fall), ("rise", rise)):
        if count is not None:
            text += f" {name} {count}"
    return text


def failover_text(targets: list[str], below: int, source: str | None = None) -> str:
    origin = f" from {source}" if source else ""
    return f"failover{origin} to {', '.join(targets)} when healthy < {below}"


# ------------------------------------------------------------------ drafts --

@dataclass
class Line:
    """One statement of spec text and the comments that go above it."""

    text: str
    notes: list[Note] = field(default_factory=list)
    waiver: str = ""  # why the property this statement sets is waived: a `waive` follows it


@dataclass
class BackendDraft:
    name: str
    address: Address
    port: int | None = None
    weight: int = 1
    backup: bool = False
    max_conn: int | None = None
    notes: list[Note] = field(default_factory=list)

    def text(self) -> str:
        address = str(self.address)
        if self.port is not None:
            address = f"[{address}]:{self.port}" if self.address.version == 6 else f"{address}:{self.port}"
        parts = [f"backend {self.name} {address}"]
        if self.weight != 1:
            parts.append(f"weight {self.weight}")
        if self.backup:
            parts.append("backup")
        if self.max_conn is not None:
            parts.append(f"max_conn {self.max_conn}")
        return " ".join(parts)


@dataclass
class PoolDraft:
    name: str
    backends: list[BackendDraft] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


@dataclass
class ServiceDraft:
    """One service as an importer sees it; statements left None are not written."""

    name: str
    notes: list[Note] = field(default_factory=list)
    vips: list[Address] = field(default_factory=list)
    vip_notes: list[Note] = field(default_factory=list)
    listens: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    listen_notes: list[Note] = field(default_factory=list)
    mode: Line | None = None
    pools: list[PoolDraft] = field(default_factory=list)
    forwards: list[Line] = field(default_factory=list)
    otherwise: Line | None = None
    balance: Line | None = None
    affinity: Line | None = None
    health: Line | None = None
    failovers: list[Line] = field(default_factory=list)
    tail: list[Note] = field(default_factory=list)
    # What the configuration really listens on: (address, or None for every address; protocol, low, high).
    bound: list[tuple[Address | None, tuple[str, int | None, int | None]]] = field(default_factory=list)

    def add_vip(self, address: Address) -> None:
        if address not in self.vips:
            self.vips.append(address)

    def bind(self, address: Address | None, protocol: str, low: int | None = None, high: int | None = None) -> None:
        """Records a listener as the configuration has it; :meth:`unbound` compares them with the spec's."""
        self.bound.append((address, (protocol, low, low if high is None else high)))

    def unbound(self) -> str | None:
        """Why the spec's listeners are more than the configuration's (None: they are not), naming the VIP,
        protocol and port pairs the spec says are listened on but no listener of the configuration has.

        The spec listens on every `listen` item at every VIP; a configuration that listens on port 80 of one
        address and 443 of another does not.
        """
        out = []
        for vip in self.vips:
            for item in self.listens:
                if not any(item == bound and address in (None, vip) for address, bound in self.bound):
                    protocol, low, high = item
                    port = "" if low is None else f" {low}" + (f"-{high}" if high != low else "")
                    out.append(f"{vip} {protocol}{port}")
        if not out:
            return None
        shown = ", ".join(out[:4]) + (f" and {len(out) - 4} more" if len(out) > 4 else "")
        return ("not every address listens on every port; the spec listens on each port at each VIP, so it also "
                f"says {shown}")

    def add_listen(self, protocol: str, low: int | None = None, high: int | None = None) -> None:
        item = (protocol, low, low if high is None else high)
        if item not in self.listens:
            self.listens.append(item)

    def pool(self, name: str) -> PoolDraft | None:
        return next((p for p in self.pools if p.name == name), None)


# --------------------------------------------------------------- rendering --

_INDENT = "    "


def _comments(notes: list[Note], depth: int) -> list[str]:
    return [f"{_INDENT * depth}# {_one_line(n.text)}" for n in notes]


def _line(line: Line | None, depth: int = 1) -> list[str]:
    if line is None:
        return []
    waiver = [f"{_INDENT * depth}waive {line.text.split()[0]} {quote(line.waiver)}"] if line.waiver else []
    return [*_comments(line.notes, depth), _INDENT * depth + line.text, *waiver]


def _listen_text(listens: list[tuple[str, int | None, int | None]]) -> str:
    items = []
    for protocol, low, high in listens:
        if low is None:
            items.append(protocol)
        else:
            items.append(f"{protocol} {low}" + (f"-{high}" if high != low else ""))
    return "listen " + ", ".join(items)


def _pool_lines(pool: PoolDraft) -> list[str]:
    lines = [*_comments(pool.notes, 1), f"{_INDENT}pool {pool.name} {{"]
    for backend in pool.backends:
        lines += [*_comments(backend.notes, 2), f"{_INDENT * 2}{backend.text()}"]
    return lines + [f"{_INDENT}}}"]


def _service_lines(service: ServiceDraft) -> list[str]:
    head = [*_comments(service.vip_notes, 1)]
    if service.vips:
        head.append(f"{_INDENT}vip " + ", ".join(str(v) for v in service.vips))
    head += _comments(service.listen_notes, 1)
    if service.listens:
        head.append(_INDENT + _listen_text(service.listens))
    head += _line(service.mode)
    groups = [head, *(_pool_lines(p) for p in service.pools),
              [x for f in service.forwards for x in _line(f)] + _line(service.otherwise),
              _line(service.balance) + _line(service.affinity) + _line(service.health)
              + [x for f in service.failovers for x in _line(f)],
              _comments(service.tail, 1)]
    body: list[str] = []
    for group in (g for g in groups if g):
        body += ([""] if body else []) + group
    return [*_comments(service.notes, 0), f"service {service.name} {{", *body, "}"]


def render(services: list[ServiceDraft], header: list[str]) -> str:
    """Spec text for the drafts: the header comment, then one block per service."""
    blocks = [[f"# {_one_line(line)}" for line in header]] if header else []
    blocks += [_service_lines(s) for s in services]
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def finish(text: str, filename: str) -> str:
    """The canonical layout of ``text``, once lbspec has loaded it without an error.

    An importer only writes what it has checked, so a spec that does not load
    is a bug in lbspec, not in the configuration.
    """
    import lbspec
    from lbspec.syntax.format import format_tree

    try:
        tree = lbspec.parse(text, filename)
        formatted = format_tree(tree, text)
        lbspec.loads(formatted, filename)
    except d.SpecError as error:
        raise d.InternalError(f"the imported spec does not load: {error}") from error
    return formatted
