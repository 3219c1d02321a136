"""Canonical layout of a spec file (``lbspec fmt``).

One statement per line, four-space indents, one blank line between top-level
items, single blank lines inside blocks kept where the author put them, and
every comment kept: a comment on a line of its own stays above the statement
that followed it; a comment after code stays after that code.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbspec import ir

__all__ = ["format_tree", "format_filter", "format_pattern", "quote"]

_INDENT = "    "


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(text: str) -> str:
    """``text`` as a string of the language: escapes for a backslash, a quote, a line feed, carriage return
    and tab, and ``\\xNN`` for any other control character (a check's bytes may hold any)."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c)
                         for c in text) + '"'


# ------------------------------------------------------------------ values --

def _ports(ranges: tuple[ir.PortRange, ...]) -> str:
    return ", ".join(_port(r) for r in ranges)


def _port(r: ir.PortRange) -> str:
    return str(r.low) if r.low == r.high else f"{r.low}-{r.high}"


def _prefix(p: ir.Prefix) -> str:
    return p.address.text + ("" if p.length is None else f"/{p.length}")


def _endpoint(e: ir.Endpoint) -> str:
    if e.port is None:
        return e.address.text
    if ":" in e.address.text:
        return f"[{e.address.text}]:{e.port}"
    return f"{e.address.text}:{e.port}"


def _names(names: tuple[ir.Ident, ...]) -> str:
    return ", ".join(n.name for n in names)


def _traffic(t: ir.Traffic) -> str:
    return t.protocol + (f" {_ports(t.ports)}" if t.ports else "")


def _value(v: ir.FilterValue) -> str:
    if isinstance(v, ir.Prefix):
        return _prefix(v)
    if isinstance(v, ir.PortRange):
        return _port(v)
    if isinstance(v, ir.Ident):
        return v.name
    return "{" + ", ".join(_value(i) for i in v.items) + "}"


# ----------------------------------------------------------------- filters --

def format_filter(f: ir.Filter) -> str:
    if isinstance(f, ir.FilterOr):
        return " or ".join(_grouped(i, (ir.FilterOr,)) for i in f.items)
    if isinstance(f, ir.FilterAnd):
        return " and ".join(_grouped(i, (ir.FilterOr, ir.FilterAnd)) for i in f.items)
    if isinstance(f, ir.FilterNot):
        return "not " + _grouped(f.item, (ir.FilterOr, ir.FilterAnd))
    if isinstance(f, ir.FilterWord):
        return f.word.name
    op = f" {f.op}" if f.op else ""
    return f"{f.field}{op} {_value(f.value)}"


def _grouped(f: ir.Filter, needs_parens: tuple[type, ...]) -> str:
    text = format_filter(f)
    return f"({text})" if isinstance(f, needs_parens) else text


def _scope(scope: ir.Filter | None) -> str:
    return "" if scope is None else f" for {format_filter(scope)}"


# ---------------------------------------------------------------- patterns --

def format_pattern(p: ir.Pattern | ir.OnlyRoute) -> str:
    if isinstance(p, ir.Response):
        unless = " unless no backend healthy" if p.unless_no_backend else ""
        return f"forward every packet{_scope(p.scope)} within {p.within}{unless}"
    if isinstance(p, ir.Absence):
        event = {"down": " to down backend" + (" after detection" if p.after_detection else ""),
                 "undeclared": " to undeclared", "twice": " twice"}.get(p.event) or f" to {_names(p.names)}"
        return f"never forward{_scope(p.scope)}{event}"
    if isinstance(p, ir.Stickiness):
        return f"stick {p.key}{_scope(p.scope)}" + (" while backend healthy" if p.while_healthy else "")
    if isinstance(p, ir.Distribution):
        return f"balance {p.unit}{_scope(p.scope)} within {p.within}"
    if isinstance(p, ir.Integrity):
        return f"preserve {', '.join(p.fields)}{_scope(p.scope)}"
    if isinstance(p, ir.ReversePath):
        return f"reply from vip{_scope(p.scope)}"
    parts = []
    if p.sources:
        parts.append("from " + ", ".join(_prefix(s) for s in p.sources))
    if p.traffic is not None:
        parts.append("to " + _traffic(p.traffic))
    parts.append("only " + _names(p.targets))
    return " ".join(parts)


# -------------------------------------------------------------- statements --

def _statement(s: ir.Statement) -> str:
    if isinstance(s, ir.Vip):
        return "vip " + ", ".join(a.text for a in s.addresses)
    if isinstance(s, ir.Listen):
        return "listen " + ", ".join(" ".join(x for x in (i.protocol, i.ports and _port(i.ports)) if x)
                                     for i in s.items)
    if isinstance(s, ir.Mode):
        if s.kind != "tunnel":
            return f"mode {s.kind}"
        return f"mode tunnel {s.encap}" + (f" port {s.port}" if s.port is not None else "")
    if isinstance(s, ir.Forward):
        sources = " from " + ", ".join(_prefix(p) for p in s.sources) if s.sources else ""
        port = f" port {s.target_port}" if s.target_port is not None else ""
        return f"forward {_traffic(s.traffic)}{sources} to {s.pool.name}{port}"
    if isinstance(s, ir.Otherwise):
        return f"otherwise {s.action}"
    if isinstance(s, ir.Balance):
        return f"balance {s.algorithm}" + (f"({', '.join(s.fields)})" if s.fields else "")
    if isinstance(s, ir.Affinity):
        return f"affinity {s.kind}" + (f" timeout {s.timeout}" if s.timeout else "")
    if isinstance(s, ir.Health):
        path = f" {quote(s.path)}" if s.path is not None else ""
        return f"health {s.kind}{path}" + "".join(f" {x.name} {x.value}" for x in s.settings)
    if isinstance(s, ir.Failover):
        source = f" from {s.source.name}" if s.source else ""
        return f"failover{source} to {_names(s.targets)} when healthy < {s.below}"
    if isinstance(s, ir.Capacity):
        return f"capacity {s.conns} conns" + (f" with {s.down} down" if s.down is not None else "")
    if isinstance(s, ir.Require):
        return f"require {s.property.name}" + (f" within {s.within}" if s.within else "")
    if isinstance(s, ir.Waive):
        reason = f" {quote(s.reason)}" if s.reason is not None else ""
        return f"waive {s.property.name}{_scope(s.scope)}{reason}"
    assert isinstance(s, ir.Assert), s
    return f"assert {format_pattern(s.body)}"


