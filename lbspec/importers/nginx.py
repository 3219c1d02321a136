"""`lbspec import nginx`: each `server` block that proxies becomes a service.

crossplane parses the configuration (following `include`); this module reads
`stream` and `http` blocks.  nginx ends every client connection (or UDP
session) and opens its own to an upstream server, so every service is
`mode proxy`.  docs/importers.md gives the whole mapping and the reasons for it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import NoReturn

from lbspec.importers import addresses
from lbspec.importers.draft import (
    ACCEPT_PROXY, HTTP_REQUESTS, LOAD_AWARE, PROXY_HEADER, UNSEEN_HASH, BackendDraft, ImportContext, Line, Names, Note,
    PoolDraft, ServiceDraft, affinity_text, balance_text, failover_text, forward_text, health_text, line_span,
)
from lbspec.ir import Span

__all__ = ["import_nginx", "nginx_time"]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
_TIME = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|M|y)?)+")

# Directives that change nothing about where traffic goes or what reaches a server.
_IGNORED = {
    "access_log", "error_log", "log_format", "open_log_file_cache", "tcp_nodelay", "proxy_buffer_size",
    "proxy_connect_timeout", "proxy_socket_keepalive", "resolver", "resolver_timeout", "preread_buffer_size",
    "preread_timeout", "variables_hash_max_size", "variables_hash_bucket_size", "server_names_hash_max_size",
    "server_names_hash_bucket_size", "zone", "keepalive", "keepalive_requests", "keepalive_time",
    "keepalive_timeout", "root", "index", "server_name", "charset", "sendfile", "tcp_nopush", "types",
    "default_type", "include", "gzip", "gzip_types", "client_max_body_size", "proxy_read_timeout",
    "proxy_send_timeout", "proxy_http_version", "proxy_buffering", "proxy_buffers", "proxy_busy_buffers_size",
    "proxy_redirect", "add_header", "expires", "etag", "server_tokens", "ssl_certificate",
    "ssl_certificate_key", "ssl_protocols", "ssl_ciphers", "ssl_prefer_server_ciphers", "ssl_session_cache",
    "ssl_session_timeout", "ssl_session_tickets", "ssl_dhparam", "ssl_ecdh_curve", "ssl_handshake_timeout",
    "ssl_password_file", "ssl_conf_command", "proxy_ssl_certificate", "proxy_ssl_certificate_key",
    "proxy_ssl_trusted_certificate", "proxy_ssl_verify", "proxy_ssl_verify_depth", "proxy_ssl_protocols",
    "proxy_ssl_ciphers", "proxy_ssl_name", "proxy_ssl_server_name", "proxy_ssl_session_reuse",
    "health_check_timeout", "listen", "proxy_pass", "allow", "deny", "proxy_timeout", "proxy_responses",
    "health_check", "location", "upstream", "server", "proxy_next_upstream", "proxy_next_upstream_tries",
    "proxy_next_upstream_timeout",
    # on, the LB does what a spec takes for granted; off (the default), answers to clients that half-close are
    # lost, which `lbspec monitor` reports (LB215)
    "proxy_half_close",
}

_LOST_WHY = {
    "proxy_protocol": PROXY_HEADER,
    "proxy_ssl": "TLS to the upstream: the server receives re-encrypted bytes, not the client's",
    "proxy_bind": "connections to the upstream leave from a chosen (maybe the client's) address",
    "proxy_next_upstream": "a connection (in `http`, a request) that fails on its server is passed to the next "
                           "server",
    "proxy_next_upstream_tries": "how many servers a failed connection is tried on",
    "proxy_next_upstream_timeout": "how long a failed connection is retried on other servers",
    "proxy_download_rate": "the download rate is limited",
    "proxy_upload_rate": "the upload rate is limited",
    "limit_conn": "connections beyond the limit are closed",
    "limit_conn_zone": "connections beyond the limit are closed",
    "limit_req": "requests beyond the rate are delayed or refused",
    "return": "nginx answers by itself instead of proxying",
    "pass": "connections are passed to another server block",
    "ssl_preread": "the upstream may be chosen from the TLS ClientHello",
    "map": "variables computed from the connection may choose the upstream",
    "geo": "variables computed from the client address may choose the upstream",
    "split_clients": "variables computed from a hash may choose the upstream",
    "set": "variables may choose the upstream",
    "proxy_set_header": "requests reach the server with changed headers",
    "rewrite": "requests reach the server rewritten",
    "auth_basic": "requests without credentials are refused",
    "sticky": "sessions stick to a server by cookie or route (nginx Plus)",
    "ntlm": "NTLM connections are bound to their upstream connection (nginx Plus)",
    "queue": "requests wait in a queue when all servers are busy (nginx Plus)",
    "state": "the servers come from a state file at run time (nginx Plus)",
    "least_time": "picks the server with the least average time and connections (nginx Plus)",
    "slow_start": "a server that comes back takes traffic gradually (nginx Plus)",
    "resolve": "the server's address comes from DNS at run time",
    "service": "servers come from DNS SRV records at run time",
    "route": "the server belongs to a sticky route (nginx Plus)",
    "drain": "only sticky sessions reach the server (nginx Plus)",
}


# Families of directives that tune buffers, caches, logs, compression or TLS certificates.
_IGNORED_PREFIXES = ("gzip", "types_hash", "server_names_hash", "variables_hash", "map_hash", "proxy_headers_hash",
                     "open_file_cache", "client_body_", "client_header_", "large_client_header", "lingering_",
                     "proxy_temp", "proxy_cache", "proxy_buffer", "log_", "error_page", "sendfile", "tcp_", "aio",
                     "directio", "output_buffers", "send_timeout", "reset_timedout", "keepalive_", "ssl_",
                     "proxy_ssl_", "http2", "http3", "quic_", "server_tokens", "absolute_redirect", "port_in_redirect")
_NOT_IGNORED = {"ssl_preread", "ssl_verify_client", "ssl_client_certificate"}


def _ignored(name: str) -> bool:
    return name in _IGNORED or (name.startswith(_IGNORED_PREFIXES) and name not in _NOT_IGNORED)


# Directives of a `stream` or `http` block that only define things servers may use.
_CONTEXT_ONLY = {"limit_conn_zone", "limit_req_zone", "map", "geo", "split_clients", "log_format", "upstream",
                 "server", "match", "js_import", "js_set", "perl_modules", "perl_require"}


def nginx_time(text: str) -> float | None:
    """An nginx time (`30s`, `1m30s`, `500ms`; seconds without a unit) in seconds."""
    if not _TIME.fullmatch(text):
        return None
    return sum(int(n) * _UNITS[u or "s"] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|M|y)?", text))


# ------------------------------------------------------------------ reading --

@dataclass
class _Directive:
    name: str
    args: list[str]
    span: Span
    block: list[_Directive] | None = None

    @property
    def text(self) -> str:
        return " ".join([self.name, *self.args])

    def children(self, name: str) -> list[_Directive]:
        return [d for d in self.block or () if d.name == name]

    def child(self, name: str) -> _Directive | None:
        found = self.children(name)
        return found[-1] if found else None


def _parse(path: str, ctx: ImportContext) -> list[_Directive]:
    import crossplane

    ctx.read(path)
    payload = crossplane.parse(path, onerror=lambda error: error, catch_errors=True, strict=False,
                               check_ctx=True, check_args=True)
    for config in payload["config"]:
        if config["file"] not in ctx.sources and config["status"] == "ok":
            ctx.read(config["file"])
    if payload["errors"]:
        _fail(payload["errors"][0], ctx)
    configs = payload["config"]
    return _tree(configs[0]["parsed"], configs[0]["file"], configs, ctx)


def _fail(error: dict, ctx: ImportContext) -> None:
    file, line, message = error.get("file") or "", error.get("line"), str(error.get("error", ""))
    if isinstance(error.get("callback"), StopIteration):
        _fail_unterminated(file, ctx)
    message = re.sub(rf" in {re.escape(file)}:[0-9]+$", "", message)
    missing = re.match(r"\[Errno [0-9]+\] (.*): '(.*)'$", message)
    if missing:
        message = f"cannot read {missing.group(2)}: {missing.group(1).lower()}"
    hint = ("pass the main configuration file (nginx.conf), which includes this one"
            if "not allowed here" in message else None)
    ctx.fail(line_span(ctx.sources, file, line) if line else None, message, help=hint)


def _fail_unterminated(file: str, ctx: ImportContext) -> NoReturn:
    """The file ended inside a directive: crossplane then reports StopIteration, with no message and no line.

    A file in another syntax (a HAProxy configuration, say) is one long unterminated directive.
    """
    import crossplane

    name, line = None, None
    for token, token_line, quoted in crossplane.lex(file):
        if token in (";", "{", "}") and not quoted:
            name = None
        elif name is None and (quoted or not token.startswith("#")):
            name, line = token, token_line
    ctx.fail(line_span(ctx.sources, file, line), f"unexpected end of file: `{name}` is not terminated by `;`",
             label="the directive starts here",
             help="is this an nginx configuration? Each directive ends with `;` or a `{ ... }` block")


def _tree(parsed: list[dict], file: str, configs: list[dict], ctx: ImportContext) -> list[_Directive]:
    out = []
    for item in parsed:
        if item["directive"] == "include":
            for index in item.get("includes", ()):
                out += _tree(configs[index]["parsed"], configs[index]["file"], configs, ctx)
            continue
        block = item.get("block")
        span = line_span(ctx.sources, file, item["line"])
        children = None if block is None else _tree(block, file, configs, ctx)
        out.append(_Directive(item["directive"], list(item["args"]), span, children))
    return out


# ----------------------------------------------------------------- importer --

def import_nginx(paths: list[str], ctx: ImportContext) -> tuple[list[ServiceDraft], list[Note]]:
    """Services for the proxying `server` blocks of nginx configuration files."""
    services: list[ServiceDraft] = []
    header: list[Note] = []
    names = Names()
    for path in paths:
        for directive in _parse(path, ctx):
            if directive.name in ("stream", "http"):
                services += _Context(directive, ctx, names, header).services()
            elif directive.name in ("upstream", "server", "location"):
                ctx.fail(directive.span, f"`{directive.name}` outside `stream` and `http`",
                         help="pass the main configuration file (nginx.conf), which includes this one")
    return services, header


class _Context:
    """One `stream` or `http` block: its upstreams and its server blocks."""

    def __init__(self, block: _Directive, ctx: ImportContext, names: Names, header: list[Note]):
        self.block = block
        self.http = block.name == "http"
        self.ctx = ctx
        self.names = names
        self.header = header
        self.upstreams = {u.args[0]: u for u in block.children("upstream")}

    def services(self) -> list[ServiceDraft]:
        out = []
        for server in self.block.children("server"):
            service = _ServerBlock(self, server).build()
            if service is not None:
                out.append(service)
            elif not _ServerBlock(self, server).proxies():
                self.header.append(self.ctx.explain(server.span, f"a `{self.block.name}` server block that "
                                                                 "proxies nothing: not imported"))
        return out

    def setting(self, server: _Directive, name: str, locations: list[_Directive] | None = None) -> _Directive | None:
        """A directive of the innermost of ``locations`` that has one, else of the server block, or the one it
        inherits from the `stream`/`http` block."""
        return next((b.child(name) for b in (*(locations or ()), server, self.block) if b.child(name) is not None),
                    None)


class _ServerBlock:
    """Builds the service of one `server` block."""

    def __init__(self, context: _Context, server: _Directive):
        self.context = context
        self.server = server
        self.ctx = context.ctx
        self.pool_names = Names()

    def build(self) -> ServiceDraft | None:
        target = self._target()
        if target is None:
            return None
        directive, upstream, tail = target
        self.target = directive
        service = ServiceDraft(self.context.names.take(self._service_name(directive, upstream), "server"))
        protocols = self._listens(service)
        if not service.vips:
            self.context.header.append(self.ctx.skip(self.server.span, f"server {{ {directive.text}; }}",
                                                     "no usable `listen` (an IP address and port): not imported"))
            return None
        service.tail += tail
        mode_note = self.ctx.explain(self.server.span, "nginx ends each client connection (or UDP session) and "
                                                       "opens its own to an upstream server")
        service.mode = Line("mode proxy", [mode_note])
        pool = self._pool(service, directive, upstream)
        if self.context.http and directive.args[0].lower().startswith("https://"):
            service.tail.append(self.ctx.lost(directive.span, directive.text, _LOST_WHY["proxy_ssl"]))
        self._forwards(service, pool, protocols)
        if upstream is not None:
            _Upstream(self.ctx, upstream, self.context.http).behaviour(service, self)
        else:
            service.balance = None
            service.health = Line("health none", [self.ctx.explain(directive.span, "one server, named in "
                                                                                   "`proxy_pass`: nothing checks it")])
            service.affinity = self._affinity(protocols)
        self._next_upstream(service, upstream)
        self._leftovers(service)
        return service

    def proxies(self) -> bool:
        return bool(self._proxy_passes(self.server))

    # --- where the traffic goes
    def _target(self) -> tuple[_Directive, _Directive | None, list[Note]] | None:
        """The `proxy_pass` that decides the service's pool, its upstream, and notes on the others."""
        passes = self._proxy_passes(self.server)
        if not passes:
            return None
        first = min(passes, key=lambda p: (p[0] != "/", len(p[0])))
        tail = [self.ctx.lost(d.span, f"location {where} {d.text}", "path-based routing: only the `location "
                                                                    f"{first[0]}` upstream is represented")
                for where, d in passes if d is not first[1]]
        directive = first[1]
        name = self._upstream_name(directive)
        if name is not None and name.startswith("$"):
            self.context.header.append(self.ctx.skip(directive.span, directive.text, "the upstream is chosen at "
                                                                                     "run time: not imported"))
            return None
        return directive, self.context.upstreams.get(name or ""), tail

    def _proxy_passes(self, block: _Directive, where: str = "/") -> list[tuple[str, _Directive]]:
        found = [(where, d) for d in block.children("proxy_pass")]
        for location in block.children("location"):
            path = _path(location)
            found += self._proxy_passes(location, path)
        return found

    def _upstream_name(self, directive: _Directive) -> str | None:
        target = _authority(directive.args[0]) if self.context.http else directive.args[0]
        return target if target in self.context.upstreams or target.startswith("$") else None

    def _service_name(self, directive: _Directive, upstream: _Directive | None) -> str:
        if self.context.http:
            server_name = self.server.child("server_name")
            if server_name is not None and server_name.args and server_name.args[0] not in ("_", ""):
                return server_name.args[0]
        if upstream is not None:
            return upstream.args[0]
        return f"{self.context.block.name}-server"

    # --- listeners
    def _listens(self, service: ServiceDraft) -> set[str]:
        listens = self.server.children("listen")
        protocols: set[str] = set()
        if not listens and self.context.http:
            self._listen_address(service, self.server, "80", "tcp")
            return {"tcp"}
        for listen in listens:
            protocol = "udp" if {"udp", "quic"} & set(listen.args[1:]) else "tcp"  # QUIC (HTTP/3) runs over UDP
            if self._listen_address(service, listen, listen.args[0], protocol):
                protocols.add(protocol)
            self._listen_options(service, listen)
        unbound = service.unbound()
        if unbound:
            service.listen_notes.append(self.ctx.lost(listens[0].span, "; ".join(x.text for x in listens), unbound))
        return protocols

    def _listen_address(self, service: ServiceDraft, listen: _Directive, text: str, protocol: str) -> bool:
        if text.startswith("unix:"):
            service.listen_notes.append(self.ctx.lost(listen.span, listen.text, "a Unix socket, not an IP listener"))
            return False
        parts = addresses.split_host_port(text)
        if parts.port == "" and ":" not in text and addresses.port_range(text) is not None:
            parts = addresses.HostPort("", text)
        elif parts.port == "" and self.context.http:
            parts = addresses.HostPort(parts.host, "80")
        ports = addresses.port_range(parts.port)
        if ports is None:
            self.ctx.fail(listen.span, f"`{text}` has no valid port", help="write `listen 80` or "
                                                                           "`listen 10.0.0.1:80`")
        vips = self._vips(service, listen, parts.host, text.startswith("["))
        if not vips:
            return False
        for vip in vips:
            service.add_vip(vip)
        service.add_listen(protocol, *ports)
        for vip in [None] if addresses.every_address(parts.host) else vips:
            service.bind(vip, protocol, *ports)
        return True

    def _vips(self, service: ServiceDraft, listen: _Directive, host: str, bracketed: bool) -> list:
        if addresses.every_address(host):
            if self.ctx.options.vips:
                service.vip_notes.append(self.ctx.explain(listen.span, f"`{listen.text}` listens on every "
                                                                       "address; the VIPs are the ones given with --vip"))
                return list(self.ctx.options.vips)
            any_address = "::" if host == "::" else "0.0.0.0"
            service.vip_notes.append(self.ctx.lost(listen.span, listen.text, "listens on every address of the "
                                                   f"host; the spec says {any_address}: give the addresses "
                                                   "clients use with --vip"))
            return [ipaddress.ip_address(any_address)]
        address = addresses.ip(host)
        if address is None:
            service.listen_notes.append(self.ctx.lost(listen.span, listen.text, f"`{host}` is a host name; the "
                                                                                "spec needs an address"))
            return []
        return [address]

    def _listen_options(self, service: ServiceDraft, listen: _Directive) -> None:
        for option in listen.args[1:]:
            if option in ("ssl", "quic"):
                service.listen_notes.append(self.ctx.lost(listen.span, listen.text, "TLS is terminated here: "
                                                                                    "servers receive decrypted bytes"))
            elif option == "proxy_protocol":
                service.listen_notes.append(self.ctx.lost(listen.span, listen.text, ACCEPT_PROXY))

    # --- pool and rules
    def _pool(self, service: ServiceDraft, directive: _Directive, upstream: _Directive | None) -> str:
        if upstream is not None:
            return _Upstream(self.ctx, upstream, self.context.http).pool(service, self.pool_names)
        target = directive.args[0]
        default_port = None
        if self.context.http:
            default_port = 443 if target.lower().startswith("https://") else 80
            target = _authority(target)
        parts = addresses.split_host_port(target)
        address = addresses.ip(parts.host)
        port = addresses.port_number(parts.port) if parts.port else default_port
        name = self.pool_names.take("upstream")
        pool = PoolDraft(name)
        if address is None or port is None:
            pool.notes.append(self.ctx.lost(directive.span, directive.text, f"`{target}` is not an address and "
                                                                            "port; the pool is left empty"))
        else:
            pool.backends.append(BackendDraft(self.pool_names.take(f"{name}-1"), address, port))
        service.pools.append(pool)
        return name

    def _forwards(self, service: ServiceDraft, pool: str, protocols: set[str]) -> None:
        protocol = "any" if protocols == {"tcp", "udp"} else next(iter(protocols), "tcp")
        rules = [d for d in self._access_rules() if d.args]
        if not rules:
            service.forwards.append(Line(forward_text(protocol, [], pool)))
            return
        allowed = _allowed_sources(rules, {v.version for v in service.vips})
        if allowed is None:
            note = self.ctx.lost(rules[0].span, " ".join(r.text + ";" for r in rules),
                                 "only `allow PREFIX; ... deny all;` is represented")
            service.forwards.append(Line(forward_text(protocol, [], pool), [note]))
            return
        explain = self.ctx.explain(rules[0].span, "`allow`/`deny`: nginx closes connections from other clients")
        if allowed:
            service.forwards.append(Line(forward_text(protocol, [], pool, allowed), [explain]))
            explain = None
        service.otherwise = Line("otherwise reject", [explain] if explain else [])

    def _access_rules(self) -> list[_Directive]:
        own = [d for d in self.server.block or () if d.name in ("allow", "deny")]
        return own or [d for d in self.context.block.block or () if d.name in ("allow", "deny")]

    def _affinity(self, protocols: set[str]) -> Line:
        notes = [self.ctx.explain(self.server.span, "nginx relays each client connection (or UDP session) over "
                                                    "one upstream connection: it never moves")]
        if self.context.http:
            directive = self.target
            notes.append(self.ctx.lost(directive.span, directive.text, HTTP_REQUESTS.format(
                "nginx", "by default as HTTP/1.0, with its own `Host` and `Connection` headers")))
            return Line(affinity_text("flow"), notes)
        timeout = self.context.setting(self.server, "proxy_timeout")
        seconds = 600.0
        if timeout is not None:
            seconds = nginx_time(timeout.args[0]) or seconds
        else:
            notes.append(self.ctx.explain(self.server.span, "`proxy_timeout` is 10m by default"))
        responses = self.context.setting(self.server, "proxy_responses")
        if responses is not None and "udp" in protocols:
            notes.append(self.ctx.lost(responses.span, responses.text, "a UDP session ends after this many "
                                                                       "responses: the client's next datagram is "
                                                                       "balanced again"))
        return Line(affinity_text("flow", seconds), notes)

    def _leftovers(self, service: ServiceDraft) -> None:
        """Directives of the server block, its locations and the enclosing block that the spec leaves out."""
        locations = self._locations(self.server)
        for block in (self.context.block, self.server, *locations):
            for directive in block.block or ():
                if directive.name in ("allow", "deny") and block in locations:
                    service.tail.append(self.ctx.lost(directive.span, f"location {_path(block)} {directive.text}",
                                                      "access rules of a location apply to its requests only (and "
                                                      "replace the server block's there)"))
                    continue
                if _ignored(directive.name) or (block is self.context.block and directive.name in _CONTEXT_ONLY):
                    continue
                why = _LOST_WHY.get(directive.name, "the spec language has no equivalent")
                if directive.name in ("proxy_ssl", "proxy_protocol") and directive.args[:1] == ["off"]:
                    continue
                service.tail.append(self.ctx.lost(directive.span, directive.text, why))

    def _next_upstream(self, service: ServiceDraft, upstream: _Directive | None) -> None:
        """`proxy_next_upstream`, which is on unless it is `off`: a failed connection (request) moves to the next
        server, as with HAProxy's `option redispatch`; `proxy_next_upstream_tries` and `_timeout` limit how far
        (0, the default, is no limit).  None of them matters when nothing moves: an upstream of one server has
        no next server, and `proxy_next_upstream_tries 1` allows the first try only."""
        if upstream is None or len(upstream.children("server")) < 2:
            return
        name = "proxy_next_upstream"
        locations = self._locations_of(self.target, self.server)
        on, tries, timeout = (self.context.setting(self.server, n, locations)
                              for n in (name, f"{name}_tries", f"{name}_timeout"))
        if (on is not None and on.args == ["off"]) or (tries is not None and tries.args == ["1"]):
            return
        if on is None:
            default = f"{name} error timeout" if self.context.http else f"{name} on"
            service.tail.append(self.ctx.lost(self.server.span, f"{default} (the default)", _LOST_WHY[name]))
        for directive in (on, tries, timeout):
            if directive is not None and (directive is on or nginx_time(directive.args[0]) != 0):  # 0: no limit
                service.tail.append(self.ctx.lost(directive.span, directive.text, _LOST_WHY[directive.name]))

    def _locations_of(self, directive: _Directive, block: _Directive) -> list[_Directive]:
        """The locations of ``block`` that hold ``directive``, innermost first."""
        for location in block.children("location"):
            inner = self._locations_of(directive, location)
            if inner or any(d is directive for d in location.block or ()):
                return [*inner, location]
        return []

    def _locations(self, block: _Directive) -> list[_Directive]:
        found = block.children("location")
        return found + [x for f in found for x in self._locations(f)]


