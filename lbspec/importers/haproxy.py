"""`lbspec import haproxy`: each frontend and listen section becomes a service.

HAProxy ends every client connection and opens its own to a server, in
`mode tcp` and `mode http` alike, so every service is `mode proxy`.  The
backends a frontend uses become its pools; the service takes its balance,
affinity and health from the default backend.  docs/importers.md gives the
whole mapping and the reasons for it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from lbspec.importers import addresses
from lbspec.importers.draft import (
    ACCEPT_PROXY, HTTP_REQUESTS, LOAD_AWARE, NOT_REPRESENTED, PROXY_HEADER, UNSEEN_HASH, BackendDraft, ConfigError,
    ImportContext, Line, Names, Note, PoolDraft, ServiceDraft, affinity_text, balance_text, duration, failover_text,
    forward_text, health_text,
)
from lbspec.ir import Span
from lbspec.syntax.haproxy import Config, Section, ServerOption, Statement, parse_haproxy

__all__ = ["import_haproxy"]

_PROXIES = ("frontend", "backend", "listen")

# Statements that are lists (each line adds one) rather than settings (the last line wins).
_LISTED = {
    "bind", "server", "server-template", "use_backend", "use-server", "acl", "stick", "tcp-request",
    "tcp-response", "http-request", "http-response", "http-after-response", "http-check", "tcp-check",
    "redirect", "errorfile", "capture", "stats", "filter", "monitor", "log", "declare", "email-alert",
    "external-check", "force-persist", "ignore-persist", "reqadd", "rspadd", "unique-id-header",
}

# Settings that change nothing about where traffic goes or what reaches a server.
_IGNORED = {
    "log", "log-format", "log-format-sd", "log-tag", "error-log-format", "description", "id", "stats",
    "monitor-uri", "monitor", "monitor-net", "errorfile", "errorloc", "errorloc302", "errorloc303",
    "errorfiles", "capture", "unique-id-format", "unique-id-header", "declare", "email-alert",
    "option httplog", "option tcplog", "option dontlognull", "option dontlog-normal", "option log-separate-errors",
    "option log-health-checks", "option logasap", "option httpslog", "option socket-stats",
    "option contstats", "option tcpka", "option clitcpka", "option srvtcpka", "option splice-auto",
    "option splice-request", "option splice-response", "option independent-streams",
    "option nolinger", "option http-buffer-request", "option http-ignore-probes", "option idle-close-on-response",
    "timeout http-request", "timeout http-keep-alive", "timeout client-fin", "timeout server-fin",
    "timeout tarpit", "timeout connect", "timeout check", "timeout server", "timeout client", "timeout tunnel",
    "option http-keep-alive", "option http-server-close", "option httpclose", "option http-pretend-keepalive",
    "option abortonclose", "enabled", "bind-process", "compression", "max-keep-alive-queue",
    "backlog", "rate-limit", "http-reuse", "hash-balance-factor",
}

_GLOBAL_LOST = {
    "maxconn": "HAProxy accepts at most this many connections at once; further clients wait in the "
               "kernel's accept queue, which the spec has no word for",
    "maxconnrate": "new connections beyond this rate wait: the spec has no rate limits",
    "maxsessrate": "new sessions beyond this rate wait: the spec has no rate limits",
}

_LOST_WHY = {
    "maxconn": "this frontend accepts at most this many connections at once; further clients wait "
               "in the kernel's accept queue (`capacity` states a load to carry, not a limit)",
    "option redispatch": "a connection that fails on its server is retried on another one",
    "retries": "HAProxy retries a failed connection to a server this many times",
    "option forwardfor": "HAProxy adds an X-Forwarded-For header: requests reach the server changed",
    "option originalto": "HAProxy adds an X-Original-To header: requests reach the server changed",
    "fullconn": "server limits grow with the backend's load (dynamic `minconn`/`maxconn`)",
    "timeout queue": "requests queued longer than this are refused",
    "cookie": "HTTP cookie persistence keeps a client on its server by a cookie, not by address",
    "tcp-request": "connections may be accepted, rejected or delayed by content rules",
    "http-request": "requests may be rejected, redirected or rewritten by rules",
    "http-response": "responses may be rewritten by rules",
    "use-server": "rules pick a server directly, bypassing the balance algorithm",
    "server-template": "servers come from DNS at run time; the spec needs their addresses",
    "option transparent": "connections go to the client's original destination, not to a server",
    "option persist": "connections stay on a server marked down",
    "option prefer-last-server": "HTTP requests prefer the server of the previous request",
}

# `bind` options that change what reaches the listener or what servers receive.
_BIND_LOST = {
    "ssl": "TLS is terminated here: servers receive decrypted bytes",
    "accept-proxy": ACCEPT_PROXY,
    "maxconn": _LOST_WHY["maxconn"],
    "interface": "only connections that arrive on this network interface reach the listener; the spec's VIPs "
                 "take traffic from every interface",
    "namespace": "the listener is in this network namespace: only traffic that reaches that namespace gets to it",
}

# Server options without a rule in the grammar that take one argument.
_SERVER_VALUE_OPTIONS = {
    "addr", "agent-addr", "agent-send", "alpn", "ca-file", "check-alpn", "check-proto", "check-sni",
    "ciphers", "ciphersuites", "client-sigalgs", "cookie", "crl-file", "crt", "curves", "error-limit",
    "hash-key", "id", "init-addr", "init-state", "log-proto", "log-bufsize", "max-reuse", "namespace",
    "npn", "observe", "on-error", "on-marked-down", "on-marked-up", "pool-conn-name", "pool-low-conn",
    "pool-max-conn", "pool-purge-delay", "proto", "redir", "resolve-net", "resolve-opts", "resolve-prefer",
    "resolvers", "shard", "sigalgs", "sni", "socks4", "source", "ssl-max-ver", "ssl-min-ver", "tcp-ut",
    "track", "verify", "verifyhost", "ws", "guid", "set-proxy-v2-tlv-fmt",
}
_SERVER_IGNORED = {
    "check", "no-check", "backup", "no-backup", "disabled", "enabled", "weight", "maxconn", "inter",
    "fastinter", "downinter", "fall", "rise", "id", "cookie", "ca-file", "crt", "ciphers", "ciphersuites",
    "sni", "verify", "verifyhost", "check-sni", "alpn", "check-alpn", "ssl-min-ver", "ssl-max-ver",
    "resolve-prefer", "init-addr", "tfo", "no-tls-tickets", "pool-max-conn",
    "pool-purge-delay", "pool-low-conn", "max-reuse", "log-proto", "hash-key", "curves", "sigalgs",
    "client-sigalgs", "crl-file", "no-verifyhost", "guid", "shard", "check-ssl", "no-check-ssl",
}
_SERVER_LOST = {
    "ssl": "TLS to the server: the server receives re-encrypted bytes, not the client's",
    "send-proxy": PROXY_HEADER,
    "send-proxy-v2": PROXY_HEADER,
    "send-proxy-v2-ssl": PROXY_HEADER,
    "send-proxy-v2-ssl-cn": PROXY_HEADER,
    "slowstart": "a server that comes back takes traffic gradually; its weight grows over this time",
    "agent-check": "an agent on the server may change its weight or state at run time",
    "agent-port": "an agent on the server may change its weight or state at run time",
    "agent-inter": "an agent on the server may change its weight or state at run time",
    "track": "the server's state follows another server's checks",
    "observe": "live traffic marks the server down too (passive checks)",
    "on-error": "live traffic marks the server down too (passive checks)",
    "on-marked-down": "connections are cut when the server goes down",
    "on-marked-up": "connections move when the server comes back",
    "redir": "clients are redirected to the server instead of proxied",
    "minconn": "the server's connection limit grows with the backend's load",
    "maxqueue": "requests waiting for this server are capped; extra requests go elsewhere or fail",
    "source": "connections to the server leave from a chosen (maybe the client's) address",
    "socks4": "connections to the server go through a SOCKS4 proxy",
    "namespace": "connections to the server leave from another network namespace, with its own addresses and routes",
    "port": "health checks go to another port than the traffic",
    "addr": "health checks go to another address than the traffic",
    "proto": "a different application protocol to the server",
    "resolvers": "the server's address comes from DNS at run time",
    "non-stick": "stick tables ignore this server",
    "error-limit": "live traffic marks the server down too (passive checks)",
}

# server options that make a server's weight change at run time: the shares the weights give do not hold
_WEIGHT_CHANGING = ("slowstart", "agent-check")

_APP_CHECKS = {
    "ssl-hello-chk": "an SSLv3 hello", "smtpchk": "an SMTP HELO", "mysql-check": "a MySQL handshake",
    "pgsql-check": "a PostgreSQL handshake", "redis-check": "a Redis PING", "ldap-check": "an LDAP bind",
    "spop-check": "an SPOP hello", "external-check": "an external command",
}

def _app_sent(option: str, words: list[str]) -> str | None:
    """What an application check sends first (the spec's `health tcp "..."`, a character a byte; "": nothing),
    as HAProxy 2.6 sends it, where it is known."""
    if option == "redis-check":
        return "PING\r\n"
    if option == "ssl-hello-chk":
        return "\x16\x03\x00"  # an SSLv3 record of a handshake: the hello that follows has a time in it
    if option == "ldap-check":
        return "\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00"  # an anonymous simple bind
    if option == "smtpchk":  # after the server's banner
        hello, domain = words[:2] if len(words) >= 2 else ("HELO", "localhost")
        return f"{hello} {domain}\r\n"
    if option == "mysql-check" and not words:
        return ""
    if option == "mysql-check" and words[:1] == ["user"] and len(words) >= 2:
        user = words[1].encode()  # after the server's greeting, a login packet (number 1) of the user
        body = (b"\x80\x00\x00\x00\x01" if words[2:3] == ["pre-41"]
                else b"\x00\x82\x00\x00\x00\x80\x00\x01\x21" + bytes(23)) + user + b"\x00\x00"
        return (len(body).to_bytes(3, "little") + b"\x01" + body).decode("latin-1")
    if option == "pgsql-check" and words[:1] == ["user"] and len(words) >= 2:
        user = words[1].encode()  # a startup message: its length, protocol 3.0, and "user" NAME
        body = b"\x00\x03\x00\x00user\x00" + user + b"\x00\x00"
        return (len(body) + 4).to_bytes(4, "big").decode("latin-1") + body.decode("latin-1")
    return None


def _sent(rule: Statement) -> str | None:
    """What `tcp-check send DATA` (or `send-binary HEX`) sends, as the spec's string (a character a byte); None
    for a log-format `send-lf`, whose text is made per check."""
    words = [w.text for w in rule.args]
    if len(words) < 2 or words[0] not in ("send", "send-binary"):
        return None
    if words[0] == "send":
        return words[1]
    try:
        return bytes.fromhex(words[1]).decode("latin-1")
    except ValueError:
        return None


_TIME = re.compile(r"([0-9]+)(us|ms|s|m|h|d)?")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1e-3}


def haproxy_time(text: str) -> float | None:
    """A HAProxy time (milliseconds unless a unit is given) in seconds."""
    match = _TIME.fullmatch(text)
    return None if match is None else int(match.group(1)) * _TIME_UNITS[match.group(2)]


# ---------------------------------------------------------------- proxies --

@dataclass
class _Proxy:
    """A section with what it inherits from its `defaults`: the settings (last one wins) and lists."""

    kind: str
    name: str
    span: Span
    settings: dict[str, Statement] = field(default_factory=dict)
    listed: list[Statement] = field(default_factory=list)
    server_defaults: list[ServerOption] = field(default_factory=list)  # every `default-server` line so far
    defaults_of: dict[int, tuple[ServerOption, ...]] = field(default_factory=dict)  # id(server) -> its defaults

    def server_options(self, server: Statement) -> dict[str, ServerOption]:
        """A `server` line's options: the `default-server` lines above it (the defaults section's first), then its
        own.  HAProxy copies the defaults into a server when it reads the server, so later lines do not count."""
        return _effective([*self.defaults_of.get(id(server), ()), *server.options])

    def servers(self) -> list[_Server]:
        return [_Server(s, s.args[0].text, self.server_options(s)) for s in self.lines("server")]

    def setting(self, key: str) -> Statement | None:
        """The statement that sets ``key``, or None (`no option X` unsets an option)."""
        found = self.settings.get(key)
        return None if found is None or found.keyword == "no" else found

    def word(self, key: str, default: str) -> str:
        found = self.setting(key)
        return found.args[0].text if found is not None and found.args else default

    def timeout(self, kind: str) -> float | None:
        """The timeout in seconds; None where there is none (unset, or 0: HAProxy waits for ever)."""
        found = self.setting(f"timeout {kind}")
        return None if found is None or not found.value else found.value

    def lines(self, keyword: str) -> list[Statement]:
        return [s for s in self.listed if s.keyword == keyword]


def _key(statement: Statement) -> str | None:
    words = [w.text for w in statement.args]
    if statement.keyword in ("timeout", "option") and words:
        return f"{statement.keyword} {words[0]}"
    if statement.keyword == "no" and len(words) >= 2 and words[0] == "option":
        return f"option {words[1]}"
    return None if statement.keyword in _LISTED else statement.keyword


def _inherit(section: Section, parent: _Proxy | None) -> _Proxy:
    proxy = _Proxy(section.kind, section.name or "", section.span)
    if parent is not None:
        proxy.settings = dict(parent.settings)
        proxy.listed = list(parent.listed)
        proxy.server_defaults = list(parent.server_defaults)
    for statement in section.statements:
        if statement.keyword == "default-server":
            proxy.server_defaults.extend(statement.options)
            continue
        if statement.keyword == "server":
            proxy.defaults_of[id(statement)] = tuple(proxy.server_defaults)
        if (key := _key(statement)) is not None:
            proxy.settings[key] = statement
        else:
            proxy.listed.append(statement)
    return proxy


def _proxies(configs: list[Config], ctx: ImportContext) -> tuple[list[_Proxy], dict[str, Statement]]:
    """Every frontend, backend and listen section with its defaults; and the global settings."""
    proxies, named, last, global_ = [], {}, None, {}
    for section in (s for c in configs for s in c.sections):
        parent = last
        if section.defaults is not None:
            parent = named.get(section.defaults)
            if parent is None:
                ctx.fail(section.span, f"no defaults section named `{section.defaults}` comes before "
                                       f"{section.kind} `{section.name}`",
                         help="define `defaults NAME` above the sections that use it")
        if section.kind == "defaults":
            last = _inherit(section, parent if section.defaults is not None else None)
            named[section.name] = last
        elif section.kind in _PROXIES:
            proxies.append(_inherit(section, parent))
        elif section.kind == "global":
            global_.update({s.keyword: s for s in section.statements})
    return proxies, global_


# ---------------------------------------------------------------- servers --

@dataclass
class _Server:
    statement: Statement
    name: str
    options: dict[str, ServerOption]
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    port: int | None = None

    def option(self, name: str) -> ServerOption | None:
        return self.options.get(name)

    def value(self, name: str, default):
        found = self.options.get(name)
        return default if found is None or found.value is None else found.value

    @property
    def checked(self) -> bool:
        return "check" in self.options


def _grouped(options: list[ServerOption]) -> list[ServerOption]:
    """Options with their values: `cookie s1` is one option, not two."""
    out: list[ServerOption] = []
    index = 0
    while index < len(options):
        option = options[index]
        if option.name in _SERVER_VALUE_OPTIONS and option.value is None and index + 1 < len(options):
            value = options[index + 1]
            span = Span(option.span.file, option.span.line, option.span.column,
                        value.span.end_line, value.span.end_column)
            option = ServerOption(option.name, value.name, span, f"{option.name} {value.name}")  # type: ignore[arg-type]
            index += 1
        out.append(option)
        index += 1
    return out


def _effective(options: list[ServerOption]) -> dict[str, ServerOption]:
    """`default-server` options, then the server's own, with `no-X` and `enabled` undoing."""
    found: dict[str, ServerOption] = {}
    for option in _grouped(options):
        if option.name.startswith("no-"):
            found.pop(option.name[3:], None)
        elif option.name == "enabled":
            found.pop("disabled", None)
        else:
            found[option.name] = option
    return found


