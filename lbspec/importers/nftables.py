"""`lbspec import nftables`: the DNAT rules of `nft -j list ruleset` as services.

The ruleset is walked from its NAT base chains (prerouting and output), the
way the kernel would take a connection's first packet: matches narrow down the
traffic (destination address, protocol, destination port, sources), `jump`,
`goto` and verdict maps follow chains, and a `dnat` statement ends the walk
with the backends it picks -- one, or several through a `numgen` or `jhash`
map (kube-proxy's nftables mode is a vmap of chains that each `dnat` to one
endpoint).  Conntrack then keeps every connection on the backend its first
packet got.  Filter base chains add what is turned away: kube-proxy rejects
traffic to services without endpoints and drops sources outside a
LoadBalancer's source ranges.  docs/importers.md gives the whole mapping.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import reduce

from lbspec.importers import addresses
from lbspec.importers.draft import (
    Address, BackendDraft, ImportContext, Line, Names, Note, PoolDraft, ServiceDraft, affinity_text, balance_text,
    conntrack_affinity, forward_text, line_span,
)
from lbspec.semantics.model import meet_ranges

__all__ = ["import_nftables"]

_MAX_DEPTH = 32
_PORTED = ("tcp", "udp")
_FIELDS = {"saddr": "src", "daddr": "dst", "sport": "sport", "dport": "dport", "l4proto": "proto",
           "protocol": "proto", "nexthdr": "proto"}


# ------------------------------------------------------------------ traffic --

@dataclass(frozen=True)
class _Match:
    """The traffic a point of the walk sees; None means "not narrowed down"."""

    daddrs: frozenset | None = None
    local: bool = False  # `fib daddr type local`: every address of the host
    protocols: frozenset | None = None
    dports: tuple | None = None  # ((low, high), ...)
    sources: tuple | None = None  # prefixes, as text
    masquerade: str | None = None  # None | "some" | "always": marked for masquerading on the way
    affinity: float | None = None  # client affinity timeout (kube-proxy's affinity sets)
    daddr_set: str | None = None  # the named set the destination addresses came from
    masquerade_by: tuple = ()  # the rules that mark only some of the traffic, as nft text
    extra: tuple = ()  # conditions the spec cannot express, as nft text


@dataclass
class _Step:
    """What a rule did: decisions reached, whether they end the walk, and the traffic that goes on.

    ``carry`` is the traffic for the next rules when the rule changed its state
    (marked it for masquerading, put its client in an affinity set).
    """

    decisions: list = field(default_factory=list)
    ends: bool = False
    conditional: bool = False
    returns: bool = False
    carry: _Match | None = None


def _narrower(match: _Match, before: _Match) -> bool:
    return (match.daddrs, match.protocols, match.dports, match.sources, match.local) != (
        before.daddrs, before.protocols, before.dports, before.sources, before.local)


@dataclass
class _Decision:
    """Where the walk ended for some traffic: a DNAT to backends, or a reject or drop."""

    match: _Match
    action: str  # dnat | reject | drop
    where: str
    point: str = ""  # the rule (or chain) that picks the backend
    label: str = ""  # a name hint: kube-proxy's "namespace/service/protocol/port"
    targets: list = field(default_factory=list)  # (address, port | None, share)
    balance: tuple | None = None  # (algorithm, fields)
    allowed: tuple | None = None  # for drops: the only sources let through (`saddr != S drop`)
    notes: list = field(default_factory=list)


def _ranges_without(ranges: tuple, taken: tuple) -> tuple:
    """The ports of ``ranges`` outside ``taken``."""
    out = list(ranges)
    for low2, high2 in taken:
        out = [piece for low, high in out
               for piece in ((low, min(high, low2 - 1)), (max(low, high2 + 1), high)) if piece[0] <= piece[1]]
    return tuple(out)


def _untranslated(match: _Match | None, earlier: _Match) -> _Match | None:
    """The traffic of ``match`` that a translation of ``earlier`` traffic leaves; None when it leaves none.

    Only a translation of all of ``match``'s addresses and protocols, whatever the source, takes ports away.
    """
    if match is None or earlier.sources is not None or earlier.extra or earlier.local:
        return match
    for key in ("daddrs", "protocols"):
        mine, theirs = getattr(match, key), getattr(earlier, key)
        if theirs is not None and (mine is None or not mine <= theirs):
            return match
    if earlier.dports is None:
        return None
    left = _ranges_without(match.dports or ((1, 65535),), earlier.dports)
    return replace(match, dports=left) if left else None


def _meet(a: _Match, b: _Match) -> bool:
    """Some traffic may match both (sources and other conditions aside)."""
    return _narrow(a, **{k: getattr(b, k) for k in ("daddrs", "protocols", "dports") if getattr(b, k) is not None}) \
        is not None


def _narrow(match: _Match, **changes) -> _Match | None:
    """``match`` further narrowed; None when nothing can match both."""
    for key, value in changes.items():
        current = getattr(match, key)
        if current is None:
            continue
        if key == "dports":
            value = meet_ranges(current, value)
        elif key in ("daddrs", "protocols"):
            value = current & value
        if not value:
            return None
        changes[key] = value
    return replace(match, **changes)


# ------------------------------------------------------------------ ruleset --

class _Ruleset:
    """The tables, chains, sets and maps of one `nft -j list ruleset` document."""

    def __init__(self, document: list[dict]):
        self.chains: dict[tuple, dict] = {}
        self.rules: dict[tuple, list[dict]] = {}
        self.sets: dict[tuple, dict] = {}
        for item in document:
            kind, body = next(iter(item.items()))
            if kind == "chain":
                key = (body["family"], body["table"], body["name"])
                self.chains[key] = body
                self.rules.setdefault(key, [])
            elif kind == "rule":
                self.rules.setdefault((body["family"], body["table"], body["chain"]), []).append(body)
            elif kind in ("set", "map"):
                self.sets[(body["family"], body["table"], body["name"])] = body

    def base_chains(self, kind: str, hooks: tuple[str, ...]) -> list[tuple]:
        found = [k for k, c in self.chains.items() if c.get("type") == kind and c.get("hook") in hooks]
        return sorted(found, key=lambda k: (self.chains[k].get("prio", 0), k))

    def elements(self, table: tuple, reference) -> list:
        """The elements of an anonymous set (a dict) or a named one (`@name`)."""
        if isinstance(reference, dict) and "set" in reference:
            items = reference["set"]
            return items if isinstance(items, list) else [items]
        if isinstance(reference, list):  # flags: `ct state established,related`
            return reference
        if isinstance(reference, str) and reference.startswith("@"):
            found = self.sets.get((*table, reference[1:]))
            return list(found.get("elem", ())) if found else []
        return [reference]

    def named_set(self, table: tuple, reference) -> dict | None:
        if isinstance(reference, str) and reference.startswith("@"):
            return self.sets.get((*table, reference[1:]))
        return None


def _unwrap(element):
    """A set element without its comment or timeout wrapper."""
    while isinstance(element, dict) and "elem" in element:
        element = element["elem"].get("val")
    return element


def describe(expr) -> str:
    """An nft expression from its JSON form, roughly as `nft list ruleset` writes it."""
    if isinstance(expr, (str, int)):
        return str(expr)
    if isinstance(expr, list):
        return ", ".join(describe(e) for e in expr)
    if not isinstance(expr, dict) or not expr:
        return json.dumps(expr)
    kind, body = next(iter(expr.items()))
    if kind == "payload":
        return f"{body.get('protocol', 'th')} {body.get('field', '')}".strip()
    if kind in ("meta", "ct"):
        return f"{kind} {body.get('key', '')}"
    if kind == "fib":
        return f"fib {' . '.join(body.get('flags', []))} {body.get('result', '')}"
    if kind == "prefix":
        return f"{body['addr']}/{body['len']}"
    if kind == "range":
        return f"{describe(body[0])}-{describe(body[1])}"
    if kind == "set":
        return "{ " + describe(body) + " }"
    if kind == "concat":
        return " . ".join(describe(e) for e in body)
    if kind == "match":
        op = "" if body.get("op") in ("==", "in") else f" {body['op']}"
        return f"{describe(body['left'])}{op} {describe(body['right'])}"
    if kind in ("&", "|", "^"):
        return f" {kind} ".join(describe(e) for e in body)
    if kind in ("jump", "goto"):
        return f"{kind} {body['target']}"
    if kind == "numgen":
        return f"numgen {body.get('mode')} mod {body.get('mod')}"
    if kind in ("jhash", "symhash"):
        return f"{kind} {describe(body.get('expr', ''))} mod {body.get('mod')}".replace("  ", " ")
    if kind == "elem":
        return describe(body.get("val"))
    if kind == "map":
        return f"{describe(body.get('key'))} map {describe(body.get('data'))}"
    if kind in ("dnat", "snat", "redirect", "masquerade", "tproxy"):  # `dnat to 10.0.0.1:80`, `redirect to :3128`
        body = body or {}
        target = (describe(body["addr"]) if "addr" in body else "") + (
            f":{describe(body['port'])}" if "port" in body else "")
        return f"{kind} to {target}" if target else kind
    if kind == "queue":
        return "queue" + (f" num {describe(body['num'])}" if isinstance(body, dict) and "num" in body else "")
    return kind if body is None else f"{kind} {json.dumps(body)}"


def _rule_text(rule: dict) -> str:
    return " ".join(describe(e) for e in rule.get("expr", ()))


def _where(rule: dict) -> str:
    return f"{rule['family']} {rule['table']} {rule['chain']} handle {rule.get('handle', '?')}"


def _note(kind: str, rule: dict) -> tuple[str, str, str]:
    """A statement the spec cannot express: its kind, its rule as nft text, and where the rule is."""
    return kind, _rule_text(rule), _where(rule)


# ------------------------------------------------------------------- walker --

class _Walker:
    """Follows a connection's first packet through the chains."""

    def __init__(self, ruleset: _Ruleset, ctx: ImportContext):
        self.ruleset = ruleset
        self.ctx = ctx

    def walk(self, chain: tuple, match: _Match, depth: int = 0) -> tuple[list[_Decision], bool]:
        """The decisions reached from ``chain``, and whether every packet ends there."""
        if depth > _MAX_DEPTH:
            return [], False
        decisions: list[_Decision] = []
        for rule in self.ruleset.rules.get(chain, ()):
            step = self._rule(chain, rule, match, depth)
            decisions += step.decisions
            if step.returns:
                return decisions, False
            if step.ends and not step.conditional:
                return decisions, True
            match = step.carry or match
        return decisions, False

    def _rule(self, chain: tuple, rule: dict, match: _Match, depth: int) -> _Step:
        """What one rule does to the traffic ``match`` describes."""
        table = chain[:2]
        before = match
        conditional = False
        for expr in rule.get("expr", ()):
            kind, body = next(iter(expr.items()))
            if kind == "match":
                if self._affinity_lookup(table, body):
                    return _Step()
                match, unknown = self._match(table, body, match)
                if match is None:
                    return _Step()
                conditional = conditional or unknown or _narrower(match, before)
            elif kind in ("jump", "goto"):
                found, ends = self._follow(table, body["target"], match, depth)
                if found is None:  # a chain that only marks the packet for masquerading
                    kind = "some" if conditional else "always"
                    why = _source_conditions(rule) if conditional else ()
                    carry = replace(before, masquerade=_worse(before.masquerade, kind),
                                    masquerade_by=before.masquerade_by + why)
                    return _Step(carry=carry)
                return _Step(found, kind == "goto" or ends, conditional)
            elif kind == "vmap":  # a dispatch lets unlisted traffic go on; a spread takes all of it
                return _Step(self._vmap(table, rule, body, match, depth), True,
                             conditional or not _spreads(body["key"]))
            elif kind == "dnat":
                lookup = body.get("addr") if isinstance(body.get("addr"), dict) else {}
                dispatch = "map" in lookup and not _spreads(lookup["map"]["key"])
                return _Step(self._dnat(table, rule, body, match), True, conditional or dispatch)
            elif kind in ("reject", "drop"):
                return _Step([self._turned_away(kind, rule, match)], True, conditional)
            elif kind == "set" and body.get("op") in ("update", "add"):
                updated = self._affinity_update(table, body, before)
                return _Step(carry=None if conditional else updated)
            elif kind in ("redirect", "masquerade", "snat", "tproxy", "queue"):
                return _Step([_Decision(match, "other", _where(rule), notes=[_note(kind, rule)])], True, conditional)
            elif kind == "accept":
                return _Step([], True, conditional)
            elif kind == "return":
                return _Step(returns=not conditional)
        return _Step()

    # --- matches
    def _match(self, table: tuple, body: dict, match: _Match) -> tuple[_Match | None, bool]:
        left, right, op = body["left"], body["right"], body.get("op", "==")
        text = describe({"match": body})
        if "payload" in left and op in ("==", "in"):
            return self._payload(table, left["payload"], right, match, text)
        if "meta" in left and left["meta"].get("key") in ("l4proto", "nfproto", "protocol") and op in ("==", "in"):
            return self._protocols(table, left["meta"]["key"], right, match, text)
        if "ct" in left and left["ct"].get("key") == "state":  # the first packet of a connection is `new`
            states = {str(_unwrap(v)) for v in self.ruleset.elements(table, right)}
            new = "new" in states if op in ("==", "in") else "new" not in states
            return (match if new else None), False
        if "fib" in left and right == "local" and "daddr" in left["fib"].get("flags", ()):
            return (match if op == "!=" else replace(match, local=True)), op == "!="
        if "payload" in left and left["payload"].get("field") == "saddr":
            return replace(match, extra=match.extra + (text,)), True
        return replace(match, extra=match.extra + (text,)), True

    def _payload(self, table: tuple, payload: dict, right, match: _Match, text: str) -> tuple[_Match | None, bool]:
        field_name, protocol = payload.get("field"), payload.get("protocol")
        values = [_unwrap(v) for v in self.ruleset.elements(table, right)]
        if field_name == "daddr" and protocol in ("ip", "ip6"):
            addresses = {_address(v) for v in values}
            if None in addresses or not addresses:
                return replace(match, extra=match.extra + (text,)), True
            narrowed = _narrow(match, daddrs=frozenset(addresses))
            if narrowed is not None and isinstance(right, str) and right.startswith("@"):
                narrowed = replace(narrowed, daddr_set=right[1:])
            return narrowed, False
        if field_name == "dport":
            ports = tuple(p for p in (_port_range(v) for v in values) if p)
            narrowed = _narrow(match, dports=ports)
            if protocol in _PORTED and narrowed is not None:
                narrowed = _narrow(narrowed, protocols=frozenset({protocol}))
            return narrowed, False
        if field_name == "saddr" and protocol in ("ip", "ip6"):
            prefixes = tuple(p for p in (_prefix(v) for v in values) if p)
            if len(prefixes) != len(values):
                return replace(match, extra=match.extra + (text,)), True
            return replace(match, sources=prefixes), True
        if field_name == "protocol" and protocol in ("ip", "ip6") or field_name == "nexthdr":
            return self._protocols(table, "protocol", right, match, text)
        return replace(match, extra=match.extra + (text,)), True

    def _protocols(self, table: tuple, key: str, right, match: _Match, text: str) -> tuple[_Match | None, bool]:
        if key == "nfproto":
            return match, False
        values = {str(_unwrap(v)) for v in self.ruleset.elements(table, right)}
        return _narrow(match, protocols=frozenset(values)), False

    def _affinity_lookup(self, table: tuple, body: dict) -> bool:
        """`ip saddr @affinity-X goto endpoint-X`: kube-proxy's ClientIP affinity, read at the update."""
        found = self.ruleset.named_set(table, body.get("right"))
        return found is not None and "timeout" in found.get("flags", ()) and "saddr" in json.dumps(body["left"])

    def _affinity_update(self, table: tuple, body: dict, match: _Match) -> _Match:
        found = self.ruleset.named_set(table, body.get("set"))
        if found is not None and "saddr" in json.dumps(body.get("elem")) and found.get("timeout"):
            return replace(match, affinity=float(found["timeout"]))
        return match

    # --- chains
    def _follow(self, table: tuple, target: str, match: _Match,
                depth: int) -> tuple[list[_Decision] | None, bool]:
        chain = (*table, target)
        if self._marks_only(chain):
            return None, False
        found, ends = self.walk(chain, match, depth + 1)
        for decision in found:
            decision.label = decision.label or _label(target)
        return found, ends

    def _marks_only(self, chain: tuple) -> bool:
        rules = self.ruleset.rules.get(chain, ())
        return bool(rules) and all(
            all(next(iter(e)) in ("mangle", "counter", "comment") for e in r.get("expr", ())) for r in rules)

    def _vmap(self, table: tuple, rule: dict, body: dict, match: _Match, depth: int) -> list[_Decision]:
        key = body["key"]
        elements = [e for e in self.ruleset.elements(table, body["data"]) if isinstance(e, list) and len(e) == 2]
        if _spreads(key):
            return self._spread_chains(table, rule, key, elements, match, depth)
        parts = key["concat"] if "concat" in key else [key]
        decisions = []
        for value, verdict in elements:
            values = _unwrap(value)
            values = values["concat"] if isinstance(values, dict) and "concat" in values else [values]
            narrowed = self._narrow_by(parts, values, match)
            if narrowed is None:
                continue
            found = self._verdict(table, rule, verdict, narrowed, depth)
            for decision in found:
                decision.label = decision.label or _comment_label(value)
            decisions += found
        return decisions

    def _narrow_by(self, parts: list, values: list, match: _Match) -> _Match | None:
        for part, value in zip(parts, values):
            if "payload" in part and part["payload"].get("field") == "daddr":
                address = _address(value)
                match = None if address is None else _narrow(match, daddrs=frozenset({address}))
            elif "payload" in part and part["payload"].get("field") == "dport":
                ports = _port_range(value)
                match = None if ports is None else _narrow(match, dports=(ports,))
                if match is not None and part["payload"].get("protocol") in _PORTED:  # `tcp dport`: TCP only
                    match = _narrow(match, protocols=frozenset({part["payload"]["protocol"]}))
            elif "meta" in part and part["meta"].get("key") == "l4proto":
                match = _narrow(match, protocols=frozenset({str(value)}))
            else:
                match = replace(match, extra=match.extra + (f"{describe(part)} {describe(value)}",))
            if match is None:
                return None
        return match

    def _verdict(self, table: tuple, rule: dict, verdict, match: _Match, depth: int) -> list[_Decision]:
        if not isinstance(verdict, dict):
            return []
        kind, body = next(iter(verdict.items()))
        if kind in ("jump", "goto"):
            found, _ = self._follow(table, body["target"], match, depth)
            return found or []
        if kind in ("drop", "reject"):
            return [self._turned_away(kind, rule, match)]
        return []

    def _spread_chains(self, table: tuple, rule: dict, key: dict, elements: list, match: _Match,
                       depth: int) -> list[_Decision]:
        """`numgen random mod N vmap { 0 : goto endpoint-A, ... }`: one decision, several backends."""
        decision = _Decision(match, "dnat", _where(rule), point=_where(rule), balance=_spreading(key))
        for value, verdict in elements:
            share = _share(_unwrap(value))
            found = self._verdict(table, rule, verdict, match, depth)
            for sub in found:
                decision.targets += [(a, p, s * share) for a, p, s in sub.targets]
                decision.notes += sub.notes
                decision.label = decision.label or sub.label
                decision.match = replace(decision.match, masquerade=_worse(decision.match.masquerade,
                                                                          sub.match.masquerade),
                                         affinity=sub.match.affinity or decision.match.affinity,
                                         masquerade_by=tuple(dict.fromkeys(decision.match.masquerade_by
                                                                           + sub.match.masquerade_by)))
        return [decision] if decision.targets else []

    # --- statements
    def _dnat(self, table: tuple, rule: dict, body: dict, match: _Match) -> list[_Decision]:
        address, port = body.get("addr"), body.get("port")
        if isinstance(address, dict) and "map" in address:
            return self._dnat_map(table, rule, address["map"], port, match)
        target = _target(address, port)
        if target is None:
            return [_Decision(match, "other", _where(rule), notes=[_note("dnat", rule)])]
        return [_Decision(match, "dnat", _where(rule), point=_where(rule), targets=[(*target, 1)])]

    def _dnat_map(self, table: tuple, rule: dict, lookup: dict, port, match: _Match) -> list[_Decision]:
        key = lookup["key"]
        elements = [e for e in self.ruleset.elements(table, lookup["data"]) if isinstance(e, list) and len(e) == 2]
        if _spreads(key):
            decision = _Decision(match, "dnat", _where(rule), point=_where(rule), balance=_spreading(key))
            for value, data in elements:
                target = _target(data, port)
                if target is not None:
                    decision.targets.append((*target, _share(_unwrap(value))))
            return [decision] if decision.targets else []
        parts = key["concat"] if "concat" in key else [key]
        decisions = []
        for value, data in elements:
            values = _unwrap(value)
            values = values["concat"] if isinstance(values, dict) and "concat" in values else [values]
            narrowed = self._narrow_by(parts, values, match)
            target = _target(data, port)
            if narrowed is not None and target is not None:
                where = f"{_where(rule)} element {describe(value)}"
                decisions.append(_Decision(narrowed, "dnat", where, point=where, targets=[(*target, 1)]))
        return decisions

    def _turned_away(self, kind: str, rule: dict, match: _Match) -> _Decision:
        allowed = None
        negated = [e["match"] for e in rule.get("expr", ()) if "match" in e and e["match"].get("op") == "!="
                   and e["match"]["left"].get("payload", {}).get("field") == "saddr"]
        if negated and kind == "drop":
            values = self.ruleset.elements(rule_table(rule), negated[0]["right"])
            prefixes = tuple(p for p in (_prefix(_unwrap(v)) for v in values) if p)
            allowed = prefixes if len(prefixes) == len(values) else None
            match = replace(match, extra=tuple(x for x in match.extra if "saddr" not in x))
        return _Decision(match, kind, _where(rule), allowed=allowed)


