"""`lbspec import k8s`: Services and their EndpointSlices as kube-proxy serves them.

A Service becomes the service of its cluster IPs (destination NAT, as
kube-proxy does it); its external IPs and load balancer addresses become a
second service (`NAME-external`), translated like kube-proxy translates
traffic from outside the cluster; its node ports a third (`NAME-nodeport`)
when `--vip` gives the nodes' addresses.  Ready endpoints are the backends,
serving-but-terminating ones the backups kube-proxy falls back to.
docs/importers.md gives the whole mapping.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lbspec.importers.draft import (
    BackendDraft, ImportContext, Line, Names, Note, PoolDraft, ServiceDraft, affinity_text, balance_text,
    conntrack_affinity, failover_text, forward_text, line_span,
)
from lbspec.ir import Span

__all__ = ["import_k8s"]

_SLICE_LABEL = "kubernetes.io/service-name"
_ANY = {4: "0.0.0.0/0", 6: "::/0"}


# ------------------------------------------------------------------ reading --

class _Map(dict):
    """A YAML mapping that remembers the line of each key."""

    line: int = 0
    lines: dict

    def at(self, key: str) -> int:
        return self.lines.get(key, self.line)


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Loader, node):
        found = _Map()
        found.line = node.start_mark.line + 1
        found.lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k.value, str)}
        yield found
        found.update(loader.construct_mapping(node))

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    return Loader


@dataclass
class _Object:
    kind: str
    body: _Map
    file: str
    name: str = ""
    namespace: str = "default"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}" if self.name else self.kind


def _objects(path: str, ctx: ImportContext) -> list[_Object]:
    out = []
    for number, (document, line) in enumerate(_documents(path, ctx), 1):
        for item in _items(document, path, ctx):
            if item is None:
                continue
            if not isinstance(item, dict) or item.get("kind") is None:
                ctx.fail(line_span(ctx.sources, path, getattr(item, "line", line)),
                         f"not a Kubernetes object: document {number} has no `kind`",
                         help="give Service and EndpointSlice objects (`kubectl get svc,endpointslices -o yaml`)")
            out.append(_object(item, path, ctx))
    return out


def _items(document, path: str, ctx: ImportContext) -> list:
    """The objects of a document: the document itself, or the `items` of a `kind: List` (`kubectl get` prints one)."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if not isinstance(kind, str) or not kind.endswith("List"):
        return [document]
    return _list(document, "items", _object(document, path, ctx), ctx)


def _object(body: _Map, path: str, ctx: ImportContext) -> _Object:
    """The object, once `kind` and `metadata`, which every object is read by, have the types the API gives them."""
    obj = _Object(_field(body, "kind", (str,), _Object("object", body, path), ctx), body, path)
    metadata = _field(body, "metadata", (dict,), obj, ctx) or _Map()
    obj.name = _field(metadata, "name", (str,), obj, ctx) or ""
    obj.namespace = _field(metadata, "namespace", (str,), obj, ctx) or "default"
    return obj


def _documents(path: str, ctx: ImportContext) -> list[tuple[object, int]]:
    """Each YAML document of a file with the line it starts on: only mappings remember their line."""
    import yaml

    loader = _loader()(ctx.read(path))
    out = []
    try:
        while loader.check_node():
            node = loader.get_node()
            out.append((loader.construct_document(node), node.start_mark.line + 1))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(error, "problem", None) or str(error)
        ctx.fail(line_span(ctx.sources, path, line), f"not YAML: {problem}")
    finally:
        loader.dispose()
    return out


# ----------------------------------------------------------------- endpoints --

@dataclass
class _Endpoint:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    name: str  # the pod, or the address
    ports: dict[tuple[str, str], int]  # (port name, protocol) -> number
    role: str  # ready | terminating | unused
    line: int
    file: str