# ---------------------------------------------------------------- importer --

def import_haproxy(paths: list[str], ctx: ImportContext) -> tuple[list[ServiceDraft], list[Note]]:
    """Services for the frontend and listen sections of HAProxy configuration files (read in order)."""
    configs = []
    for path in paths:
        config, errors = parse_haproxy(ctx.read(path), path)
        if config is None:
            raise ConfigError(errors, ctx.sources)
        configs.append(config)
    proxies, global_ = _proxies(configs, ctx)
    backends = {p.name: p for p in proxies if p.kind in ("backend", "listen")}
    header = _global_notes(global_, ctx)
    services, names, used = [], Names(), set()
    for proxy in (p for p in proxies if p.kind in ("frontend", "listen")):
        builder = _ServiceBuilder(proxy, backends, global_, ctx)
        service = builder.build(names)
        used.update(builder.pools)
        if service is None:
            header.append(builder.skipped)
        else:
            services.append(service)
    tables = {words[words.index("table") + 1] for p in proxies for s in p.lines("stick")
              for words in [[w.text for w in s.args]] if "table" in words[:-1]}
    for name in backends:
        if name not in used and name not in tables and backends[name].kind == "backend":
            header.append(ctx.explain(backends[name].span, f"backend `{name}` is used by no frontend: not imported"))
    return services, header