def _source_conditions(rule: dict) -> tuple[str, ...]:
    """The conditions of a rule beyond destination, protocol and port, as nft text."""
    found = []
    for expr in rule.get("expr", ()):
        if "match" in expr:
            text = describe(expr)
            if not re.match(r"(ip6? daddr|(tcp|udp|th) dport|meta l4proto) ", text):
                found.append(text)
    return tuple(found)


def rule_table(rule: dict) -> tuple:
    return rule["family"], rule["table"]


def _worse(a: str | None, b: str | None) -> str | None:
    order = {None: 0, "some": 1, "always": 2}
    return a if order[a] >= order[b] else b


def _spreads(key: dict) -> bool:
    return any(k in key for k in ("numgen", "jhash", "symhash"))


def _spreading(key: dict) -> tuple:
    if "numgen" in key:
        return ("round_robin", ()) if key["numgen"].get("mode") == "inc" else ("random", ())
    body = key.get("jhash") or key.get("symhash") or {}
    if "symhash" in key:
        return "hash", ("src", "dst", "sport", "dport", "proto")
    expr = body.get("expr", {})
    parts = expr["concat"] if isinstance(expr, dict) and "concat" in expr else [expr]
    fields = []
    for part in parts:
        inner = part.get("payload") or part.get("meta") or {}
        name = _FIELDS.get(inner.get("field") or inner.get("key") or "")
        if name and name not in fields:
            fields.append(name)
    return "hash", tuple(fields)


