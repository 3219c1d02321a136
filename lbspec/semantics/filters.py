"""Filter expressions: from what was written to typed tests over packet fields."""

from __future__ import annotations

from lbspec import diagnostics as d
from lbspec import ir
from lbspec.semantics import values
from lbspec.semantics.model import FLAGS, PROTOCOLS, Always, And, Filter, Not, Or, Test

__all__ = ["resolve_filter", "FILTER_WORDS", "FILTER_FIELDS"]

FILTER_WORDS: dict[str, Filter] = {
    "any": Always(True),
    **{p: Test("proto", (p,)) for p in PROTOCOLS},
    "ipv4": Test("family", (4,)),
    "ipv6": Test("family", (6,)),
    **{f: Test("flags", (f,)) for f in FLAGS},
}
FILTER_FIELDS = ("src", "dst", "sport", "dport", "proto", "family", "flags")

_POSITIVE = (None, "==", "in")
_NEGATIVE = ("!=", "not in")
_ORDER = ("<", "<=", ">", ">=")


def resolve_filter(node: ir.Filter, diags: list[d.Diagnostic]) -> Filter | None:
    """The typed filter, or None when part of it is wrong (each problem is reported)."""
    if isinstance(node, (ir.FilterOr, ir.FilterAnd)):
        items = [resolve_filter(i, diags) for i in node.items]
        if any(i is None for i in items):
            return None
        return (Or if isinstance(node, ir.FilterOr) else And)(tuple(items))
    if isinstance(node, ir.FilterNot):
        item = resolve_filter(node.item, diags)
        return None if item is None else Not(item)
    if isinstance(node, ir.FilterWord):
        return _word(node.word, diags)
    return _test(node, diags)


def _word(word: ir.Ident, diags: list[d.Diagnostic]) -> Filter | None:
    if word.name in FILTER_WORDS:
        return FILTER_WORDS[word.name]
    hint = d.did_you_mean(word.name, [*FILTER_WORDS, *FILTER_FIELDS])
    diags.append(d.FILTER_TYPE.at(
        word.span, problem=f"unknown word `{word.name}` in a filter",
        help=hint or "a filter is a word (tcp, udp, icmp, ipv4, ipv6, syn, any) "
                     "or a test such as `dport 443` or `src in 10.0.0.0/8`"))
    return None


def _flatten(value: ir.FilterValue) -> list[ir.FilterValue]:
    if isinstance(value, ir.ValueSet):
        return [v for item in value.items for v in _flatten(item)]
    return [value]


def _describe(value: ir.FilterValue) -> str:
    if isinstance(value, ir.Prefix):
        return "an address"
    if isinstance(value, ir.PortRange):
        return "a number"
    return f"`{value.name}`" if isinstance(value, ir.Ident) else "a set"


def _mismatch(node: ir.FilterTest, value: ir.FilterValue, wants: str, diags: list[d.Diagnostic]) -> None:
    diags.append(d.FILTER_TYPE.at(value.span, problem=f"`{node.field}` is compared with {_describe(value)}",
                                  label=f"`{node.field}` takes {wants}"))


def _test(node: ir.FilterTest, diags: list[d.Diagnostic]) -> Filter | None:
    op = node.op
    if op in _ORDER and node.field not in ("sport", "dport"):
        return _bad_op(node, diags)
    if op == "has" and node.field != "flags":
        return _bad_op(node, diags)
    if node.field == "flags" and op not in (None, "has"):
        return _bad_op(node, diags)
    items = _flatten(node.value)
    if op in _ORDER:
        return _port_order(node, items, diags)
    found = _values(node, items, diags)
    if found is None:
        return None
    test = Test(node.field, found)
    return Not(test) if op in _NEGATIVE else test


def _bad_op(node: ir.FilterTest, diags: list[d.Diagnostic]) -> None:
    allowed = {"flags": "`has`"}.get(node.field, "`==`, `!=`, `in`, `not in`" + (
        ", `<`, `<=`, `>`, `>=`" if node.field in ("sport", "dport") else ""))
    diags.append(d.FILTER_TYPE.at(node.span, problem=f"`{node.op}` does not apply to `{node.field}`",
                                  help=f"`{node.field}` takes {allowed}"))
    return None


def _values(node: ir.FilterTest, items: list[ir.FilterValue], diags: list[d.Diagnostic]) -> tuple | None:
    field = node.field
    if field in ("src", "dst"):
        wants, kind = "addresses or prefixes", ir.Prefix
    elif field in ("sport", "dport"):
        wants, kind = "ports or port ranges", ir.PortRange
    else:
        wants, kind = {"proto": "tcp, udp or icmp", "family": "ipv4 or ipv6",
                       "flags": "TCP flags (syn, ack, fin, rst, psh, urg, ece, cwr)"}[field], ir.Ident
    wrong = [v for v in items if not isinstance(v, kind)]
    for value in wrong:
        _mismatch(node, value, wants, diags)
    if wrong:
        return None
    if field in ("src", "dst"):
        networks = [values.prefix(v, diags) for v in items]
        return None if None in networks else tuple(networks)
    if field in ("sport", "dport"):
        return values.port_ranges(items, diags, allow_zero=True)
    return _words(node, items, wants, diags)


def _words(node: ir.FilterTest, items: list[ir.Ident], wants: str, diags: list[d.Diagnostic]) -> tuple | None:
    known = {"proto": {p: p for p in PROTOCOLS}, "family": {"ipv4": 4, "ipv6": 6},
             "flags": {f: f for f in FLAGS}}[node.field]
    found = []
    for word in items:
        if word.name not in known:
            diags.append(d.FILTER_TYPE.at(word.span, problem=f"`{word.name}` is not a value of `{node.field}`",
                                          label=f"`{node.field}` takes {wants}",
                                          help=d.did_you_mean(word.name, known)))
            return None
        found.append(known[word.name])
    return tuple(dict.fromkeys(found))


def _port_order(node: ir.FilterTest, items: list[ir.FilterValue], diags: list[d.Diagnostic]) -> Filter | None:
    if len(items) != 1 or not isinstance(items[0], ir.PortRange) or items[0].low != items[0].high:
        diags.append(d.FILTER_TYPE.at(node.value.span, problem=f"`{node.op}` needs a single port",
                                      help=f"write `{node.field} in LOW-HIGH` for a range"))
        return None
    port = values.port(items[0].low, items[0].span, diags, allow_zero=True)
    if port is None:
        return None
    low, high = {"<": (0, port - 1), "<=": (0, port), ">": (port + 1, 65535), ">=": (port, 65535)}[node.op]
    return Test(node.field, ((low, high),) if low <= high else ())