def _global_notes(global_: dict[str, Statement], ctx: ImportContext) -> list[Note]:
    return [ctx.lost(s.span, s.text, _GLOBAL_LOST[k]) for k, s in global_.items() if k in _GLOBAL_LOST]


class _ServiceBuilder:
    """Builds the service of one frontend or listen section."""

    def __init__(self, front: _Proxy, backends: dict[str, _Proxy], global_: dict[str, Statement],
                 ctx: ImportContext):
        self.front = front
        self.backends = backends
        self.global_ = global_
        self.ctx = ctx
        self.pools: dict[str, _Proxy] = {}  # pool name in the spec -> backend section
        self.pool_names: dict[str, str] = {}  # backend section name -> pool name
        self.handled: set[int] = set()  # id() of statements turned into spec text
        self.skipped: Note | None = None

    def build(self, names: Names) -> ServiceDraft | None:
        service = ServiceDraft(names.take(self.front.name, "frontend"))
        self.names = Names()
        self.admitted: list[str] | None = None  # the clients `tcp-request` rules let in (None: all)
        self._binds(service)
        if not service.vips:
            self.skipped = self.ctx.skip(self.front.span, f"{self.front.kind} {self.front.name}",
                                         "no usable `bind` line (an IP address and port): not imported")
            return None
        if self._stats_only():
            self.skipped = self.ctx.explain(self.front.span, f"{self.front.kind} {self.front.name} serves HAProxy's "
                                                             "statistics page itself and balances nothing: not "
                                                             "imported")
            return None
        self._mode(service)
        self._rules(service)
        primary = next(iter(self.pools.values()), None)
        if primary is not None:
            self._behaviour(service, primary)
        self._leftovers(service)
        return service

    # --- listeners
    def _binds(self, service: ServiceDraft) -> None:
        for bind in self.front.lines("bind"):
            self.handled.add(id(bind))
            for text in bind.args[0].text.split(","):
                self._bind_address(service, bind, text)
            self._bind_options(service, bind)
        unbound = service.unbound()
        if unbound:
            binds = "; ".join(b.text for b in self.front.lines("bind"))
            service.listen_notes.append(self.ctx.lost(self.front.span, binds, unbound))

    def _stats_only(self) -> bool:
        """A `listen stats` section: `stats enable` or `stats uri`, and no server or backend to send traffic to."""
        front = self.front
        stats = any(s.args and s.args[0].text in ("enable", "uri") for s in front.lines("stats"))
        return stats and not (front.lines("server") or front.lines("server-template") or front.lines("use_backend")
                              or front.setting("default_backend"))

    def _bind_address(self, service: ServiceDraft, bind: Statement, text: str) -> None:
        family, _, rest = text.rpartition("@") if "@" in text else ("", "", text)
        if family not in ("", "ipv4", "ipv6", "tcp", "tcp4", "tcp6") or (family == "" and rest.startswith("/")):
            why = ("QUIC (HTTP/3 over UDP) is terminated here; the spec does not listen on it"
                   if family.startswith("quic") else "not an IP listener")
            service.listen_notes.append(self.ctx.lost(bind.span, f"bind {text}", why))
            return
        parts = addresses.split_host_port(rest)
        ports = addresses.port_range(parts.port)
        host_name = re.fullmatch(r"[A-Za-z0-9.-]*[A-Za-z-][A-Za-z0-9.-]*", parts.host) is not None
        if "$" in rest or (host_name and ports is not None):
            why = ("an environment variable, set when HAProxy starts" if "$" in rest else
                   "a host name, resolved when HAProxy starts")
            service.listen_notes.append(self.ctx.lost(bind.span, f"bind {text}", f"{why}: the spec needs the "
                                                                                  "address and port; left out"))
            return
        if ports is None:
            self.ctx.fail(bind.args[0].span, f"`{text}` has no valid port",
                          help="write the address and port as `10.0.0.1:80` or `:80`")
        vips = self._vips(service, bind, parts.host, family)
        for vip in vips:
            service.add_vip(vip)
        service.add_listen("tcp", *ports)
        for vip in [None] if addresses.every_address(parts.host) else vips:
            service.bind(vip, "tcp", *ports)

    def _vips(self, service: ServiceDraft, bind: Statement, host: str, family: str) -> list:
        if addresses.every_address(host):
            return self._wildcard(service, bind, "::" if host == "::" or family in ("ipv6", "tcp6") else "0.0.0.0")
        address = addresses.ip(host)
        if address is None:
            self.ctx.fail(bind.args[0].span, f"`{host}` is not an IP address",
                          help="lbspec needs the address clients connect to")
        return [address]

    def _wildcard(self, service: ServiceDraft, bind: Statement, any_address: str) -> list:
        if self.ctx.options.vips:
            service.vip_notes.append(self.ctx.explain(bind.span, f"`{bind.text}` listens on every address; "
                                                                 "the VIPs are the ones given with --vip"))
            return list(self.ctx.options.vips)
        service.vip_notes.append(self.ctx.lost(bind.span, bind.text, "listens on every address of the host; "
                                                                     f"the spec says {any_address}: give the "
                                                                     "addresses clients use with --vip"))
        return [ipaddress.ip_address(any_address)]

    def _bind_options(self, service: ServiceDraft, bind: Statement) -> None:
        words = [w.text for w in bind.args[1:]]
        for option, why in _BIND_LOST.items():
            if option in words:
                service.listen_notes.append(self.ctx.lost(bind.span, bind.text, why))

    # --- mode
    def _mode(self, service: ServiceDraft) -> None:
        statement = self.front.setting("mode")
        mode = self.front.word("mode", "tcp")
        if statement is not None:
            self.handled.add(id(statement))
        span = statement.span if statement is not None else self.front.span
        if mode == "http":
            note = self.ctx.lost(span, "mode http", HTTP_REQUESTS.format("HAProxy", "header names in lower case, "
                                                                                     "at least"))
        else:
            note = self.ctx.explain(span, f"`mode {mode}`: HAProxy ends each client connection and opens "
                                          "its own to the server")
        service.mode = Line("mode proxy", [note])

    # --- pools and rules
    def _pool(self, service: ServiceDraft, backend: _Proxy) -> str:
        if backend.name in self.pool_names:
            return self.pool_names[backend.name]
        name = self.names.take(backend.name, "pool")
        self.pool_names[backend.name] = name
        self.pools[name] = backend
        pool = PoolDraft(name)
        for statement in backend.lines("server"):
            server = self._server(backend, statement, pool)
            if server is not None:
                pool.backends.append(self._backend_draft(server, name))
        for statement in backend.lines("server-template"):
            self.handled.add(id(statement))
            pool.notes.append(self.ctx.lost(statement.span, statement.text, _LOST_WHY["server-template"]))
        service.pools.append(pool)
        return name

    def _backend_section(self, word) -> _Proxy:
        found = self.backends.get(word.text)
        if found is None:
            self.ctx.fail(word.span, f"no backend named `{word.text}`",
                          help="define it with `backend NAME`, or fix the name")
        return found

    def _rules(self, service: ServiceDraft) -> None:
        """`use_backend` rules in order, then the default; the default backend's pool comes first.  Where
        `tcp-request` rules admit some clients only, every rule takes those alone, and the rest are rejected."""
        default = self.front.setting("default_backend")
        target = None
        if default is not None:
            self.handled.add(id(default))
            target = self._pool(service, self._backend_section(default.args[0]))
        elif self.front.kind == "listen":
            target = self._pool(service, self.front)
        self.admitted = self._admitted(service)
        for statement in self.front.lines("use_backend"):
            self._use_backend(service, statement)
        if target is not None:
            self._forward(service, [], target, None)
        if self.admitted is not None:
            why = "HAProxy's `tcp-request` rules reject every other client"
        elif target is not None:
            return
        elif not service.forwards:
            why = "no `default_backend` and no `use_backend`: HAProxy closes every connection"
        else:
            why = "with no `default_backend`, HAProxy closes connections no `use_backend` takes"
        service.otherwise = Line("otherwise reject", [self.ctx.explain(self.front.span, why)])

    def _use_backend(self, service: ServiceDraft, statement: Statement) -> None:
        self.handled.add(id(statement))
        if "%[" in statement.args[0].text:
            service.tail.append(self.ctx.lost(statement.span, statement.text, "the backend is chosen at run time"))
            return
        pool = self._pool(service, self._backend_section(statement.args[0]))
        if not statement.condition:
            self._forward(service, [], pool, None)
            return
        match = _Condition(self.front, service, self.handled).read(statement.condition)
        if match is None:
            note = self.ctx.lost(statement.span, statement.text, "only `src` and `dst_port` conditions joined by "
                                                                 f"`and` are represented; pool `{pool}` gets no rule")
            service.tail.append(note)
            return
        ports, sources = match
        if sources == []:
            service.tail.append(self.ctx.explain(statement.span, f"`{statement.text}` can never match a VIP's "
                                                                 "address family: no rule"))
            return
        self._forward(service, ports, pool, sources)

    def _forward(self, service: ServiceDraft, ports: list[tuple[int, int]], pool: str, sources: list[str] | None
                 ) -> None:
        """A rule to ``pool`` for ``sources`` (None: any client), of the clients the `tcp-request` rules admit."""
        if self.admitted is not None:
            sources = addresses.overlap(sources, self.admitted)
            if not sources:
                return  # no client it takes is admitted
        service.forwards.append(Line(forward_text("tcp", ports, pool, sources or ())))

    def _admitted(self, service: ServiceDraft) -> list[str] | None:
        """The client prefixes `tcp-request` rules admit, where they are a list of clients let in -- `accept
        if` source conditions, then a `reject` of the rest, all of one kind (`connection`, `session` or
        `content`) -- else None (no such rules, or rules that do more: they stay `not represented`)."""
        rules = self.front.lines("tcp-request")
        if not rules:
            return None
        *accepts, last = [[w for w in rule.args] for rule in rules]
        if len({words[0].text for words in [*accepts, last]}) != 1 or last[0].text not in _ADMITTING \
                or [w.text for w in last[1:]] != ["reject"]:
            return None
        admitted = []
        for words in accepts:
            if len(words) < 4 or words[1].text != "accept" or words[2].text != "if":
                return None
            match = _Condition(self.front, service, self.handled).read(words[2:])
            if match is None or match[0] or match[1] is None:  # a port, or no source, decides
                return None
            admitted += match[1]
        for rule in rules:
            self.handled.add(id(rule))
        return admitted

    # --- servers
    def _server(self, backend: _Proxy, statement: Statement, pool: PoolDraft) -> _Server | None:
        self.handled.add(id(statement))
        name_word, address_word = statement.args[0], statement.args[1]
        server = _Server(statement, name_word.text, backend.server_options(statement))
        text = address_word.text
        family, _, rest = text.rpartition("@") if "@" in text else ("", "", text)
        parts = addresses.split_host_port(rest)
        server.address = addresses.ip(parts.host)
        if family not in ("", "ipv4", "ipv6", "tcp", "tcp4", "tcp6") or server.address is None:
            why = ("a host name: the spec needs the address it resolves to" if family == "" else
                   "not an IP server")
            pool.notes.append(self.ctx.lost(statement.span, statement.text, f"`{text}` is {why}; not imported"))
            return None
        if server.address.is_unspecified:
            pool.notes.append(self.ctx.lost(statement.span, statement.text, "connections go to the client's "
                                                                            "original destination; not imported"))
            return None
        if parts.port:
            server.port = addresses.port_number(parts.port)
            if server.port is None:
                if parts.port[0] in "+-":
                    pool.notes.append(self.ctx.lost(statement.span, statement.text, "the port is relative to the "
                                                                                    "client's; not imported"))
                    return None
                self.ctx.fail(address_word.span, f"`{parts.port}` is not a port",
                              help="ports run from 1 to 65535")
        return server

    def _backend_draft(self, server: _Server, pool: str) -> BackendDraft:
        draft = BackendDraft(self.names.take(server.name, "server", prefix=pool), server.address, server.port)
        draft.weight = server.value("weight", 1)
        draft.backup = server.option("backup") is not None
        maxconn = server.value("maxconn", 0)
        draft.max_conn = maxconn or None
        if server.option("disabled") is not None:
            draft.weight = 0
            draft.notes.append(self.ctx.explain(server.statement.span, f"server `{server.name}` is `disabled` "
                                                                       "(in maintenance): weight 0"))
        for option in server.options.values():
            if option.name in _SERVER_LOST:
                draft.notes.append(self.ctx.lost(option.span, option.text, _SERVER_LOST[option.name]))
            elif option.name not in _SERVER_IGNORED:
                draft.notes.append(self.ctx.lost(option.span, option.text, "lbspec does not know this server option"))
        return draft

    # --- balance, affinity, health, failover
    def _behaviour(self, service: ServiceDraft, primary: _Proxy) -> None:
        lines = {name: _Behaviour(backend, self.global_, self.ctx, self.handled, self.backends).lines(self.front)
                 for name, backend in self.pools.items()}
        chosen = lines[next(iter(self.pools))]
        service.balance, service.affinity, service.health = chosen
        for name, others in list(lines.items())[1:]:
            for mine, theirs, what in zip(chosen, others, ("balance", "affinity", "health")):
                service.tail.extend(n for n in theirs.notes if n.text.startswith(NOT_REPRESENTED))
                if theirs.text != mine.text:
                    service.tail.append(self.ctx.lost(
                        self.pools[name].span, f"backend {self.pools[name].name}",
                        f"its {what} is `{theirs.text}`, but a service has one {what}: the spec takes "
                        f"`{mine.text}` from `{primary.name}`"))
        self._mixed_checks(service)
        self._failovers(service)

    def _all_servers(self) -> list[tuple[str, _Server]]:
        out = []
        for name, backend in self.pools.items():
            out += [(name, server) for server in backend.servers()]
        return out

    def _mixed_checks(self, service: ServiceDraft) -> None:
        servers = self._all_servers()
        checked = [s.name for _, s in servers if s.checked]
        unchecked = [s.name for _, s in servers if not s.checked]
        if checked and unchecked:
            span = next(s.statement.span for _, s in servers if s.checked)
            service.health = Line("health none", [self.ctx.lost(
                span, "check", f"checked: {', '.join(checked)}; not checked: {', '.join(unchecked)}; a service "
                               "has one health setting, and `none` is the one that holds for all")])

    def _failovers(self, service: ServiceDraft) -> None:
        for pool in service.pools:
            backups = [b.name for b in pool.backends if b.backup]
            if not backups:
                continue
            backend = self.pools[pool.name]
            notes = [self.ctx.explain(backend.span, "HAProxy sends traffic to backup servers only when "
                                                    "every other server is down")]
            allbackups = backend.setting("option allbackups")
            if allbackups is not None:
                self.handled.add(id(allbackups))
            elif len(backups) > 1:
                notes.append(self.ctx.lost(backend.span, f"backend {backend.name}", "without `option allbackups` "
                                           "HAProxy uses only the first backup that is up; the spec shares the "
                                           "traffic among all backups"))
            service.failovers.append(Line(failover_text(backups, 1), notes))

    # --- everything else
    def _leftovers(self, service: ServiceDraft) -> None:
        seen: set[int] = set()
        for proxy in [self.front, *(p for p in self.pools.values() if p is not self.front)]:
            for statement in [*proxy.settings.values(), *proxy.listed]:
                if id(statement) in self.handled or id(statement) in seen:
                    continue
                seen.add(id(statement))
                note = self._leftover(statement)
                if note is not None:
                    service.tail.append(note)

    def _leftover(self, statement: Statement) -> Note | None:
        key = _key(statement) or statement.keyword
        if statement.keyword in ("no", "mode"):  # a backend's mode is its frontend's (HAProxy refuses others)
            return None
        if key in _IGNORED or statement.keyword in _IGNORED:
            return None
        if statement.keyword == "maxconn":
            return self.ctx.lost(statement.span, statement.text, _LOST_WHY["maxconn"])
        why = _LOST_WHY.get(key) or _LOST_WHY.get(statement.keyword) or "the spec language has no equivalent"
        return self.ctx.lost(statement.span, statement.text, why)