def _comment_label(element) -> str:
    """kube-proxy comments map elements with "namespace/service:port"."""
    if isinstance(element, dict) and "elem" in element:
        comment = str(element["elem"].get("comment", ""))
        return comment.replace(":", "/") if "/" in comment else ""
    return ""


def _share(value) -> int:
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return int(high) - int(low) + 1
    return 1


def _address(value) -> Address | None:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        return None


def _prefix(value) -> str | None:
    if isinstance(value, dict) and "prefix" in value:
        value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
    try:
        network = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return None
    return addresses.prefix_text(network)


def _port_range(value) -> tuple[int, int] | None:
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return int(low), int(high)
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value), int(value)
    return None


def _target(data, port) -> tuple | None:
    if isinstance(data, dict) and "concat" in data:
        data, port = data["concat"][0], data["concat"][1]
    address = _address(data)
    if address is None:
        return None
    return address, (int(port) if isinstance(port, (int, str)) and str(port).isdigit() else None)


_KUBE = re.compile(r"^(?:service|external|endpoint)-[A-Z0-9]+-(?P<label>[^_]+)")


def _label(chain: str) -> str:
    found = _KUBE.match(chain)
    return found.group("label") if found else ""


# ----------------------------------------------------------------- importer --

def import_nftables(paths: list[str], ctx: ImportContext) -> tuple[list[ServiceDraft], list[Note]]:
    """Services for the DNAT rules of `nft -j list ruleset` documents."""
    services: list[ServiceDraft] = []
    header: list[Note] = []
    names = Names()
    for path in paths:
        ruleset = _Ruleset(_document(path, ctx))
        services += _Services(ruleset, path, ctx, names, header).build()
    return services, header