def _slice_endpoints(obj: _Object, ctx: ImportContext) -> list[_Endpoint]:
    body = obj.body
    ports = {}
    for port in _list(body, "ports", obj, ctx):
        number = _port(port, "port", obj, ctx)
        if number is not None:
            ports[_port_key(port, obj, ctx)] = number
    out = []
    for endpoint in _list(body, "endpoints", obj, ctx):
        addresses = _list(endpoint, "addresses", obj, ctx, str)
        if not addresses:
            continue
        address = _ip(addresses[0], endpoint, obj, ctx)
        conditions = _field(endpoint, "conditions", (dict,), obj, ctx) or _Map()
        ready = _field(conditions, "ready", (bool,), obj, ctx) is not False
        serving = _field(conditions, "serving", (bool,), obj, ctx, ready) is not False
        terminating = _field(conditions, "terminating", (bool,), obj, ctx) is True
        role = "ready" if ready and not terminating else ("terminating" if serving else "unused")
        out.append(_Endpoint(address, _pod(endpoint, obj, ctx) or str(address), ports, role, endpoint.line,
                             obj.file))
    return out


def _legacy_endpoints(obj: _Object, ctx: ImportContext) -> list[_Endpoint]:
    out = []
    for subset in _list(obj.body, "subsets", obj, ctx):
        ports = {_port_key(p, obj, ctx): _port(p, "port", obj, ctx, required=True)
                 for p in _list(subset, "ports", obj, ctx)}
        for key, role in (("addresses", "ready"), ("notReadyAddresses", "unused")):
            for entry in _list(subset, key, obj, ctx):
                address = _ip(_field(entry, "ip", (str,), obj, ctx), entry, obj, ctx)
                out.append(_Endpoint(address, _pod(entry, obj, ctx) or str(address), ports, role, entry.line,
                                     obj.file))
    return out


def _port_key(port: _Map, obj: _Object, ctx: ImportContext) -> tuple[str, str]:
    """A port's name and protocol (the API's defaults: no name, TCP), which kube-proxy matches Service ports to
    endpoint ports by."""
    return _field(port, "name", (str,), obj, ctx) or "", _field(port, "protocol", (str,), obj, ctx) or "TCP"


def _pod(endpoint: _Map, obj: _Object, ctx: ImportContext) -> str | None:
    """The name of the object an endpoint belongs to (its pod), which names the backend."""
    return _field(_field(endpoint, "targetRef", (dict,), obj, ctx) or _Map(), "name", (str,), obj, ctx)


# ------------------------------------------------------------------ fields --
# The importer reads many optional fields; each is checked for the type the
# Kubernetes API gives it where it is read, so an odd manifest is an LB300 at
# its line instead of an exception deep inside the importer.