_ADMITTING = ("connection", "session", "content")  # `tcp-request` rules that accept or reject a client


class _Condition:
    """Reads `if A B`, `if { src 10.0.0.0/8 }`: ports and source prefixes, or None if beyond the spec."""

    def __init__(self, front: _Proxy, service: ServiceDraft, handled: set[int]):
        self.front = front
        self.service = service
        self.handled = handled

    def read(self, words) -> tuple[list[tuple[int, int]], list[str] | None] | None:
        if words[0].text != "if":
            return None
        terms = self._terms([w.text for w in words[1:]])
        if terms is None:
            return None
        ports: list[tuple[int, int]] | None = None
        sources: list[str] | None = None
        for criterion, values in terms:
            if criterion == "dst_port" and ports is None:
                ports = self._ports(values)
                if ports is None:
                    return None
            elif criterion == "src" and sources is None:
                sources = self._sources(values)
                if sources is None:
                    return None
            else:
                return None
        return ports or [], sources

    def _terms(self, words: list[str]) -> list[tuple[str, list[str]]] | None:
        terms, index = [], 0
        while index < len(words):
            word = words[index]
            if word == "{":
                close = words.index("}", index) if "}" in words[index:] else -1
                if close < 0 or close - index < 3:
                    return None
                terms.append((words[index + 1], words[index + 2:close]))
                index = close + 1
            elif word in ("!", "||", "or") or word.startswith("!"):
                return None
            else:
                acl = self._acl(word)
                if acl is None:
                    return None
                terms.append(acl)
                index += 1
        return terms

    def _acl(self, name: str) -> tuple[str, list[str]] | None:
        found = [s for s in self.front.lines("acl") if s.args[0].text == name]
        criteria = {s.args[1].text for s in found}
        if not found or len(criteria) != 1:
            return None
        for statement in found:
            self.handled.add(id(statement))
        return criteria.pop(), [w.text for s in found for w in s.args[2:]]

    @staticmethod
    def _ports(values: list[str]) -> list[tuple[int, int]] | None:
        out = []
        for value in values:
            found = addresses.port_range(value.replace(":", "-"))
            if found is None:
                return None
            out.append(found)
        return out

    def _sources(self, values: list[str]) -> list[str] | None:
        families = {v.version for v in self.service.vips}
        out = []
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                return None
            if network.version in families:
                out.append(addresses.prefix_text(network))
        return out