def _authority(url: str) -> str:
    """The host and port of an http `proxy_pass` URL: `http://u/path` -> `u`."""
    return re.sub(r"^https?://", "", url, flags=re.IGNORECASE).split("/", 1)[0]


def _path(location: _Directive) -> str:
    return location.args[-1] if location.args else "/"


def _allowed_sources(rules: list[_Directive], families: set[int]) -> list[str] | None:
    """The prefixes of `allow A; allow B; deny all;`, or None for any other shape."""
    if rules[-1].name != "deny" or rules[-1].args != ["all"]:
        return None
    out = []
    for rule in rules[:-1]:
        if rule.name != "allow":
            return None
        if rule.args == ["all"]:
            return None
        try:
            network = ipaddress.ip_network(rule.args[0], strict=False)
        except ValueError:
            return None
        if network.version in families:
            out.append(addresses.prefix_text(network))
    return out


@dataclass
class _Server:
    directive: _Directive
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    port: int | None
    params: dict[str, str] = field(default_factory=dict)


class _Upstream:
    """An `upstream` block: its servers as a pool, its balancing, its (passive) health checks."""

    def __init__(self, ctx: ImportContext, upstream: _Directive, http: bool):
        self.ctx = ctx
        self.upstream = upstream
        self.http = http
        self.servers = [self._server(d) for d in upstream.children("server")]

    def _server(self, directive: _Directive) -> _Server:
        params = {}
        for word in directive.args[1:]:
            key, _, value = word.partition("=")
            params[key] = value
        text = directive.args[0]
        if text.startswith("unix:"):
            return _Server(directive, None, None, params)
        parts = addresses.split_host_port(text)
        port = addresses.port_number(parts.port) if parts.port else (80 if self.http else None)
        if parts.port and port is None:
            self.ctx.fail(directive.span, f"`{parts.port}` is not a port", help="ports run from 1 to 65535")
        return _Server(directive, addresses.ip(parts.host), port, params)

    def pool(self, service: ServiceDraft, names: Names) -> str:
        name = names.take(self.upstream.args[0], "upstream")
        pool = PoolDraft(name)
        zone = self.upstream.child("zone") is not None
        for number, server in enumerate(self.servers, start=1):
            if server.address is None:
                why = ("a Unix socket" if server.directive.args[0].startswith("unix:")
                       else "a host name: the spec needs the address it resolves to")
                pool.notes.append(self.ctx.lost(server.directive.span, server.directive.text, f"{why}; not imported"))
                continue
            if server.port is None:
                self.ctx.fail(server.directive.span, f"upstream server `{server.directive.args[0]}` has no port",
                              help="stream upstream servers need one: `10.0.0.1:80`")
            pool.backends.append(self._backend(server, names.take(f"{name}-{number}"), zone))
        service.pools.append(pool)
        return name

    def _backend(self, server: _Server, name: str, zone: bool) -> BackendDraft:
        label = server.directive.args[0]
        draft = BackendDraft(name, server.address, server.port)
        params = server.params
        if "weight" in params:
            draft.weight = _integer(params["weight"], server, self.ctx)
        draft.backup = "backup" in params
        if "max_conns" in params and _integer(params["max_conns"], server, self.ctx) > 0:
            draft.max_conn = _integer(params["max_conns"], server, self.ctx)
            if not zone:
                draft.notes.append(self.ctx.lost(server.directive.span, f"max_conns={params['max_conns']}",
                                                 "without a `zone`, each worker process counts on its own"))
        if "down" in params:
            draft.weight = 0
            draft.notes.append(self.ctx.explain(server.directive.span, f"`{label} down`: permanently "
                                                                       "unavailable: weight 0"))
        for key in params:
            if key in _LOST_WHY:
                draft.notes.append(self.ctx.lost(server.directive.span, f"{label} {key}", _LOST_WHY[key]))
        return draft

    # --- balance, affinity, health, failover
    def behaviour(self, service: ServiceDraft, block: _ServerBlock) -> None:
        service.balance = self._balance()
        service.affinity = block._affinity({p for p, _, _ in service.listens})
        service.health = self._health(block)
        pool = service.pools[-1]
        backups = [b.name for b in pool.backends if b.backup]
        if backups:
            service.failovers.append(Line(failover_text(backups, 1), [self.ctx.explain(
                self.upstream.span, "nginx uses backup servers only when every primary server is unavailable")]))
        for directive in self.upstream.block or ():
            if directive.name in _LOST_WHY:
                service.tail.append(self.ctx.lost(directive.span, directive.text, _LOST_WHY[directive.name]))

    def _balance(self) -> Line:
        for directive in reversed(self.upstream.block or ()):
            if directive.name == "least_conn":
                return Line(balance_text("least_conn"))
            if directive.name == "random":
                return self._random(directive)
            if directive.name == "ip_hash":
                return Line(balance_text("hash", ("src",)), [self.ctx.lost(
                    directive.span, directive.text, "an IPv4 client is hashed on its first three octets: "
                                                    "clients of one /24 share a server")])
            if directive.name == "hash":
                return self._hash(directive)
        return Line(balance_text("round_robin"))

    def _random(self, directive: _Directive) -> Line:
        if "two" not in directive.args:
            return Line(balance_text("random"))
        return Line(balance_text("least_conn"), [self.ctx.lost(
            directive.span, directive.text, f"draws two servers at random and takes the less loaded: {LOAD_AWARE}")])

    def _hash(self, directive: _Directive) -> Line:
        consistent = "consistent" in directive.args[1:]
        fields = _hash_fields(directive.args[0])
        kind = "maglev" if consistent else "hash"
        if fields is None:
            return Line(balance_text("random"), [self.ctx.lost(
                directive.span, directive.text, "hashes data the spec cannot see; balanced as `random`, which "
                                                "is how it looks from the network")],
                waiver=UNSEEN_HASH.format(directive.text))
        what = "ketama consistent hashing" if consistent else "a hash modulo the servers' weights"
        return Line(balance_text(kind, fields), [self.ctx.explain(directive.span, f"`{directive.text}`: {what}")])

    def _health(self, block: _ServerBlock) -> Line:
        active = block.context.setting(block.server, "health_check")
        if active is not None:
            return self._active_health(active, block)
        passive = [s for s in self.servers if s.params.get("max_fails", "1") != "0"]
        if not passive:
            return Line("health none", [self.ctx.explain(self.upstream.span, "every server has `max_fails=0`: "
                                                                             "nothing notices that a server died")])
        sample = passive[0]
        fails = sample.params.get("max_fails", "1")
        timeout = sample.params.get("fail_timeout", "10s")
        note = self.ctx.lost(self.upstream.span, f"max_fails={fails} fail_timeout={timeout}",
                             "nginx has no active checks: it marks a server failed after failed connections of "
                             "real clients and retries it after `fail_timeout`; the spec says `health none`")
        return Line("health none", [note])

    def _active_health(self, directive: _Directive, block: _ServerBlock) -> Line:
        params = dict(word.partition("=")[::2] for word in directive.args)
        every = nginx_time(params.get("interval", "5s")) or 5.0
        timeout_directive = block.context.setting(block.server, "health_check_timeout")
        timeout = nginx_time(timeout_directive.args[0]) if timeout_directive else 5.0
        kind = "udp" if "udp" in params else ("http" if self.http else "tcp")
        path = params.get("uri", "/") if kind == "http" else None
        notes = [self.ctx.explain(directive.span, f"`{directive.text}` (nginx Plus)")]
        if "match" in params or "port" in params:
            notes.append(self.ctx.lost(directive.span, directive.text, "the check expects a response or uses "
                                                                       "another port"))
        return Line(health_text(kind, path, every, timeout, int(params.get("fails", 1)),
                                int(params.get("passes", 1))), notes)


def _integer(text: str, server: _Server, ctx: ImportContext) -> int:
    if not text.isdigit():
        ctx.fail(server.directive.span, f"`{text}` in `{server.directive.text}` is not a number")
    return int(text)


_HASH_VARIABLES = {"$remote_addr": "src", "$binary_remote_addr": "src", "$remote_port": "sport",
                   "$server_addr": "dst", "$server_port": "dport", "$protocol": "proto"}


def _hash_fields(key: str) -> tuple[str, ...] | None:
    """The spec's hash fields for an nginx hash key, or None if it uses anything else."""
    variables = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", key)
    rest = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "", key)
    if not variables or rest.strip(":-_. "):
        return None
    fields = []
    for name in variables:
        field_name = _HASH_VARIABLES.get(f"${name}")
        if field_name is None:
            return None
        if field_name not in fields:
            fields.append(field_name)
    return tuple(fields)

