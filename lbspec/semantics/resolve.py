"""Syntax trees to the resolved model: names, units, defaults, addresses, ranges.

Every problem found is appended to a list of diagnostics; resolution goes on
after a problem so that one run reports as many as it can.  A service or
property with an error resolves to None.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from lbspec import diagnostics as d
from lbspec import ir
from lbspec.semantics import model as m
from lbspec.semantics import values
from lbspec.semantics.filters import resolve_filter
from lbspec.semantics.listeners import Claim, conflicts
from lbspec.semantics.units import duration, percentage
from lbspec.syntax.format import format_pattern

__all__ = ["resolve"]

Diags = list[d.Diagnostic]


def resolve(files: list[ir.SpecFile], library: list[ir.SpecFile],
            sources: dict[str, str]) -> tuple[m.Spec | None, Diags]:
    """Resolve user files (in include order) against the property library."""
    diags: Diags = []
    seen: dict[str, ir.Span] = {}
    definitions = [*_definitions(library, True, seen, diags), *_definitions(files, False, seen, diags)]
    properties = {p.name: p for p in definitions}
    services, names, vips, claims, proxies = [], {}, {}, {}, set()
    for node in (i for f in files for i in f.items if isinstance(i, ir.Service)):
        if node.name.name in names:
            diags.append(_duplicate("service", node.name, names[node.name.name]))
            continue
        names[node.name.name] = node.name.span
        resolver = _ServiceResolver(node, properties, sources, diags)
        services.append(resolver.run())
        vips[node.name.name], claims[node.name.name] = resolver.vip_spans, resolver.claims
        if services[-1] is not None and services[-1].mode.kind == "proxy":
            proxies.add(node.name.name)
    diags.extend(conflicts(vips, claims, proxies))
    if any(x.severity is d.Severity.ERROR for x in diags) or None in services:
        return None, diags
    return m.Spec(tuple(services), tuple(definitions), dict(sources), tuple(diags)), diags


def _duplicate(what: str, name: ir.Ident, first: ir.Span) -> d.Diagnostic:
    return d.DUPLICATE_NAME.at(name.span, what=what, name=name.name,
                               notes=[d.Note("first defined here", first)])


# ------------------------------------------------------------- properties --

def _definitions(files: list[ir.SpecFile], library: bool, seen: dict[str, ir.Span],
                 diags: Diags) -> list[m.PropertyDef]:
    found = []
    for file in files:
        for node in (i for i in file.items if isinstance(i, ir.Property)):
            if node.name.name in seen:
                diags.append(_duplicate("property", node.name, seen[node.name.name]))
                continue
            seen[node.name.name] = node.name.span
            pattern = resolve_pattern(node.pattern, diags)
            if pattern is not None:
                found.append(m.PropertyDef(node.name.name, node.title, pattern, node.span, library,
                                           _doc(node, file.comments), format_pattern(node.pattern)))
    return found


def _doc(node: ir.Property, comments: tuple[ir.Comment, ...]) -> str:
    """The comment lines directly above a property definition, without their `#`."""
    by_line = {c.span.line: c for c in comments}
    lines, line = [], node.span.line - 1
    while line in by_line and by_line[line].span.column == 1:
        lines.append(by_line[line].text.lstrip("#").strip())
        line -= 1
    return "\n".join(reversed(lines))


def resolve_pattern(node: ir.Pattern, diags: Diags) -> m.Pattern | None:
    """A pattern with its scope typed and its quantities converted.

    Backend names in `never forward to NAMES` are kept as written; a service
    binds them (see ``_ServiceResolver._bind``).
    """
    scope = m.ANY if node.scope is None else resolve_filter(node.scope, diags)
    if scope is None:
        return None
    if isinstance(node, ir.Response):
        within = _positive_duration(node.within, "deadline", diags)
        return None if within is None else m.Response(scope, within, node.unless_no_backend)
    if isinstance(node, ir.Distribution):
        tolerance = _tolerance(node.within, diags)
        return None if tolerance is None else m.Distribution(node.unit, scope, tolerance)
    if isinstance(node, ir.Absence):
        event = "backends" if node.event == "names" else node.event
        return m.Absence(scope, event, node.after_detection, frozenset(n.name for n in node.names))
    if isinstance(node, ir.Stickiness):
        return m.Stickiness(node.key, scope, node.while_healthy)
    if isinstance(node, ir.Integrity):
        return m.Integrity(frozenset(node.fields), scope)
    return m.ReversePath(scope)


def _positive_duration(q: ir.Quantity, what: str, diags: Diags) -> float | None:
    seconds = duration(q, diags)
    if seconds is not None and seconds <= 0:
        diags.append(d.OUT_OF_RANGE.at(q.span, what=what, value=str(q), reason="it must be above zero"))
        return None
    return seconds


def _tolerance(q: ir.Quantity, diags: Diags) -> float | None:
    fraction = percentage(q, diags)
    if fraction is not None and not 0 < fraction <= 1:
        diags.append(d.OUT_OF_RANGE.at(q.span, what="tolerance", value=str(q),
                                       reason="it must be above 0% and at most 100%"))
        return None
    return fraction


# ---------------------------------------------------------------- services --

_SINGLE = {ir.Mode: "mode", ir.Otherwise: "otherwise", ir.Balance: "balance",
           ir.Affinity: "affinity", ir.Health: "health", ir.Capacity: "capacity"}


class _ServiceResolver:
    """Resolves one service; collects its diagnostics into the shared list."""

    def __init__(self, node: ir.Service, properties: dict[str, m.PropertyDef],
                 sources: dict[str, str], diags: Diags):
        self.node = node
        self.properties = properties
        self.sources = sources
        self.diags = diags
        self.errors_before = self._errors()
        self.vip_spans: dict[m.Address, ir.Span] = {}
        self.claims: list[Claim] = []

    def _errors(self) -> int:
        return sum(1 for x in self.diags if x.severity is d.Severity.ERROR)

    def _single(self, kind: type) -> ir.Node | None:
        found = self.node.statements(kind)
        for extra in found[1:]:
            self.diags.append(d.DUPLICATE_STATEMENT.at(
                extra.span, what=_SINGLE[kind], notes=[d.Note("first given here", found[0].span)]))
        return found[0] if found else None

    def run(self) -> m.Service | None:
        vips = self._vips()
        listens = self._listens()
        pools = self._pools()
        self.pool_names = {p.name for p in pools}
        self.backend_names = {b.name: b for p in pools for b in p.backends}
        self.vip_families = {v.version for v in vips}
        rules = self._rules()
        service = m.Service(
            self.node.name.name, vips, listens, pools, rules,
            otherwise=self._otherwise(), otherwise_span=self._otherwise_node_span(), mode=self._mode(), balance=self._balance(),
            affinity=self._affinity(), health=self._health(), failovers=self._failovers(pools),
            capacity=self._capacity(pools), span=self.node.span)
        waivers = self._waivers()
        checks = self._checks(waivers)
        if self._errors() > self.errors_before:
            return None
        return dataclasses.replace(service, checks=tuple(checks),
                                   waivers=tuple(w for ws in waivers.values() for w in ws))

    def _missing(self, what: str) -> None:
        self.diags.append(d.MISSING_STATEMENT.at(self.node.name.span, service=self.node.name.name, what=what,
                                                 help=f"add a `{what}` statement to the service"))

    # --- addresses and listeners
    def _vips(self) -> tuple[m.Address, ...]:
        statements = self.node.statements(ir.Vip)
        if not statements:
            self._missing("vip")
        found: dict[m.Address, ir.Span] = {}
        for node in (a for s in statements for a in s.addresses):
            vip = values.address(node, self.diags)
            if vip is None:
                continue
            if vip in found:
                self.diags.append(d.DUPLICATE_STATEMENT.at(
                    node.span, what=f"vip {node.text}", notes=[d.Note("first given here", found[vip])]
                ).with_severity(d.Severity.WARNING))
                continue
            found[vip] = node.span
        self.vip_spans = found
        return tuple(found)

    def _listens(self) -> tuple[m.Listen, ...]:
        statements = self.node.statements(ir.Listen)
        if not statements:
            self._missing("listen")
        ranges: dict[str, list[tuple[int, int]]] = {}
        spans: dict[str, ir.Span] = {}
        for statement in statements:
            protocol = None
            for item in statement.items:
                protocol = item.protocol or protocol
                if not self._listen_item(item, protocol):
                    continue
                spans.setdefault(protocol, statement.span)
                checked = m.ALL_PORTS if item.ports is None else values.port_ranges([item.ports], self.diags)
                ranges.setdefault(protocol, []).extend(checked or ())
                self.claims += [Claim(self.node.name.name, protocol, low, high, item.span)
                                for low, high in checked or ()]
        return tuple(m.Listen(p, m.merge_ranges(r), spans[p]) for p, r in ranges.items())

    def _listen_item(self, item: ir.ListenItem, protocol: str | None) -> bool:
        if protocol is None:
            self.diags.append(d.PORTS_NOT_APPLICABLE.at(
                item.span, what=f"port {item.ports.low} has no protocol",
                help=f"write `tcp {item.ports.low}` or `udp {item.ports.low}`"))
            return False
        if protocol == "icmp" and item.ports is not None:
            self.diags.append(d.PORTS_NOT_APPLICABLE.at(item.span, what="icmp has no ports",
                                                        help="write `icmp` on its own"))
            return False
        return True

    def _mode(self) -> m.Mode:
        node = self._single(ir.Mode)
        if node is None:
            return m.Mode()
        if node.port is not None and node.encap != "gue":
            self.diags.append(d.INVALID_ENCAP.at(node.span, problem=f"only GUE has a port, not {node.encap}",
                                                 help=f"write `mode tunnel {node.encap}`"))
        port = node.port
        if port is not None:
            port = values.port(port, node.span, self.diags)
        elif node.encap == "gue":
            port = 6080
        return m.Mode(node.kind, node.encap, port, node.span)

    # --- pools and backends
    def _pools(self) -> tuple[m.Pool, ...]:
        seen: dict[str, tuple[str, ir.Span]] = {}
        pools = []
        for node in self.node.statements(ir.Pool):
            if self._claim(node.name, "pool", seen):
                backends = [self._backend(b, node.name.name, seen) for b in node.backends]
                pools.append(m.Pool(node.name.name, tuple(b for b in backends if b), node.span))
        return tuple(pools)

    def _claim(self, name: ir.Ident, what: str, seen: dict[str, tuple[str, ir.Span]]) -> bool:
        """Register a pool or backend name; pools and backends share one namespace."""
        if name.name in seen:
            first_what, first = seen[name.name]
            label = what if first_what == what else f"{first_what} or {what}"
            self.diags.append(_duplicate(label, name, first))
            return False
        seen[name.name] = (what, name.span)
        return True

    def _backend(self, node: ir.Backend, pool: str, seen: dict) -> m.Backend | None:
        if not self._claim(node.name, "backend", seen):
            return None
        address = values.address(node.endpoint.address, self.diags)
        port = node.endpoint.port
        if port is not None:
            port = values.port(port, node.endpoint.span, self.diags)
        options: dict[type, ir.Node] = {}
        for option in node.options:
            if type(option) in options:
                name = {ir.Weight: "weight", ir.Backup: "backup", ir.MaxConn: "max_conn"}[type(option)]
                self.diags.append(d.DUPLICATE_STATEMENT.at(
                    option.span, what=name, notes=[d.Note("first given here", options[type(option)].span)]))
            options.setdefault(type(option), option)
        weight = options.get(ir.Weight)
        if weight is not None and weight.value < 0:
            self.diags.append(d.NEGATIVE_WEIGHT.at(weight.span, value=weight.value,
                                                   help="use `weight 0` to send no new traffic"))
        max_conn = options.get(ir.MaxConn)
        if max_conn is not None and max_conn.value < 1:
            self.diags.append(d.OUT_OF_RANGE.at(max_conn.span, what="max_conn", value=max_conn.value,
                                                reason="a backend must accept at least one connection"))
        if address is None:
            return None
        return m.Backend(node.name.name, pool, address, port,
                         weight.value if weight else 1, ir.Backup in options,
                         max_conn.value if max_conn else None, node.span)

    # --- rules
    def _rules(self) -> tuple[m.Rule, ...]:
        rules = []
        for index, node in enumerate(self.node.statements(ir.Forward)):
            self._pool_exists(node.pool)
            protocol, ports = self._traffic(node.traffic)
            sources = self._sources(node.sources)
            target = node.target_port
            if target is not None:
                target = values.port(target, node.span, self.diags)
            rules.append(m.Rule(index, protocol, ports, sources, node.pool.name, target, node.span))
        return tuple(rules)

    def _pool_exists(self, name: ir.Ident) -> bool:
        if name.name in self.pool_names:
            return True
        if name.name in self.backend_names:
            pool = self.backend_names[name.name].pool
            hint = f"`{name.name}` is a backend; forward to its pool `{pool}`"
        else:
            hint = d.did_you_mean(name.name, self.pool_names)
        self.diags.append(d.UNKNOWN_POOL.at(name.span, name=name.name, help=hint))
        return False

    def _traffic(self, node: ir.Traffic) -> tuple[str | None, m.PortRanges]:
        protocol = None if node.protocol == "any" else node.protocol
        if protocol == "icmp" and node.ports:
            self.diags.append(d.PORTS_NOT_APPLICABLE.at(node.span, what="icmp has no ports",
                                                        help="write `icmp` on its own"))
            return protocol, ()
        return protocol, values.port_ranges(node.ports, self.diags) or ()

    def _sources(self, nodes: Iterable[ir.Prefix]) -> tuple[m.Network, ...]:
        found = []
        for node in nodes:
            network = values.prefix(node, self.diags)
            if network is None:
                continue
            if self.vip_families and network.version not in self.vip_families:
                family = f"IPv{network.version}"
                self.diags.append(d.FAMILY_MISMATCH.at(
                    node.span, family=family, text=str(network),
                    help=f"add an {family} `vip`, or drop this prefix: it can never match"))
            found.append(network)
        return tuple(found)

    def _otherwise(self) -> str | None:
        node = self._single(ir.Otherwise)
        return node.action if node else None

    def _otherwise_node_span(self) -> ir.Span | None:
        found = self.node.statements(ir.Otherwise)
        return found[0].span if found else None

    def _balance(self) -> m.Balance:
        node = self._single(ir.Balance)
        if node is None:
            return m.Balance()
        if node.fields and node.algorithm not in ("hash", "maglev"):
            self.diags.append(d.PARAMETER_NOT_APPLICABLE.at(
                node.span, problem=f"`{node.algorithm}` takes no hash fields",
                help="hash fields apply to `hash` and `maglev`"))
        fields = tuple(dict.fromkeys(node.fields)) or (
            ("src", "dst", "sport", "dport", "proto") if node.algorithm in ("hash", "maglev") else ())
        return m.Balance(node.algorithm, fields, node.span)

    def _affinity(self) -> m.Affinity:
        node = self._single(ir.Affinity)
        if node is None:
            return m.Affinity()
        if node.kind == "none" and node.timeout is not None:
            self.diags.append(d.PARAMETER_NOT_APPLICABLE.at(
                node.timeout.span, problem="`affinity none` takes no timeout"))
        timeout = 300.0
        if node.timeout is not None and node.kind != "none":
            timeout = _positive_duration(node.timeout, "affinity timeout", self.diags) or timeout
        return m.Affinity(node.kind, timeout if node.kind != "none" else 0.0, node.span)

    def _health(self) -> m.Health:
        node = self._single(ir.Health)
        if node is None:
            return m.Health()
        if node.path is not None and node.kind not in ("http", "tcp"):
            self.diags.append(d.PARAMETER_NOT_APPLICABLE.at(
                node.span, problem=f"a `{node.kind}` health check takes no string",
                help="`health http \"/path\"` takes the path it asks for, `health tcp \"PING\\r\\n\"` the bytes it "
                     "sends"))
        if node.kind == "none" and node.settings:
            self.diags.append(d.PARAMETER_NOT_APPLICABLE.at(
                node.settings[0].span, problem="`health none` takes no settings"))
        settings = self._health_settings(node)
        health = m.Health(node.kind, node.path, span=node.span, **settings)
        if health.kind != "none" and not _computable(health):
            self.diags.append(d.OUT_OF_RANGE.at(
                node.span, what="detection window", value=f"fall {health.fall} x every {health.every:g}s",
                reason="it is too long to compute with"))
        if health.kind != "none" and health.timeout > health.every:
            timeout = next((s for s in node.settings if s.name == "timeout"), node)
            self.diags.append(d.OUT_OF_RANGE.at(
                timeout.span, what="health timeout", value=f"{health.timeout:g}s",
                reason=f"it is longer than the interval ({health.every:g}s): checks overlap"
            ).with_severity(d.Severity.WARNING))
        return health

    def _health_settings(self, node: ir.Health) -> dict[str, float | int]:
        settings: dict[str, float | int] = {}
        first: dict[str, ir.Span] = {}
        for setting in node.settings:
            if setting.name in first:
                self.diags.append(d.DUPLICATE_STATEMENT.at(
                    setting.span, what=setting.name, notes=[d.Note("first given here", first[setting.name])]))
                continue
            first[setting.name] = setting.span
            value = setting.value
            if isinstance(value, ir.Quantity):
                seconds = _positive_duration(value, f"health {setting.name}", self.diags)
                if seconds is not None:
                    settings[setting.name] = seconds
            elif value < 1:
                self.diags.append(d.OUT_OF_RANGE.at(setting.span, what=setting.name, value=value,
                                                    reason="at least one check must decide"))
            else:
                settings[setting.name] = value
        return settings

    def _failovers(self, pools: tuple[m.Pool, ...]) -> tuple[m.Failover, ...]:
        found = []
        for node in self.node.statements(ir.Failover):
            failover = self._failover(node, pools)
            if failover is not None:
                found.append(failover)
        return tuple(found)

    def _failover(self, node: ir.Failover, pools: tuple[m.Pool, ...]) -> m.Failover | None:
        if node.below < 1:
            self.diags.append(d.OUT_OF_RANGE.at(node.span, what="healthy <", value=node.below,
                                                reason="fewer than 0 healthy backends can never happen"))
        if node.source is not None and not self._pool_exists(node.source):
            return None
        names = [t.name for t in node.targets]
        for target in node.targets:
            if target.name not in self.pool_names and target.name not in self.backend_names:
                self.diags.append(d.UNKNOWN_BACKEND.at(
                    target.span, name=target.name,
                    help=d.did_you_mean(target.name, [*self.pool_names, *self.backend_names])))
                return None
        to_pool = [n in self.pool_names for n in names]
        if any(to_pool) and not all(to_pool):
            self.diags.append(d.FAILOVER_TARGET.at(node.span, problem="a failover goes to backups or to pools, not both",
                                                   help="write one `failover` for each"))
            return None
        source = self._failover_source(node, names, all(to_pool), pools)
        if source is None:
            return None
        return m.Failover(source, tuple(names), all(to_pool), node.below, node.span)

    def _failover_source(self, node: ir.Failover, names: list[str], to_pool: bool,
                         pools: tuple[m.Pool, ...]) -> str | None:
        if to_pool:
            others = [p.name for p in pools if p.name not in names]
            if node.source is not None:
                return node.source.name
            if len(others) == 1:
                return others[0]
            self.diags.append(d.FAILOVER_TARGET.at(
                node.span, problem="which pool fails over is not clear",
                help=f"name it: `failover from POOL to {', '.join(names)} when healthy < {node.below}`"))
            return None
        for target in node.targets:
            backend = self.backend_names[target.name]
            if not backend.backup:
                self.diags.append(d.FAILOVER_TARGET.at(
                    target.span, problem=f"`{target.name}` is not a backup backend",
                    help=f"mark it `backup` in pool `{backend.pool}`"))
                return None
            if node.source is not None and node.source.name != backend.pool:
                self.diags.append(d.FAILOVER_TARGET.at(
                    target.span, problem=f"`{target.name}` is in pool `{backend.pool}`, not `{node.source.name}`"))
                return None
        owners = {self.backend_names[n].pool for n in names}
        if len(owners) > 1:
            self.diags.append(d.FAILOVER_TARGET.at(node.span, problem="backups of different pools in one failover",
                                                   help="write one `failover` per pool"))
            return None
        return owners.pop()

    def _capacity(self, pools: tuple[m.Pool, ...]) -> m.Capacity | None:
        node = self._single(ir.Capacity)
        if node is None:
            return None
        if node.conns < 1:
            self.diags.append(d.OUT_OF_RANGE.at(node.span, what="capacity", value=node.conns,
                                                reason="declare at least one connection"))
        backends = sum(len(p.backends) for p in pools)
        if node.down and node.down >= backends:
            self.diags.append(d.OUT_OF_RANGE.at(
                node.down_span or node.span, what="backends down", value=node.down,
                reason=f"none of the service's {backends} backend{'' if backends == 1 else 's'} would be left",
                help="count at most one backend fewer than the service has"))
        return m.Capacity(node.conns, node.down or 0, node.span)

    # --- properties
    def _property(self, name: ir.Ident) -> m.PropertyDef | None:
        found = self.properties.get(name.name)
        if found is None:
            self.diags.append(d.UNKNOWN_PROPERTY.at(name.span, name=name.name,
                                                    help=d.did_you_mean(name.name, self.properties)))
        return found

    def _waivers(self) -> dict[str, list[m.Waiver]]:
        waivers: dict[str, list[m.Waiver]] = {}
        for node in self.node.statements(ir.Waive):
            definition = self._property(node.property)
            if not node.reason or not node.reason.strip():
                self.diags.append(d.WAIVER_WITHOUT_REASON.at(
                    node.span, name=node.property.name,
                    help=f'say why: `waive {node.property.name} "the reason"`'))
            scope = None if node.scope is None else resolve_filter(node.scope, self.diags)
            if definition is None or (node.scope is not None and scope is None):
                continue
            earlier = waivers.setdefault(definition.name, [])
            if node.scope is None and any(w.scope is None for w in earlier):
                first = next(w for w in earlier if w.scope is None)
                self.diags.append(d.CONFLICTING_PROPERTY.at(
                    node.span, name=definition.name, problem="waived twice",
                    notes=[d.Note("first waived here", first.span)]))
            earlier.append(m.Waiver(definition.name, node.reason or "", scope, node.span))
        return waivers

    def _requires(self, waivers: dict[str, list[m.Waiver]]) -> dict[str, tuple[ir.Require, m.Pattern]]:
        required: dict[str, tuple[ir.Require, m.Pattern]] = {}
        for node in self.node.statements(ir.Require):
            definition = self._property(node.property)
            if definition is None:
                continue
            if definition.name in required:
                self.diags.append(d.CONFLICTING_PROPERTY.at(
                    node.span, name=definition.name, problem="required twice",
                    notes=[d.Note("first required here", required[definition.name][0].span)]))
                continue
            full = next((w for w in waivers.get(definition.name, ()) if w.scope is None), None)
            if full is not None:
                self.diags.append(d.CONFLICTING_PROPERTY.at(
                    node.span, name=definition.name, problem="both required and waived",
                    notes=[d.Note("waived here", full.span)]))
            pattern = self._tighten(definition, node)
            if pattern is not None:
                required[definition.name] = (node, pattern)
        return required

    def _tighten(self, definition: m.PropertyDef, node: ir.Require) -> m.Pattern | None:
        pattern = self._bind(definition.pattern, node.span)
        if node.within is None or pattern is None:
            return pattern
        if isinstance(pattern, m.Response):
            within = _positive_duration(node.within, "deadline", self.diags)
            return None if within is None else dataclasses.replace(pattern, within=within)
        if isinstance(pattern, m.Distribution):
            tolerance = _tolerance(node.within, self.diags)
            return None if tolerance is None else dataclasses.replace(pattern, tolerance=tolerance)
        kind = m.PATTERN_NAMES[type(pattern)]
        self.diags.append(d.PARAMETER_NOT_APPLICABLE.at(
            node.within.span, problem=f"`within` does not apply to `{definition.name}`, a {kind} property",
            help="`within` tightens response (a deadline) and distribution (a tolerance) properties"))
        return None

    def _bind(self, pattern: m.Pattern, where: ir.Span, names: Iterable[ir.Ident] = ()) -> m.Pattern | None:
        """Expand pool names to their backends in `never forward to NAMES`, checking each exists."""
        if not isinstance(pattern, m.Absence) or pattern.event != "backends":
            return pattern
        spans = {n.name: n.span for n in names}
        backends: set[str] = set()
        for name in sorted(pattern.backends):
            if name in self.pool_names:
                backends.update(b for b, x in self.backend_names.items() if x.pool == name)
            elif name in self.backend_names:
                backends.add(name)
            else:
                self.diags.append(d.UNKNOWN_BACKEND.at(
                    spans.get(name, where), name=name,
                    help=d.did_you_mean(name, [*self.pool_names, *self.backend_names])))
                return None
        return dataclasses.replace(pattern, backends=frozenset(backends))

    def _checks(self, waivers: dict[str, list[m.Waiver]]) -> list[m.Check]:
        required = self._requires(waivers)
        checks = []
        for definition in self.properties.values():
            waived = waivers.get(definition.name, [])
            if definition.name in required:
                node, pattern = required[definition.name]
                origin = "library" if definition.library else "required"
                checks.append(m.Check(definition.name, definition.title, pattern, origin, definition.span,
                                      node.span, tuple(w for w in waived if w.scope is not None)))
            elif definition.library and not any(w.scope is None for w in waived):
                checks.append(m.Check(definition.name, definition.title, definition.pattern, "library",
                                      definition.span, None, tuple(waived)))
        checks.extend(self._assertions())
        return checks

    def _assertions(self) -> list[m.Check]:
        found = []
        for node in self.node.statements(ir.Assert):
            text = " ".join(_source_text(self.sources, node.body.span).split())
            if isinstance(node.body, ir.OnlyRoute):
                pattern = self._only_route(node.body)
                names = node.body.targets
            else:
                pattern = resolve_pattern(node.body, self.diags)
                names = getattr(node.body, "names", ())
            pattern = pattern and self._bind(pattern, node.span, names)
            if pattern is not None:
                found.append(m.Check(f"assert@{node.span.line}", text, pattern, "assert", node.span))
        return found

    def _only_route(self, node: ir.OnlyRoute) -> m.Pattern | None:
        parts: list[m.Filter] = []
        sources = self._sources(node.sources)
        if sources:
            parts.append(m.Test("src", sources))
        if node.traffic is not None:
            protocol, ports = self._traffic(node.traffic)
            if protocol is not None:
                parts.append(m.Test("proto", (protocol,)))
            if ports:
                parts.append(m.Test("dport", ports))
        names = frozenset(t.name for t in node.targets)
        return m.Absence(m.conjoin(*parts), "backends", backends=names, complement=True)


def _computable(health: m.Health) -> bool:
    """Whether the detection window is a finite number of seconds (a huge `fall` overflows)."""
    try:
        return math.isfinite(health.detection_time)
    except OverflowError:
        return False


def _source_text(sources: dict[str, str], span: ir.Span) -> str:
    text = sources.get(span.file)
    if text is None:
        return ""
    lines = text.split("\n")[span.line - 1:span.end_line]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0][span.column - 1:span.end_column - 1]
    return "\n".join([lines[0][span.column - 1:], *lines[1:-1], lines[-1][:span.end_column - 1]])