class _Behaviour:
    """The balance, affinity and health lines of one backend section."""

    def __init__(self, backend: _Proxy, global_: dict[str, Statement], ctx: ImportContext, handled: set[int],
                 sections: dict[str, _Proxy] | None = None):
        self.backend = backend
        self.sections = sections or {}  # where `stick on src table NAME` finds its table
        self.global_ = global_
        self.ctx = ctx
        self.handled = handled

    def _use(self, key: str) -> Statement | None:
        found = self.backend.setting(key)
        if found is not None:
            self.handled.add(id(found))
        return found

    def lines(self, front: _Proxy) -> tuple[Line, Line, Line]:
        return self._balance(), self._affinity(front), self._health()

    # --- balance
    def _balance(self) -> Line:
        line = self._algorithm()
        if not line.waiver:
            changing = sorted({o.name for server in self.backend.servers() for o in server.options.values()
                               if o.name in _WEIGHT_CHANGING})
            if changing:
                line.waiver = (f"HAProxy changes the servers' weights at run time (`{'`, `'.join(changing)}`): "
                               "shares do not follow the weights the spec gives")
        return line

    def _algorithm(self) -> Line:
        statement = self._use("balance")
        hash_type = self._use("hash-type")
        consistent = hash_type is not None and "consistent" in [w.text for w in hash_type.args]
        if statement is None:
            return Line(balance_text("round_robin"))
        algorithm = statement.args[0].text
        arguments = [w.text for w in statement.args[1:]]
        kind = "maglev" if consistent else "hash"
        if algorithm in ("roundrobin", "static-rr"):
            return Line(balance_text("round_robin"))
        if algorithm == "leastconn":
            return Line(balance_text("least_conn"))
        if algorithm == "source" or (algorithm == "hash" and arguments[:1] == ["src"]):
            return Line(balance_text(kind, ("src",)), self._hash_notes(hash_type))
        if algorithm.startswith("random"):
            return self._random(statement, algorithm)
        if algorithm == "first":
            return Line(balance_text("round_robin"), [self.ctx.lost(
                statement.span, statement.text, "fills the first server up to its `maxconn` before the next")],
                waiver=f"HAProxy's `{statement.text}` fills one server before the next: no share is meant")
        return Line(balance_text("random"), [self.ctx.lost(
            statement.span, statement.text, "hashes HTTP or session data the spec cannot see; balanced as "
                                            "`random`, which is how it looks from the network")],
            waiver=UNSEEN_HASH.format(statement.text))

    def _hash_notes(self, hash_type: Statement | None) -> list[Note]:
        if hash_type is None:
            return [self.ctx.explain(self.backend.span, "`hash-type map-based` (the default): a hash modulo the "
                                                        "servers' weights")]
        return [self.ctx.explain(hash_type.span, f"`{hash_type.text}`")]

    def _random(self, statement: Statement, algorithm: str) -> Line:
        match = re.fullmatch(r"random(?:\(([0-9]+)\))?", algorithm)
        draws = int(match.group(1)) if match and match.group(1) else 2
        if draws <= 1:
            return Line(balance_text("random"))
        return Line(balance_text("least_conn"), [self.ctx.lost(
            statement.span, statement.text, f"HAProxy draws {draws} servers at random and takes the less "
                                            f"loaded (the default is 2): {LOAD_AWARE}")])

    # --- affinity
    def _affinity(self, front: _Proxy) -> Line:
        sticks = [s for s in self.backend.lines("stick") if len(s.args) >= 2]
        for stick in sticks:
            self.handled.add(id(stick))
        keys = {s.args[1].text for s in sticks}
        if sticks and keys == {"src"}:
            return self._client_affinity(sticks[0])
        notes = [self.ctx.lost(s.span, s.text, "only `stick on src` is represented (as `affinity client`)")
                 for s in sticks]
        timeout = self.backend.timeout("tunnel") or _smallest(front.timeout("client"), self.backend.timeout("server"))
        notes.append(self.ctx.explain(self.backend.span, "HAProxy relays each client connection over one server "
                                                         "connection: a connection never moves, whatever the "
                                                         "balance"))
        if timeout is None:
            notes.append(self.ctx.explain(front.span, "no `timeout client`/`server`/`tunnel`: idle connections "
                                                      "stay open for ever"))
            return Line(affinity_text("flow"), notes)
        notes.append(self.ctx.explain(None, f"an idle connection is closed after {duration(timeout)} "
                                            "(`timeout tunnel`, or the smaller of `timeout client` and `timeout "
                                            "server`)"))
        return Line(affinity_text("flow", timeout), notes)

    def _client_affinity(self, stick: Statement) -> Line:
        table = self._use("stick-table")
        words = [w.text for w in stick.args]
        elsewhere = None
        if "table" in words and words.index("table") + 1 < len(words):  # another section's table
            elsewhere = words[words.index("table") + 1]
            other = self.sections.get(elsewhere)
            table = other.setting("stick-table") if other is not None else None
        expire = None
        if table is not None:
            table_words = [w.text for w in table.args]
            if "expire" in table_words and table_words.index("expire") + 1 < len(table_words):
                expire = haproxy_time(table_words[table_words.index("expire") + 1])
        notes = [self.ctx.explain(stick.span, f"`{stick.text}`: a client stays on its server while its stick "
                                              "table entry lives")]
        if expire is None:
            why = ("entries without `expire` last until the table is full" if table is not None or elsewhere is None
                   else f"table `{elsewhere}` is not a backend's: its expiry is not read")
            notes.append(self.ctx.lost(stick.span, stick.text, f"{why}; the spec takes its default timeout"))
            return Line(affinity_text("client"), notes)
        return Line(affinity_text("client", expire), notes)

    # --- health
    def _health(self) -> Line:
        servers = self.backend.servers()
        checked = [s for s in servers if s.checked]
        if not checked:
            self._unused_check_settings()
            return Line("health none", [self.ctx.explain(self.backend.span, "no server has `check`: nothing "
                                                                            "notices that a server died")])
        kind, path, notes, app_level = self._check_kind()
        every, timeout, fall, rise, timing = self._timing(checked, app_level)
        notes.append(timing)
        return Line(health_text(kind, path, every, timeout, fall, rise), notes)

    def _unused_check_settings(self) -> None:
        """Check settings do nothing when no server is checked: they are not worth a comment."""
        for key in ["option httpchk", "option tcp-check", "timeout check", *(f"option {o}" for o in _APP_CHECKS)]:
            self._use(key)
        for statement in [*self.backend.lines("http-check"), *self.backend.lines("tcp-check")]:
            self.handled.add(id(statement))

    def _check_kind(self) -> tuple[str, str | None, list[Note], bool]:
        httpchk = self._use("option httpchk")
        if httpchk is not None:
            return self._http_check(httpchk)
        for option, what in _APP_CHECKS.items():
            found = self._use(f"option {option}")
            sent = _app_sent(option, [w.text for w in found.args[1:]]) if found is not None else None
            if sent is not None:
                does = f"sends {what}" if sent else "reads the server's greeting, and sends nothing"
                return "tcp", sent or None, [self.ctx.explain(found.span, f"`{found.text}`: the check {does}")], True
            if found is not None:
                return "tcp", None, [self.ctx.lost(found.span, found.text, f"the check sends {what}; the spec's "
                                                                          "`tcp` check only opens a connection")], True
        tcp_check = self._use("option tcp-check")
        rules = self.backend.lines("tcp-check")
        for rule in rules:
            self.handled.add(id(rule))
        exchanges = [r for r in rules if r.args and r.args[0].text in ("send", "send-binary", "expect",
                                                                       "send-lf", "send-binary-lf")]
        notes = self._elsewhere(rules) if tcp_check is not None else []
        if tcp_check is None or not exchanges:
            return "tcp", None, notes, False
        # what the LB sends a backend starts with the first `send`, whatever it expects before or after
        sends = [r for r in exchanges if r.args[0].text != "expect"]
        sent = _sent(sends[0]) if sends else None
        if sends and sent is None:
            return "tcp", None, [*notes, self.ctx.lost(sends[0].span, sends[0].text, "the check sends data the "
                                 "spec cannot write; its `tcp` check only opens a connection")], True
        notes += [self.ctx.lost(r.span, r.text, "the spec's `tcp` check does not say which answers pass")
                  for r in exchanges if r.args[0].text == "expect"][:1]
        return "tcp", sent, notes, True

    def _elsewhere(self, rules: list[Statement]) -> list[Note]:
        """`tcp-check connect port 8081`, `http-check connect addr ...`: the check goes somewhere else."""
        notes = []
        for rule in rules:
            words = [w.text for w in rule.args]
            if words[:1] == ["connect"] and ("port" in words or "addr" in words):
                notes.append(self.ctx.lost(rule.span, rule.text, _SERVER_LOST["port" if "port" in words else "addr"]))
        return notes

    def _http_check(self, httpchk: Statement) -> tuple[str, str | None, list[Note], bool]:
        words = [w.text for w in httpchk.args[1:]]
        path = next((w for w in words if w.startswith("/")), "/")
        notes = self._elsewhere(self.backend.lines("http-check"))
        for rule in self.backend.lines("http-check"):
            self.handled.add(id(rule))
            rule_words = [w.text for w in rule.args]
            if rule_words[:1] == ["send"] and "uri" in rule_words[:-1]:
                path = rule_words[rule_words.index("uri") + 1]
            elif rule_words[:1] == ["expect"]:
                notes.append(self.ctx.lost(rule.span, rule.text, "the spec's `http` check does not say which "
                                                                 "responses pass"))
        return "http", path, notes, True

    def _timing(self, checked: list[_Server], app_level: bool) -> tuple[float, float, int, int, Note]:
        """The slowest check settings among the servers, as the spec words them."""
        check_timeout = self._use("timeout check")
        connect = self.backend.timeout("connect")
        spread = self._spread()
        periods, timeouts = [], []
        for server in checked:
            inter = server.value("inter", 2.0)
            fast = server.value("fastinter", inter)
            timeout = inter if check_timeout is None else (
                min(connect or inter, inter) + (check_timeout.value if app_level else 0.0))
            timeouts.append(timeout)
            periods.append(max(inter, fast) * (1 + spread / 100) + timeout)
        every, timeout = max(periods), max(timeouts)
        fall = max(s.value("fall", 3) for s in checked)
        rise = max(s.value("rise", 2) for s in checked)
        inter = max(s.value("inter", 2.0) for s in checked)
        note = self.ctx.explain(checked[0].statement.span, f"HAProxy starts a check `inter` ({duration(inter)}) "
                                f"after the previous one ends, and a check may take {duration(timeout)}: "
                                f"checks start at most {duration(every)} apart")
        return every, timeout, fall, rise, note

    def _spread(self) -> float:
        statement = self.global_.get("spread-checks")
        if statement is None or not statement.args or not statement.args[0].text.isdigit():
            return 0.0
        return float(statement.args[0].text)


def _smallest(*values: float | None) -> float | None:
    found = [v for v in values if v is not None]
    return min(found) if found else None