def _backend(b: ir.Backend) -> str:
    options = []
    for o in b.options:
        if isinstance(o, ir.Weight):
            options.append(f"weight {o.value}")
        elif isinstance(o, ir.Backup):
            options.append("backup")
        else:
            options.append(f"max_conn {o.value}")
    return " ".join([f"backend {b.name.name} {_endpoint(b.endpoint)}", *options])


# ------------------------------------------------------------------ layout --

@dataclass
class _Line:
    anchor: int  # the source line this output comes from
    depth: int
    text: str
    kind: str = "code"  # code | open | close
    top_level: bool = False  # the first line of a top-level item
    trailing: str = ""


def _lines(tree: ir.SpecFile) -> list[_Line]:
    out: list[_Line] = []
    for item in tree.items:
        start = len(out)
        if isinstance(item, ir.Include):
            out.append(_Line(item.span.line, 0, f"include {quote(item.path)}"))
        elif isinstance(item, ir.Property):
            out.append(_Line(item.span.line, 0, f"property {item.name.name} {quote(item.title)} {{", "open"))
            out.append(_Line(item.pattern.span.line, 1, format_pattern(item.pattern)))
            out.append(_Line(item.span.end_line, 0, "}", "close"))
        else:
            out.append(_Line(item.span.line, 0, f"service {item.name.name} {{", "open"))
            for statement in item.body:
                out.extend(_statement_lines(statement))
            out.append(_Line(item.span.end_line, 0, "}", "close"))
        out[start].top_level = True
    return out


def _statement_lines(s: ir.Statement) -> list[_Line]:
    if not isinstance(s, ir.Pool):
        return [_Line(s.span.line, 1, _statement(s))]
    return [_Line(s.span.line, 1, f"pool {s.name.name} {{", "open"),
            *(_Line(b.span.line, 2, _backend(b)) for b in s.backends),
            _Line(s.span.end_line, 1, "}", "close")]


def format_tree(tree: ir.SpecFile, source: str) -> str:
    """The canonical text of ``tree``; ``source`` is the text it was parsed from."""
    source_lines = source.split("\n")
    lines = _lines(tree)
    leading = _attach_trailing(lines, tree.comments, source_lines)
    return _Writer(source_lines).write(lines, leading)


def _attach_trailing(lines: list[_Line], comments: tuple[ir.Comment, ...],
                     source_lines: list[str]) -> list[ir.Comment]:
    """Attach comments that follow code to the output line of that code; return the others."""
    leading = []
    for comment in comments:
        before = source_lines[comment.span.line - 1][:comment.span.column - 1]
        if not before.strip() or not lines:
            leading.append(comment)
            continue
        same = [x for x in lines if x.anchor == comment.span.line]
        earlier = [x for x in lines if x.anchor < comment.span.line]
        target = (same or earlier or lines)[-1]
        target.trailing = f"{target.trailing} {comment.text}".strip()
    return sorted(leading, key=lambda c: (c.span.line, c.span.column))


class _Writer:
    """Lays out code lines and leading comments, deciding where blank lines go."""

    def __init__(self, source_lines: list[str]):
        self.source = source_lines
        self.out: list[str] = []
        self.after_open = True
        self.last_line = 0

    def _blank_above(self, line: int) -> bool:
        return 2 <= line <= len(self.source) + 1 and not self.source[line - 2].strip()

    def _emit(self, text: str, depth: int, source_line: int, kind: str, force_blank: bool) -> None:
        if self.out and self.out[-1] != "":
            fresh = source_line > self.last_line and not self.after_open and kind != "close"
            if force_blank or (fresh and self._blank_above(source_line)):
                self.out.append("")
        self.out.append(_INDENT * depth + text)
        self.after_open = kind == "open"
        self.last_line = max(self.last_line, source_line)

    def write(self, lines: list[_Line], leading: list[ir.Comment]) -> str:
        pending = list(reversed(leading))
        for line in lines:
            force = line.top_level
            while pending and pending[-1].span.line < line.anchor:
                comment = pending.pop()
                depth = line.depth + (1 if line.kind == "close" else 0)
                self._emit(comment.text, depth, comment.span.line, "comment", force)
                force = False
            text = f"{line.text}  {line.trailing}" if line.trailing else line.text
            self._emit(text, line.depth, line.anchor, line.kind, force)
        for comment in reversed(pending):
            self._emit(comment.text, 0, comment.span.line, "comment", False)
        return "\n".join(self.out).rstrip("\n") + "\n" if self.out else ""
