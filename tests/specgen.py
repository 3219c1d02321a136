"""Hypothesis strategies for valid spec trees (used by the round-trip and differential tests).

Trees are built as :mod:`lbspec.ir` nodes that resolve without errors: names are
unique and refer to what exists, values are in range, options fit their
statements.  Names always end in a digit, so they never collide with a keyword.
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from lbspec import ir

LIBRARY = ("no_drop", "healthy_only", "declared_only", "flow_affinity", "integrity", "reverse_path", "balance",
           "no_duplicate")

ports = st.integers(1, 65535)


def port_range(low=1) -> st.SearchStrategy[ir.PortRange]:
    return st.tuples(st.integers(low, 65535), st.integers(0, 200)).map(
        lambda t: ir.PortRange(t[0], min(65535, t[0] + t[1]) if t[1] % 3 else t[0]))


def ipv4(prefix: str = "10") -> st.SearchStrategy[str]:
    missing = 4 - len(prefix.split("."))
    tail = st.tuples(*[st.integers(0, 255)] * (missing - 1), st.integers(1, 254))
    return tail.map(lambda t: ".".join([prefix, *map(str, t)]))


def ipv6(prefix: str = "2001:db8") -> st.SearchStrategy[str]:
    return st.tuples(st.integers(0, 0xffff), st.integers(1, 0xffff)).map(lambda t: f"{prefix}:{t[0]:x}::{t[1]:x}")


def quantity(units: list[str], low: int = 1, high: int = 600) -> st.SearchStrategy[ir.Quantity]:
    return st.builds(lambda n, u: ir.Quantity(str(n), u), st.integers(low, high), st.sampled_from(units))


def prefix(family: int) -> st.SearchStrategy[ir.Prefix]:
    def build(address: str, length: int | None) -> ir.Prefix:
        if length is None:
            return ir.Prefix(ir.Address(address))
        network = ipaddress.ip_network(f"{address}/{length}", strict=False)
        return ir.Prefix(ir.Address(str(network.network_address)), length)

    if family == 4:
        return st.builds(build, ipv4(), st.sampled_from([0, 8, 16, 24, 32, None]))
    return st.builds(build, ipv6(), st.sampled_from([0, 32, 48, 64, 128, None]))


# ----------------------------------------------------------------- filters --

WORDS = ["tcp", "udp", "icmp", "ipv4", "ipv6", "syn", "ack", "fin", "rst", "any"]


def filter_test(families: list[int]) -> st.SearchStrategy[ir.Filter]:
    addr = st.builds(ir.FilterTest, st.sampled_from(["src", "dst"]), st.sampled_from([None, "in", "not in"]),
                     st.sampled_from(families).flatmap(prefix))
    port = st.builds(ir.FilterTest, st.sampled_from(["sport", "dport"]),
                     st.sampled_from([None, "==", "!=", "in", "not in"]),
                     st.one_of(port_range(0), st.lists(port_range(0), min_size=1, max_size=3).map(
                         lambda rs: ir.ValueSet(tuple(rs)))))
    order = st.builds(lambda f, op, p: ir.FilterTest(f, op, ir.PortRange(p, p)), st.sampled_from(["sport", "dport"]),
                      st.sampled_from(["<", "<=", ">", ">="]), st.integers(0, 65535))
    proto = st.builds(ir.FilterTest, st.just("proto"), st.sampled_from([None, "==", "!="]),
                      st.sampled_from(["tcp", "udp", "icmp"]).map(ir.Ident))
    flags = st.builds(ir.FilterTest, st.just("flags"), st.sampled_from([None, "has"]),
                      st.sampled_from(["syn", "ack", "fin", "rst"]).map(ir.Ident))
    word = st.sampled_from(WORDS).map(lambda w: ir.FilterWord(ir.Ident(w)))
    return st.one_of(word, addr, port, order, proto, flags)


def filters(families: list[int]) -> st.SearchStrategy[ir.Filter]:
    return st.recursive(
        filter_test(families),
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: ir.FilterAnd(tuple(xs))),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: ir.FilterOr(tuple(xs))),
            inner.map(ir.FilterNot)),
        max_leaves=5)


# ---------------------------------------------------------------- patterns --

def patterns(families: list[int], backend_names: list[str]) -> st.SearchStrategy[ir.Pattern]:
    scope = st.none() | filters(families)
    absence_events = [st.tuples(st.just("down"), st.booleans(), st.just(())),
                      st.just(("undeclared", False, ())), st.just(("twice", False, ()))]
    if backend_names:
        absence_events.append(st.tuples(st.just("names"), st.just(False), st.lists(
            st.sampled_from(backend_names), min_size=1, max_size=2, unique=True).map(
            lambda ns: tuple(ir.Ident(n) for n in ns))))
    return st.one_of(
        st.builds(ir.Response, scope, quantity(["ms", "s"]), st.booleans()),
        st.builds(lambda s, e: ir.Absence(s, e[0], e[1], e[2]), scope, st.one_of(*absence_events)),
        st.builds(ir.Stickiness, st.sampled_from(["flow", "client"]), scope, st.booleans()),
        st.builds(ir.Distribution, st.sampled_from(["flows", "bytes", "packets"]), scope, quantity(["%"], 1, 100)),
        st.builds(ir.Integrity, st.lists(st.sampled_from(["payload", "headers", "src", "dst", "sport", "dport",
                                                          "proto", "ttl"]), min_size=1, max_size=3, unique=True
                                         ).map(tuple), scope),
        st.builds(ir.ReversePath, scope),
    )


# ---------------------------------------------------------------- services --

@st.composite
def services(draw, name: str = "s1", network: int = 0) -> ir.Service:
    """A service whose VIPs lie in its own ``network`` (services of one spec may not share a listener)."""
    families = draw(st.sampled_from([[4], [6], [4, 6]]))
    vips = [draw(ipv4(f"192.{network}") if f == 4 else ipv6(f"2001:db8:{0xff + network:x}")) for f in families]
    extra_vip = draw(st.booleans())
    if extra_vip:
        vips.append(draw(ipv4(f"198.{51 + network}") if families[0] == 4 else ipv6(f"2001:db8:{0xfe - network:x}")))
    vips = list(dict.fromkeys(vips))
    body: list = [ir.Vip(tuple(ir.Address(v) for v in vips))]

    listen_items = []
    for protocol in draw(st.lists(st.sampled_from(["tcp", "udp", "icmp"]), min_size=1, max_size=3, unique=True)):
        if protocol == "icmp":
            listen_items.append(ir.ListenItem("icmp", None))
            continue
        ranges = draw(st.lists(port_range(), max_size=3))
        listen_items.append(ir.ListenItem(protocol, ranges[0] if ranges else None))
        listen_items.extend(ir.ListenItem(None, r) for r in ranges[1:])
    body.append(ir.Listen(tuple(listen_items)))

    mode = draw(st.sampled_from(["nat", "snat", "dsr", "proxy", "tunnel"]))
    if mode == "tunnel":
        encap = draw(st.sampled_from(["ipip", "gre", "gue"]))
        body.append(ir.Mode("tunnel", encap, draw(st.none() | ports) if encap == "gue" else None))
    elif draw(st.booleans()):
        body.append(ir.Mode(mode))

    pools, backend_names, backups = [], [], {}
    for p in range(draw(st.integers(1, 3))):
        backends = []
        for b in range(draw(st.integers(1, 4))):
            bname = f"b{p}x{b}"
            family = draw(st.sampled_from(families))
            address = draw(ipv4() if family == 4 else ipv6())
            port = draw(st.none() | ports)
            options = []
            if draw(st.booleans()):
                options.append(ir.Weight(draw(st.integers(0, 9))))
            if draw(st.integers(0, 4)) == 0:
                options.append(ir.Backup())
                backups.setdefault(f"p{p}", []).append(bname)
            if draw(st.integers(0, 3)) == 0:
                options.append(ir.MaxConn(draw(st.integers(1, 10000))))
            backends.append(ir.Backend(ir.Ident(bname), ir.Endpoint(ir.Address(address), port), tuple(options)))
            backend_names.append(bname)
        pools.append(ir.Pool(ir.Ident(f"p{p}"), tuple(backends)))
    body.extend(pools)
    pool_names = [p.name.name for p in pools]

    for _ in range(draw(st.integers(0, 4))):
        protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "any"]))
        rports = () if protocol == "icmp" else tuple(draw(st.lists(port_range(), max_size=2)))
        sources = tuple(draw(st.lists(st.sampled_from(families).flatmap(prefix), max_size=2)))
        body.append(ir.Forward(ir.Traffic(protocol, rports), sources, ir.Ident(draw(st.sampled_from(pool_names))),
                               draw(st.none() | ports)))
    if draw(st.booleans()):
        body.append(ir.Otherwise(draw(st.sampled_from(["drop", "reject"]))))
    if draw(st.booleans()):
        algorithm = draw(st.sampled_from(["round_robin", "random", "least_conn", "hash", "maglev"]))
        fields = ()
        if algorithm in ("hash", "maglev"):
            fields = tuple(draw(st.lists(st.sampled_from(["src", "dst", "sport", "dport", "proto"]),
                                         max_size=3, unique=True)))
        body.append(ir.Balance(algorithm, fields))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["flow", "client", "none"]))
        body.append(ir.Affinity(kind, None if kind == "none" else draw(st.none() | quantity(["s", "m"]))))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["tcp", "udp", "icmp", "http", "none"]))
        settings = []
        if kind != "none":
            every = draw(st.integers(2, 10))
            settings = [ir.HealthSetting("every", ir.Quantity(str(every), "s")),
                        ir.HealthSetting("timeout", ir.Quantity(str(draw(st.integers(1, every))), "s")),
                        ir.HealthSetting("fall", draw(st.integers(1, 5))),
                        ir.HealthSetting("rise", draw(st.integers(1, 5)))]
            settings = draw(st.permutations(settings))[:draw(st.integers(0, 4))]
        path = draw(st.none() | st.just("/healthz")) if kind == "http" else None
        body.append(ir.Health(kind, path, tuple(settings)))
    for pool, names in backups.items():
        if draw(st.booleans()):
            source = draw(st.none() | st.just(ir.Ident(pool)))
            body.append(ir.Failover(source, tuple(ir.Ident(n) for n in names), draw(st.integers(1, 3))))
    if draw(st.booleans()):
        down = st.integers(0, min(3, len(backend_names) - 1))  # with every backend down, nothing carries the load
        body.append(ir.Capacity(draw(st.integers(1, 100000)), draw(st.none() | down)))

    properties = draw(st.lists(st.sampled_from(LIBRARY), max_size=3, unique=True))
    for prop in properties:
        if draw(st.booleans()):
            reason = draw(st.text(st.characters(codec="utf-8", exclude_characters="\r"), min_size=1, max_size=20)
                          .filter(lambda s: s.strip()))
            scope = draw(st.none() | filters(families))
            body.append(ir.Waive(ir.Ident(prop), scope, reason))
        else:
            within = None
            if prop == "no_drop":
                within = draw(st.none() | quantity(["ms", "s"]))
            elif prop == "balance":
                within = draw(st.none() | quantity(["%"], 1, 100))
            body.append(ir.Require(ir.Ident(prop), within))
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            sources = tuple(draw(st.lists(st.sampled_from(families).flatmap(prefix), max_size=2)))
            traffic = draw(st.none() | st.builds(ir.Traffic, st.sampled_from(["tcp", "udp"]),
                                                 st.lists(port_range(), max_size=2).map(tuple)))
            targets = tuple(ir.Ident(n) for n in draw(st.lists(st.sampled_from(backend_names + pool_names),
                                                               min_size=1, max_size=2, unique=True)))
            body.append(ir.Assert(ir.OnlyRoute(sources, traffic, targets)))
        else:
            body.append(ir.Assert(draw(patterns(families, backend_names))))
    return ir.Service(ir.Ident(name), tuple(body))


@st.composite
def spec_files(draw) -> ir.SpecFile:
    items = [draw(services(f"s{i}", i)) for i in range(draw(st.integers(1, 2)))]
    for i in range(draw(st.integers(0, 2))):
        items.insert(draw(st.integers(0, len(items))), ir.Property(
            ir.Ident(f"user{i}"), draw(st.text(max_size=10)), draw(patterns([4, 6], []))))
    return ir.SpecFile("<generated>", tuple(items))