def _document(path: str, ctx: ImportContext) -> list[dict]:
    text = ctx.read(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        span = line_span(ctx.sources, path, error.lineno)
        ctx.fail(span, f"not JSON: {error.msg} (line {error.lineno}, column {error.colno})",
                 help="give the output of `nft -j list ruleset`")
    if not isinstance(data, dict) or not isinstance(data.get("nftables"), list):
        ctx.fail(line_span(ctx.sources, path, 1), "not an nftables ruleset: expected {\"nftables\": [...]}",
                 help="give the output of `nft -j list ruleset`")
    items = [i for i in data["nftables"] if isinstance(i, dict) and len(i) == 1]
    for item in items:
        kind, body = next(iter(item.items()))
        if kind in ("rule", "chain", "set", "map") and not _well_formed(kind, body):
            ctx.fail(line_span(ctx.sources, path, 1), f"a malformed {kind}: {json.dumps(body)[:120]}",
                     help="give the output of `nft -j list ruleset`")
    return items


def _well_formed(kind: str, body) -> bool:
    if not isinstance(body, dict) or not all(k in body for k in ("family", "table")):
        return False
    if kind == "rule":
        return isinstance(body.get("chain"), str) and isinstance(body.get("expr", []), list) and all(
            isinstance(e, dict) and len(e) == 1 for e in body.get("expr", []))
    return isinstance(body.get("name"), str)


class _Services:
    """Groups the walk's decisions into services: one per set of VIPs and way of translating."""

    def __init__(self, ruleset: _Ruleset, path: str, ctx: ImportContext, names: Names, header: list[Note]):
        self.ruleset = ruleset
        self.path = path
        self.ctx = ctx
        self.names = names
        self.header = header
        self.walker = _Walker(ruleset, ctx)

    def build(self) -> list[ServiceDraft]:
        dnats, others = self._walk_nat()
        turned_away = self._walk_filter()
        groups: dict[tuple, list[_Decision]] = {}
        claims: list[tuple] = []  # (address, protocol, low, high, group, where), in the order rules are met
        for decision in dnats:
            vips = self._unclaimed(decision, self._vips(decision), claims)
            if vips:
                key = (vips, decision.match.masquerade)
                groups.setdefault(key, []).append(decision)
                claims += [(a, p, low, high, key, decision.where) for a in vips
                           for p, low, high in _listens(decision.match)]
        postrouting = self._postrouting()
        services = [self._service(vips, masq, found, postrouting, turned_away)
                    for (vips, masq), found in groups.items()]
        services += self._closed(turned_away, {v for vips, _ in groups for v in vips})
        for decision in others:
            for kind, text, where in decision.notes:
                self.header.append(self.ctx.skip(None, text, f"a `{kind}` of `{where}` the spec cannot express: "
                                                             "not imported"))
        return services

    def _unclaimed(self, decision: _Decision, vips: frozenset, claims: list[tuple]) -> frozenset:
        """The VIPs whose traffic no earlier rule of another service has already translated.

        The first DNAT a connection meets decides; a later rule for the same address, protocol and port only
        gets what the earlier one lets through (other sources, say), which a service of its own cannot say.
        """
        key = (vips, decision.match.masquerade)
        taken = {}
        for protocol, low, high in _listens(decision.match):
            for address, other, low2, high2, group, where in claims:
                if address in vips and group != key and other == protocol and address not in taken and (
                        low is None or low2 is None or max(low, low2) <= min(high, high2)):
                    taken[address] = where
        for address, where in taken.items():
            self.header.append(self.ctx.lost(None, f"{decision.where} for {address}", f"`{where}` comes first for "
                                                                                      "this address and port: this "
                                                                                      "rule is left out for it"))
        return frozenset(v for v in vips if v not in taken)

    # --- walking
    def _walk_nat(self) -> tuple[list[_Decision], list[_Decision]]:
        """The translations of the NAT base chains of each hook, in the order of their priorities.

        A connection the first chain translates is not translated again: the kernel stops at the first NAT
        chain of a hook that sets up a translation, so a later chain only gets the traffic the earlier ones
        let through untranslated.
        """
        seen, dnats, others = set(), [], []
        for hook in ("prerouting", "output"):
            earlier: list[_Match] = []  # the traffic the hook's chains so far translate, whatever else it is
            walked = [(chain, self.walker.walk(chain, _Match())[0])
                      for chain in self.ruleset.base_chains("nat", (hook,))]
            self._ties(hook, walked)
            for chain, found in walked:
                translated = [d.match for d in found if d.action in ("dnat", "other")]
                for decision in found:
                    decision.match = reduce(_untranslated, earlier, decision.match)
                    key = (decision.point, decision.match, decision.action)
                    if decision.match is None or key in seen:
                        continue
                    seen.add(key)
                    (dnats if decision.action == "dnat" else others).append(decision)
                earlier += translated
        return dnats, [d for d in others if d.action == "other"]

    def _ties(self, hook: str, walked: list[tuple[tuple, list[_Decision]]]) -> None:
        """NAT chains of a hook with the same priority whose decisions can meet, one of them a translation.

        The kernel runs chains of equal priority newest first (each is put before those of its priority already
        registered), and the first to translate a connection decides; the ruleset does not say which chain was
        registered last (its listing is by table, then chain, in the order they were made), so the importer's
        order (by table and chain name) may not be the kernel's.
        """
        for index, (chain, found) in enumerate(walked):
            for other, found2 in walked[index + 1:]:
                if (self.ruleset.chains[chain].get("prio", 0) != self.ruleset.chains[other].get("prio", 0)
                        or "inet" not in (chain[0], other[0]) and chain[0] != other[0]):
                    continue
                if any({a.action, b.action} & {"dnat", "other"} and _meet(a.match, b.match)
                       for a in found for b in found2):
                    self.header.append(self.ctx.lost(
                        None, f"{' '.join(chain)} and {' '.join(other)}",
                        f"NAT chains of the {hook} hook with the same priority: the kernel runs the one registered "
                        "last first, which the ruleset does not record; taken in the order of their table and chain "
                        "names"))

    def _walk_filter(self) -> list[_Decision]:
        out = []
        for chain in self.ruleset.base_chains("filter", ("prerouting", "input", "forward", "output")):
            found, _ = self.walker.walk(chain, _Match())
            out += [d for d in found if d.action in ("reject", "drop") and d.match.daddrs]
        return out

    def _postrouting(self) -> list[tuple[str, tuple]]:
        """The masquerade (or snat) rules of postrouting: ("always" | "marked" | "daddr" | "interface" | "some",
        prefixes or interface names)."""
        found = []
        for chain in self.ruleset.base_chains("nat", ("postrouting",)):
            found += self._masquerades(chain, False, 0)
        return found

    def _masquerades(self, chain: tuple, marked: bool, depth: int) -> list[tuple[str, tuple]]:
        found: list[tuple[str, tuple]] = []
        for rule in self.ruleset.rules.get(chain, ()) if depth < _MAX_DEPTH else ():
            exprs = rule.get("expr", ())
            kinds = [next(iter(e)) for e in exprs]
            conditions = [e["match"] for e in exprs if "match" in e]
            on_mark = any("mark" in describe(c["left"]) for c in conditions)
            if "return" in kinds and on_mark:
                marked = True
            elif "masquerade" in kinds or "snat" in kinds:
                found.append(self._masquerade_kind(rule, conditions, marked or on_mark))
            elif "jump" in kinds or "goto" in kinds:
                target = next(e.get("jump") or e.get("goto") for e in exprs if "jump" in e or "goto" in e)
                inner = self._masquerades((*chain[:2], target["target"]), marked, depth + 1)
                found += [("some", ()) if conditions and k in ("always", "daddr", "interface") else (k, p)
                          for k, p in inner]
        return found

    def _masquerade_kind(self, rule: dict, conditions: list[dict], marked: bool) -> tuple[str, tuple]:
        if marked:
            return "marked", ()
        if not conditions:
            return "always", ()
        # `oifname "eth1" masquerade`: what leaves through an interface (beside a destination, it says no more)
        interfaces = [c for c in conditions if describe(c["left"]) in ("meta oifname", "meta oif")
                      and c.get("op") == "==" and isinstance(c["right"], str)]
        conditions = [c for c in conditions if c not in interfaces]
        if not conditions:
            return "interface", tuple(c["right"] for c in interfaces)
        prefixes = []
        for condition in conditions:
            if condition["left"].get("payload", {}).get("field") != "daddr" or condition.get("op") not in ("==", "in"):
                return "some", ()
            values = self.ruleset.elements(rule_table(rule), condition["right"])
            prefixes += [_prefix(_unwrap(v)) for v in values]
        return ("daddr", tuple(prefixes)) if prefixes and None not in prefixes else ("some", ())

    def _vips(self, decision: _Decision) -> frozenset:
        match = decision.match
        if match.daddrs:
            return frozenset(match.daddrs)
        where = f"`{decision.where}`"
        if self.ctx.options.vips:
            return frozenset(self.ctx.options.vips)
        why = ("NAT for every address of the host (`fib daddr type local`)" if match.local
               else "NAT for any destination address")
        self.header.append(self.ctx.skip(None, where,
                                         f"{why}: give the addresses clients use with --vip; not imported"))
        return frozenset()

    # --- services
    def _service(self, vips: frozenset, masq: str | None, decisions: list[_Decision],
                 postrouting: list[tuple[str, tuple]], turned_away: list[_Decision]) -> ServiceDraft:
        label = next((d.label for d in decisions if d.label), "")
        daddr_set = next((d.match.daddr_set for d in decisions if d.match.daddr_set), None)
        service = ServiceDraft(self.names.take(_service_name(label, vips, masq, daddr_set), "service"))
        for vip in sorted(vips, key=lambda a: (a.version, a)):
            service.add_vip(vip)
        for decision in decisions:
            for protocol, low, high in _listens(decision.match):
                service.add_listen(protocol, low, high)
        service.mode = self._mode(masq, postrouting, decisions)
        allowed = self._firewall(service, vips, turned_away)
        pools = _Pools(service, self.ctx)
        for decision in decisions:
            pools.add(decision, allowed)
        self._behaviour(service, decisions)
        if service.otherwise is None:
            self._rejects(service, vips, turned_away)
        for decision in decisions:
            for condition in decision.match.extra:
                service.tail.append(self.ctx.lost(None, condition, f"a condition of `{decision.where}` the spec "
                                                                   "cannot express"))
            for kind, text, where in decision.notes:
                service.tail.append(self.ctx.lost(None, text, f"a `{kind}` of `{where}` the spec cannot express"))
        return service

    def _mode(self, masq: str | None, postrouting: list[tuple[str, tuple]], decisions: list[_Decision]) -> Line:
        where = decisions[0].where
        targets = [a for d in decisions for a, _, _ in d.targets]

        def covered(prefixes: tuple) -> list[bool]:
            return [any(t in ipaddress.ip_network(p) for p in prefixes if ipaddress.ip_network(p).version == t.version)
                    for t in targets]

        kinds = {k for k, _ in postrouting}
        by_prefix = [covered(p) for k, p in postrouting if k == "daddr"]
        every = bool(by_prefix) and all(any(c) for c in zip(*by_prefix))  # each backend, by one rule or another
        if "always" in kinds or ("marked" in kinds and masq == "always") or every:
            return Line("mode snat", [self.ctx.explain(None, f"`{where}` and a postrouting `masquerade`: the "
                                                             "backend sees this host as the client")])
        if "interface" in kinds:
            # a ruleset does not say which interface reaches the backends.  Taken for theirs: an LB that does
            # not masquerade to them is judged by `mode snat` without a false verdict, and one that does would
            # have every packet a mutation under `mode nat`
            names = ", ".join(dict.fromkeys(n for k, p in postrouting if k == "interface" for n in p))
            return Line("mode snat", [self.ctx.explain(None, f"`{where}` and a postrouting `masquerade` of what "
                                                             f"leaves through {names}: taken for the way to the "
                                                             "backends, which then see this host as the client "
                                                             "(if they are reached another way, say `mode nat`)")])
        if "marked" in kinds and masq == "some":
            reasons = list(dict.fromkeys(r for d in decisions for r in d.match.masquerade_by))
            setting = "masquerade when " + " or ".join(reasons)
            return Line("mode nat", [self.ctx.lost(None, setting, "this traffic is also source-NATed "
                                                                  "(masqueraded); the spec says `nat` for all of it")])
        if "some" in kinds or any(any(c) for c in by_prefix):
            return Line("mode nat", [self.ctx.lost(None, f"masquerade ({where})", "some of this traffic is also "
                                                   "source-NATed (masqueraded); the spec says `nat` for all of it")])
        return Line("mode nat", [self.ctx.explain(None, f"`{where}`: destination NAT; replies go back through "
                                                        "this host")])

    def _behaviour(self, service: ServiceDraft, decisions: list[_Decision]) -> None:
        spreads = {d.balance for d in decisions if d.balance and len(d.targets) > 1}
        if spreads:
            algorithm, fields = sorted(spreads)[0]
            notes = [self.ctx.lost(None, f"balance {a}", "a service has one balance") for a, _ in sorted(spreads)[1:]]
            if algorithm == "hash":
                notes.append(self.ctx.explain(None, "`jhash ... mod N`: a hash modulo the number of backends"))
            service.balance = Line(balance_text(algorithm, fields), notes)
        timeouts = {d.match.affinity for d in decisions}
        if timeouts == {None}:
            service.affinity = conntrack_affinity(service, self.ctx, "conntrack keeps each connection on the backend "
                                                                     "its first packet got")
        else:
            timeout = max(t for t in timeouts if t is not None)
            notes = [self.ctx.explain(None, "a client stays on its backend while its entry in the affinity set "
                                            "lives (kube-proxy's sessionAffinity: ClientIP)")]
            if None in timeouts:
                notes.append(self.ctx.lost(None, "affinity sets", "only some of this traffic has client affinity"))
            service.affinity = Line(affinity_text("client", timeout), notes)
        service.health = Line("health none", [self.ctx.explain(None, "nftables does not check backends; a "
                                                                     "manager (kube-proxy: endpoint readiness) may "
                                                                     "rewrite the rules, which the spec cannot say")])

    def _firewall(self, service: ServiceDraft, vips: frozenset, turned_away: list[_Decision]) -> list[str] | None:
        """The sources a `saddr != S drop` rule for every VIP of the service lets through."""
        firewalls = [d for d in turned_away if d.allowed is not None and d.match.daddrs and d.match.daddrs & vips]
        if not firewalls:
            return None
        families = {v.version for v in vips}
        allowed = sorted({p for d in firewalls for p in d.allowed if ipaddress.ip_network(p).version in families})
        if not all(vips <= d.match.daddrs for d in firewalls) or not allowed:
            service.tail.append(self.ctx.lost(None, firewalls[0].where, "drops some sources for some of the "
                                                                        "VIPs only"))
            return None
        service.otherwise = Line("otherwise drop", [self.ctx.explain(
            None, f"`{firewalls[0].where}`: only these sources get through (kube-proxy: LoadBalancerSourceRanges)")])
        return allowed

    def _rejects(self, service: ServiceDraft, vips: frozenset, turned_away: list[_Decision]) -> None:
        rejects = [d for d in turned_away if d.allowed is None and d.match.daddrs and vips <= d.match.daddrs
                   and not d.match.extra and not d.match.dports]
        if rejects:
            action = "reject" if any(d.action == "reject" for d in rejects) else "drop"
            service.otherwise = Line(f"otherwise {action}", [self.ctx.explain(
                None, f"`{rejects[0].where}`: other traffic to these VIPs is {action}ed")])

    def _closed(self, turned_away: list[_Decision], served: set) -> list[ServiceDraft]:
        """Services with no backends: traffic to a VIP and port that is only ever rejected."""
        groups: dict[frozenset, list[_Decision]] = {}
        for decision in turned_away:
            match = decision.match
            if decision.allowed is None and match.dports and match.protocols and not (match.daddrs & served):
                groups.setdefault(frozenset(match.daddrs), []).append(decision)
        out = []
        for vips, decisions in groups.items():
            service = ServiceDraft(self.names.take(_service_name(decisions[0].label, vips, None), "service"))
            for vip in sorted(vips, key=lambda a: (a.version, a)):
                service.add_vip(vip)
            for decision in decisions:
                for protocol, low, high in _listens(decision.match):
                    service.add_listen(protocol, low, high)
            action = "reject" if any(d.action == "reject" for d in decisions) else "drop"
            service.otherwise = Line(f"otherwise {action}", [self.ctx.explain(
                None, f"`{decisions[0].where}`: no backends; this traffic is {action}ed")])
            out.append(service)
        return out


def _listens(match: _Match) -> list[tuple[str, int | None, int | None]]:
    protocols = sorted(match.protocols or {"tcp", "udp"})
    out = []
    for protocol in protocols:
        if protocol not in ("tcp", "udp", "icmp", "icmpv6"):
            continue
        protocol = "icmp" if protocol == "icmpv6" else protocol
        if protocol == "icmp" or not match.dports:
            out.append((protocol, None, None))
        else:
            out += [(protocol, low, high) for low, high in match.dports]
    if match.protocols is None and not match.dports:
        out.append(("icmp", None, None))
    return out


def _service_name(label: str, vips: frozenset, masq: str | None, daddr_set: str | None = None) -> str:
    if label:
        parts = label.split("/")
        base = parts[1] if len(parts) >= 2 else parts[0]
        if daddr_set and "nodeport" in daddr_set:
            return base + "-nodeport"
        return base + ("-external" if masq == "always" else "")
    first = sorted(vips, key=lambda a: (a.version, a))[0]
    return "vip-" + str(first).replace(".", "-").replace(":", "-")


class _Pools:
    """Pools for a service's decisions: decisions with the same backends share one."""

    def __init__(self, service: ServiceDraft, ctx: ImportContext):
        self.service = service
        self.ctx = ctx
        self.names = Names()
        self.by_backends: dict[tuple, str] = {}

    def add(self, decision: _Decision, allowed: list[str] | None = None) -> None:
        sources = decision.match.sources
        if allowed is not None:  # of the rule's clients, those the firewall lets in
            sources = addresses.overlap(sources, allowed)
            if not sources:
                return
        weights = _weights([s for _, _, s in decision.targets])
        ports = {p for _, p, _ in decision.targets}
        uniform = len(ports) == 1
        port = ports.pop() if uniform else None
        identity = tuple((a, w, None if uniform else p) for (a, p, _), w in zip(decision.targets, weights))
        name = self.by_backends.get(identity)
        if name is None:
            name = self._pool(decision, identity)
            self.by_backends[identity] = name
        for protocol, low, high in _listens(decision.match):
            ports_text = [] if low is None else [(low, high)]
            target = port if uniform else None
            self.service.forwards.append(Line(forward_text(protocol, ports_text, name, sources or (), target)))

    def _pool(self, decision: _Decision, identity: tuple) -> str:
        label = decision.label.split("/")[-1] if decision.label else _ports_label(decision.match)
        name = self.names.take(label, "backends")
        pool = PoolDraft(name)
        for number, (address, weight, port) in enumerate(identity, start=1):
            pool.backends.append(BackendDraft(self.names.take(f"{name}-{number}"), address, port, weight))
        self.service.pools.append(pool)
        return name


def _ports_label(match: _Match) -> str:
    """A pool name from the traffic that reaches it: `tcp80`, `udp53`, or `backends`."""
    listens = [(p, low) for p, low, _ in _listens(match) if low is not None]
    return f"{listens[0][0]}{listens[0][1]}" if listens else "backends"


def _weights(shares: list[int]) -> list[int]:
    divisor = reduce(math.gcd, shares) if shares else 1
    return [s // divisor for s in shares]