_TYPE_NAMES = {str: "a string", int: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _field(mapping: _Map, key: str, types: tuple[type, ...], obj: _Object, ctx: ImportContext, default=None):
    """``mapping[key]``, ``default`` when it is absent or null, or LB300 when it has none of ``types``."""
    value = mapping.get(key)
    if value is None:
        return default
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(_TYPE_NAMES[t] for t in types)
        _fail_at(mapping, key, obj, ctx, f"`{key}` of {obj.label} is not {expected}")
    return value


def _list(body: _Map, key: str, obj: _Object, ctx: ImportContext, item: type = dict) -> list:
    """A list field whose entries are all ``item`` (objects by default); absent or null, an empty list."""
    value = _field(body, key, (list,), obj, ctx) or []
    if not all(isinstance(v, item) for v in value):
        what = "objects" if item is dict else "strings"
        _fail_at(body, key, obj, ctx, f"`{key}` of {obj.label} is not a list of {what}")
    return value


def _port(mapping: _Map, key: str, obj: _Object, ctx: ImportContext, required: bool = False) -> int | None:
    """A port number field: a number out of range would make a spec that does not load."""
    value = _field(mapping, key, (int,), obj, ctx)
    if (value is None and required) or (value is not None and not 0 < value < 65536):
        _fail_at(mapping, key, obj, ctx, f"`{key}: {value}` of {obj.label} is not a port",
                 help="ports run from 1 to 65535")
    return value


def _fail_at(mapping: _Map, key: str, obj: _Object, ctx: ImportContext, what: str, help: str | None = None):
    ctx.fail(line_span(ctx.sources, obj.file, mapping.at(key)), what, help=help)


def _ip(text, where: dict, obj: _Object, ctx: ImportContext):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        ctx.fail(line_span(ctx.sources, obj.file, getattr(where, "line", None)),
                 f"`{text}` in {obj.kind} {obj.name} is not an IP address")


# ----------------------------------------------------------------- importer --

def import_k8s(paths: list[str], ctx: ImportContext) -> tuple[list[ServiceDraft], list[Note]]:
    """Services for the Service objects of Kubernetes YAML files (with their EndpointSlices)."""
    objects = [o for path in paths for o in _objects(path, ctx)]
    slices: dict[tuple[str, str], list[_Endpoint]] = {}
    legacy: dict[tuple[str, str], list[_Endpoint]] = {}
    for obj in objects:
        if obj.kind == "EndpointSlice":
            owner = _owner(obj, ctx)
            if owner and _field(obj.body, "addressType", (str,), obj, ctx) in ("IPv4", "IPv6", None):
                slices.setdefault((obj.namespace, owner), []).extend(_slice_endpoints(obj, ctx))
        elif obj.kind == "Endpoints":
            legacy.setdefault((obj.namespace, obj.name), []).extend(_legacy_endpoints(obj, ctx))
    services, header = [], []
    names = Names()
    found = [o for o in objects if o.kind == "Service"]
    last = {(o.namespace, o.name): o for o in found}
    clashes = _clashing_names(found)
    claimed: dict[tuple, str] = {}  # (address, protocol, port) -> the service that listens there
    for obj in found:
        key = (obj.namespace, obj.name)
        if last[key] is not obj:
            header.append(ctx.explain(line_span(ctx.sources, obj.file, obj.body.line), f"Service {obj.namespace}/"
                                      f"{obj.name} is given again further on: the last one is imported"))
            continue
        endpoints = slices.get(key) if key in slices else legacy.get(key)
        base = f"{obj.namespace}-{obj.name}" if obj.name in clashes else obj.name
        services += _Service(obj, endpoints, ctx, header, claimed).build(names, base)
    return services, header


def _owner(obj: _Object, ctx: ImportContext) -> str | None:
    """The Service an EndpointSlice belongs to: its `kubernetes.io/service-name` label."""
    labels = _field(obj.body.get("metadata") or _Map(), "labels", (dict,), obj, ctx) or _Map()
    return _field(labels, _SLICE_LABEL, (str,), obj, ctx)


def _clashing_names(services: list[_Object]) -> set[str]:
    seen: dict[str, set[str]] = {}
    for obj in services:
        seen.setdefault(obj.name, set()).add(obj.namespace)
    return {name for name, spaces in seen.items() if len(spaces) > 1}


@dataclass
class _Port:
    name: str
    protocol: str
    port: int
    target: int | str
    node_port: int | None
    mapping: _Map

    def line(self, key: str) -> int:
        return self.mapping.at(key)

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.protocol


class _Service:
    """Builds the services of one Service object."""

    def __init__(self, obj: _Object, endpoints: list[_Endpoint] | None, ctx: ImportContext, header: list[Note],
                 claimed: dict[tuple, str]):
        self.obj = obj
        self.claimed = claimed
        self.spec = _field(obj.body, "spec", (dict,), obj, ctx) or _Map()
        self.endpoints = endpoints
        self.ctx = ctx
        self.header = header
        self.file = obj.file

    def _span(self, key: str | None = None, mapping: dict | None = None) -> Span | None:
        """The line of ``key`` in ``mapping`` (the spec by default); without a key, the object's name."""
        if key is None and mapping is None:
            metadata = self.obj.body.get("metadata")
            line = metadata.at("name") if isinstance(metadata, _Map) else self.obj.body.line
            return line_span(self.ctx.sources, self.file, line)
        mapping = self.spec if mapping is None else mapping
        line = mapping.at(key) if isinstance(mapping, _Map) and key else getattr(mapping, "line", None)
        return line_span(self.ctx.sources, self.file, line or self.obj.body.line)

    def _get(self, key: str, *types: type, default=None):
        """A field of the spec, checked for its type."""
        return _field(self.spec, key, types, self.obj, self.ctx, default)

    def build(self, names: Names, base: str) -> list[ServiceDraft]:
        kind = self._get("type", str, default="ClusterIP")
        if kind == "ExternalName":
            self.header.append(self.ctx.skip(self._span("type"), f"Service {self.obj.name} type: ExternalName",
                                             "a DNS alias; nothing balances: not imported"))
            return []
        if self._get("clusterIP", str) == "None":
            self.header.append(self.ctx.skip(self._span("clusterIP"), f"Service {self.obj.name} clusterIP: None",
                                             "headless: clients get the endpoints' addresses from DNS; nothing "
                                             "balances: not imported"))
            return []
        ports = self._ports()
        if not any(p.protocol in ("TCP", "UDP") for p in ports):
            self.header.append(self.ctx.skip(self._span("ports") if "ports" in self.spec else self._span(),
                                             f"Service {self.obj.name}", "no TCP or UDP port: not imported"))
            return []
        out = [self._cluster(names.take(base), ports)]
        external = self._external_vips()
        if external:
            out.append(self._outside(names.take(f"{base}-external"), ports, external, "port"))
        node_ports = [p for p in ports if p.node_port]
        if node_ports and kind in ("NodePort", "LoadBalancer"):
            if self.ctx.options.vips:
                out.append(self._outside(names.take(f"{base}-nodeport"), node_ports,
                                         list(self.ctx.options.vips), "node_port"))
            elif out[0] is not None:
                text = ", ".join(f"nodePort: {p.node_port}" for p in node_ports)
                span = line_span(self.ctx.sources, self.file, node_ports[0].line("nodePort"))
                out[0].tail.append(self.ctx.lost(span, text, "served on every node's addresses: give "
                                                                             "them with --vip to import it"))
        return [s for s in out if s is not None]

    # --- addresses other Services listen on
    @staticmethod
    def _keys(address, ports: list[_Port], which: str) -> list[tuple]:
        return [(address, p.protocol, getattr(p, which)) for p in ports if p.protocol in ("TCP", "UDP")]

    def _free(self, address, ports: list[_Port], which: str) -> bool:
        return not any(k in self.claimed for k in self._keys(address, ports, which))

    def _claim(self, service: ServiceDraft, ports: list[_Port], which: str) -> bool:
        """Takes the service's addresses and ports; one another Service listens on already is left out.

        kube-proxy would send such traffic to one of the two Services, which one the Services do not say.
        """
        kept = []
        for vip in service.vips:
            keys = self._keys(vip, ports, which)
            other = next((self.claimed[k] for k in keys if k in self.claimed), None)
            if other is None:
                kept.append(vip)
                self.claimed.update(dict.fromkeys(keys, service.name))
                continue
            service.vip_notes.append(self.ctx.lost(self._span(), f"Service {self.obj.name} address {vip}",
                                                   f"service `{other}` listens on this address and port too; "
                                                   "only one of them can have the traffic: left out here"))
        service.vips = kept
        if not kept:
            self.header.extend(service.vip_notes)
            self.ctx.skipped = True
        return bool(kept)

    # --- ports and addresses
    def _ports(self) -> list[_Port]:
        ports = []
        for port in _list(self.spec, "ports", self.obj, self.ctx):
            number = _port(port, "port", self.obj, self.ctx, required=True)
            target = _field(port, "targetPort", (int, str), self.obj, self.ctx, number)
            if isinstance(target, int):
                _port(port, "targetPort", self.obj, self.ctx)
            ports.append(_Port(*_port_key(port, self.obj, self.ctx), number, target,
                               _port(port, "nodePort", self.obj, self.ctx), port))
        return ports

    def _cluster_vips(self, service: ServiceDraft, ports: list[_Port]) -> None:
        texts = [t for t in _list(self.spec, "clusterIPs", self.obj, self.ctx, str) or [self._get("clusterIP", str)]
                 if t]
        for text in texts:
            service.add_vip(_ip(text, self.spec, self.obj, self.ctx))
        if service.vips:
            return
        families = _list(self.spec, "ipFamilies", self.obj, self.ctx, str) or ["IPv4"]
        for family in families:
            service.add_vip(self._placeholder(6 if family == "IPv6" else 4, ports))
        service.vip_notes.append(self.ctx.lost(self._span(), f"Service {self.obj.name}", "the manifest has no "
                                               "clusterIP (the API server assigns one); import `kubectl get svc -o "
                                               "yaml` to get it"))

    def _placeholder(self, family: int, ports: list[_Port]):
        """An address for a Service without a ClusterIP: `0.0.0.0` (`::`), or the next one no Service on these
        ports has (`0.0.0.1`...; `100::1`..., the discard prefix), so that Services without one do not clash."""
        first = ipaddress.ip_address("::" if family == 6 else "0.0.0.0")
        base = ipaddress.ip_address("100::" if family == 6 else "0.0.0.0")
        number = 0
        candidate = first
        while not self._free(candidate, ports, "port"):
            number += 1
            candidate = base + number
        return candidate

    def _external_vips(self) -> list:
        external = _list(self.spec, "externalIPs", self.obj, self.ctx, str)
        found = [_ip(t, self.spec, self.obj, self.ctx) for t in external]
        status = _field(self.obj.body, "status", (dict,), self.obj, self.ctx) or _Map()
        balancer = _field(status, "loadBalancer", (dict,), self.obj, self.ctx) or _Map()
        ingresses = _list(balancer, "ingress", self.obj, self.ctx)
        for ingress in ingresses:
            address, hostname = (_field(ingress, key, (str,), self.obj, self.ctx) for key in ("ip", "hostname"))
            if address and _field(ingress, "ipMode", (str,), self.obj, self.ctx) == "Proxy":
                self.header.append(self.ctx.lost(self._span(None, ingress), f"ip: {address} ipMode: Proxy",
                                                 "kube-proxy leaves this address to the cloud load balancer, which "
                                                 "delivers its traffic to the nodes: not imported"))
            elif address:
                found.append(_ip(address, ingress, self.obj, self.ctx))
            elif hostname:
                self.header.append(self.ctx.lost(self._span(None, ingress), f"hostname: {hostname}",
                                                 "a load balancer known by name; the spec needs its address"))
        if not ingresses and self._get("type", str) == "LoadBalancer" and self._get("loadBalancerIP", str):
            found.append(_ip(self.spec["loadBalancerIP"], self.spec, self.obj, self.ctx))
        return list(dict.fromkeys(found))

    # --- the services
    def _cluster(self, name: str, ports: list[_Port]) -> ServiceDraft | None:
        service = ServiceDraft(name)
        self._cluster_vips(service, ports)
        if not self._claim(service, ports, "port"):
            return None
        service.mode = Line("mode nat", [self.ctx.lost(self._span(), f"Service {self.obj.name}", "kube-proxy also "
                                                       "masquerades (source-NATs) clients from outside the pod "
                                                       "network; the spec says `nat` for all of them")])
        self._fill(service, ports, "port")
        if self._get("internalTrafficPolicy", str) == "Local":
            service.tail.append(self.ctx.lost(self._span("internalTrafficPolicy"), "internalTrafficPolicy: Local",
                                              "each node sends cluster traffic only to its own endpoints"))
        return service

    def _outside(self, name: str, ports: list[_Port], vips: list, which: str) -> ServiceDraft | None:
        service = ServiceDraft(name)
        for vip in vips:
            service.add_vip(vip)
        if not self._claim(service, ports, which):
            return None
        policy = self._get("externalTrafficPolicy", str, default="Cluster")
        if policy == "Local":
            service.mode = Line("mode nat", [self.ctx.lost(self._span("externalTrafficPolicy"),
                                                           "externalTrafficPolicy: Local", "each node sends this "
                                                           "traffic only to its own endpoints (and keeps the "
                                                           "client's address)")])
        else:
            service.mode = Line("mode snat", [self.ctx.explain(self._span(), "externalTrafficPolicy: Cluster: "
                                                               "kube-proxy masquerades traffic from outside the "
                                                               "cluster")])
        ranges = _list(self.spec, "loadBalancerSourceRanges", self.obj, self.ctx, str)
        allowed = self._source_ranges(service, ranges) if ranges and which == "port" else None
        self._fill(service, ports, which, allowed)
        return service

    def _source_ranges(self, service: ServiceDraft, ranges: list) -> list:
        """The allowed source prefixes; the service drops every other source."""
        allowed = []
        for text in (r.strip() for r in ranges):
            try:
                allowed.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.ctx.fail(self._span("loadBalancerSourceRanges"), f"`{text}` is not a prefix",
                              help="write prefixes such as 203.0.113.0/24")
        service.otherwise = Line("otherwise drop", [self.ctx.explain(
            self._span("loadBalancerSourceRanges"), "loadBalancerSourceRanges: other sources are dropped")])
        return allowed

    def _fill(self, service: ServiceDraft, ports: list[_Port], which: str, allowed: list | None = None) -> None:
        """Listeners, pools, rules, balance, affinity and health for the given ports."""
        usable = []
        for port in ports:
            if port.protocol not in ("TCP", "UDP"):
                service.listen_notes.append(self.ctx.lost(line_span(self.ctx.sources, self.file, port.line("protocol")),
                                                          f"protocol: {port.protocol}", "the spec knows TCP, UDP "
                                                                                        "and ICMP; not imported"))
                continue
            service.add_listen(port.protocol.lower(), getattr(port, which))
            usable.append(port)
        if self.endpoints is None and self.spec.get("selector") is not None:
            service.otherwise = Line("otherwise reject", [self.ctx.explain(
                self._span(), f"no EndpointSlice for Service {self.obj.name} in the input: kube-proxy rejects "
                              "traffic to a Service without endpoints")])
            return
        unserved = []
        families = sorted({v.version for v in service.vips})
        for port, pools in zip(usable, self._pools(service, usable)):
            self._forwards(service, port, pools, which, allowed)
            missing = [f"IPv{f}" for f in families if not pools.get(f, ("", []))[1]]  # a family without endpoints
            if missing:
                over = "" if len(missing) == len(families) else f" over {', '.join(missing)}"
                unserved.append(f"{port.protocol} {getattr(port, which)}{over}")
        if unserved and service.otherwise is None:
            service.otherwise = Line("otherwise reject", [self.ctx.explain(
                self._span(), f"no endpoint serves {', '.join(unserved)}: kube-proxy rejects that traffic")])
            if not service.forwards:
                return
        self._behaviour(service)

    def _pools(self, service: ServiceDraft, ports: list[_Port]) -> list[dict[int, tuple[str, list[_Endpoint]]]]:
        """For each port, one pool per address family with a VIP: ready endpoints, and terminating ones as backups.

        kube-proxy sends a port only to the endpoints whose EndpointSlice lists a port of that name and protocol
        (none when no slice lists it); ports that go to the same endpoints share a pool.
        """
        everyone = self.endpoints or []
        families = sorted({v.version for v in service.vips})
        names = Names()
        out: list[dict[int, tuple[str, list[_Endpoint]]]] = [{} for _ in ports]
        for family in families:
            served = [[e for e in everyone if e.address.version == family and port.key in e.ports] for port in ports]
            sets = {tuple(map(id, endpoints)) for endpoints in served if endpoints}
            pools: dict[tuple, tuple[str, list[_Endpoint]]] = {}
            for index, (port, endpoints) in enumerate(zip(ports, served)):
                key = tuple(map(id, endpoints))
                if not key:
                    continue
                if key not in pools:
                    suffix = f"-v{family}" if len(families) > 1 else ""
                    suffix += f"-{port.name or port.port}" if len(sets) > 1 else ""
                    pools[key] = self._pool(service, names.take(f"{self.obj.name}{suffix}", "endpoints"), endpoints,
                                            names)
                out[index][family] = pools[key]
        return out

    def _pool(self, service: ServiceDraft, name: str, endpoints: list[_Endpoint],
              names: Names) -> tuple[str, list[_Endpoint]]:
        pool = PoolDraft(name)
        used = self._backends(pool, endpoints, names)
        service.pools.append(pool)
        backups = [b.name for b in pool.backends if b.backup]
        if backups:
            service.failovers.append(Line(failover_text(backups, 1, pool.name), [self.ctx.explain(
                None, "kube-proxy uses serving endpoints that are terminating only when no endpoint is ready")]))
        return pool.name, used

    def _backends(self, pool: PoolDraft, endpoints: list[_Endpoint], names: Names) -> list[_Endpoint]:
        used, seen = [], set()
        for endpoint in endpoints:
            span = line_span(self.ctx.sources, endpoint.file, endpoint.line)
            if endpoint.address in seen:
                continue
            seen.add(endpoint.address)
            if endpoint.role == "unused":
                pool.notes.append(self.ctx.explain(span, f"endpoint {endpoint.address} is not ready and not "
                                                         "serving: kube-proxy sends it nothing"))
                continue
            backend = BackendDraft(names.take(endpoint.name, "endpoint"), endpoint.address)
            backend.backup = endpoint.role == "terminating"
            if backend.backup:
                backend.notes.append(self.ctx.explain(span, "serving but terminating"))
            pool.backends.append(backend)
            used.append(endpoint)
        return used

    def _forwards(self, service: ServiceDraft, port: _Port, pools: dict, which: str, allowed: list | None) -> None:
        number = getattr(port, which)
        for family in sorted(pools):
            pool, endpoints = pools[family]
            if not endpoints:
                continue
            target = self._target_port(port, endpoints, service)
            if allowed is not None:
                sources = [str(p) for p in allowed if p.version == family]
                if not sources:
                    continue
            else:
                sources = [_ANY[family]] if len({v.version for v in service.vips}) > 1 else []
            service.forwards.append(Line(forward_text(port.protocol.lower(), [(number, number)], pool, sources,
                                                      target)))

    def _target_port(self, port: _Port, endpoints: list[_Endpoint], service: ServiceDraft) -> int:
        """The endpoints' port for a Service port: by the port's name and protocol, as the EndpointSlice lists it."""
        numbers = [e.ports[port.key] for e in endpoints]
        counts = {n: numbers.count(n) for n in numbers}
        chosen = max(counts, key=lambda n: (counts[n], -n))
        if len(counts) > 1:
            service.tail.append(self.ctx.lost(line_span(self.ctx.sources, self.file, port.line("targetPort")),
                                              f"targetPort: {port.target}", f"endpoints listen on different ports "
                                              f"({', '.join(map(str, sorted(counts)))}); the spec says {chosen}"))
        return chosen

    def _behaviour(self, service: ServiceDraft) -> None:
        service.balance = Line(balance_text("random"), [self.ctx.explain(
            None, "kube-proxy (iptables and nftables modes) picks an endpoint at random; IPVS mode would be "
                  "round robin")])
        if self._get("sessionAffinity", str) == "ClientIP":
            service.affinity = Line(affinity_text("client", float(self._affinity_timeout())), [self.ctx.explain(
                self._span("sessionAffinity"), "sessionAffinity: ClientIP")])
        else:
            service.affinity = conntrack_affinity(service, self.ctx, "conntrack keeps each connection on the "
                                                                     "endpoint its first packet got")
        service.health = Line("health none", [self.ctx.explain(
            None, "kube-proxy checks nothing itself: it drops endpoints that stop being ready (readiness probes, "
                  "which the spec cannot express)")])
        for key, kind in (("trafficDistribution", str), ("healthCheckNodePort", int)):
            if self._get(key, kind) is not None:
                service.tail.append(self.ctx.lost(self._span(key), f"{key}: {self.spec[key]}", _K8S_LOST[key]))

    def _affinity_timeout(self) -> int:
        """`sessionAffinityConfig.clientIP.timeoutSeconds`: kube-proxy's default is 3 hours."""
        config = self._get("sessionAffinityConfig", dict) or _Map()
        client = _field(config, "clientIP", (dict,), self.obj, self.ctx) or _Map()
        timeout = _field(client, "timeoutSeconds", (int,), self.obj, self.ctx, 10800)
        if timeout <= 0:
            _fail_at(client, "timeoutSeconds", self.obj, self.ctx, f"`timeoutSeconds: {timeout}` of {self.obj.label} "
                     "is not a positive number of seconds")
        return timeout


_K8S_LOST = {
    "trafficDistribution": "endpoints close to the client are preferred",
    "healthCheckNodePort": "the cloud load balancer checks each node, not each endpoint",
}
