"""No configuration, however odd, gets a traceback: either a spec that loads, or LB300."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

import lbspec
from lbspec.importers import ConfigError, import_config

HAPROXY_LINES = [
    "global", "defaults", "defaults d", "frontend f", "frontend g from d", "backend b", "backend c", "listen l",
    "peers p", "  bind 10.0.0.1:80", "  bind :8080", "  bind *:1-10", "  bind [::1]:443 ssl crt x.pem",
    "  bind ipv6@:80", "  mode tcp", "  mode http", "  mode health", "  balance roundrobin", "  balance source",
    "  balance random(3)", "  balance", "  hash-type consistent", "  default_backend b", "  default_backend c",
    "  use_backend c if { src 10.0.0.0/8 }", "  use_backend b if x", "  use_backend %[req.hdr(host)]",
    "  acl x dst_port 80:90", "  acl x src ::/0", "  server s1 10.0.0.2:80 check", "  server s2 10.0.0.3 backup",
    "  server s1 host.example:80", "  server s3 10.0.0.4:+10", "  server s4 10.0.0.5:80 weight 0 disabled",
    "  server-template w 3 srv.example:80", "  default-server inter 1s fall 1 rise 1 no-check",
    "  timeout client 0", "  timeout check 1s", "  timeout connect 10ms", "  option httpchk", "  option tcp-check",
    "  tcp-check send ping", "  http-check expect status 200", "  option allbackups", "  no option allbackups",
    "  stick-table type ip size 1 expire 1s", "  stick on src", "  stick on dst", "  maxconn 10",
    "  spread-checks 50", "  retries 0", "# comment", "",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(HAPROXY_LINES), max_size=25))
def test_haproxy_configs_import_or_fail_cleanly(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("h") / "haproxy.cfg"
    path.write_text("\n".join(lines) + "\n")
    _import_or_lb300("haproxy", path)


NGINX_BODIES = [
    "upstream u { server 10.0.0.1:80; }", "upstream u { hash $remote_addr consistent; server 10.0.0.1:80; }",
    "upstream v { server 10.0.0.2:80 backup; server [2001:db8::1]:80 down; random; }",
    "upstream w { least_conn; server unix:/tmp/s; server name.example:80 max_fails=0; }",
    "server { listen 80; proxy_pass u; }", "server { listen 10.0.0.9:53 udp; proxy_pass v; }",
    "server { listen [::]:443 ssl; proxy_pass 10.0.0.3:443; }", "server { listen 81; proxy_pass $x; }",
    "server { listen 82; return 1; }", "allow 10.0.0.0/8;", "deny all;", "proxy_timeout 1m30s;",
    "server { listen 83; allow all; proxy_pass w; }",
]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(NGINX_BODIES), max_size=8), st.sampled_from(["stream", "http"]))
def test_nginx_configs_import_or_fail_cleanly(tmp_path_factory, bodies, context):
    path = tmp_path_factory.mktemp("n") / "nginx.conf"
    path.write_text("events {}\n" + context + " {\n" + "\n".join(bodies) + "\n}\n")
    _import_or_lb300("nginx", path)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 70000) | st.sampled_from(
    ["ip", "ip6", "inet", "nat", "prerouting", "t", "c", "10.0.0.1", "@s", "tcp", "daddr", "dport"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["family", "table", "chain", "name", "expr", "match", "left", "right", "payload", "protocol", "field",
         "dnat", "addr", "port", "map", "key", "data", "set", "numgen", "mode", "mod", "goto", "target",
         "vmap", "type", "hook", "elem", "concat", "range", "op"]), inner, max_size=4), max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["table", "chain", "rule", "set", "map"]), _json,
                                min_size=1, max_size=1), max_size=6))
def test_nftables_documents_import_or_fail_cleanly(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("j") / "ruleset.json"
    path.write_text(json.dumps({"nftables": items}))
    _import_or_lb300("nftables", path)


K8S_FIELDS = st.fixed_dictionaries({}, optional={
    "clusterIP": st.sampled_from(["10.96.0.1", "None", "fd00::1", ""]),
    "type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]),
    "ports": st.lists(st.fixed_dictionaries({"port": st.integers(1, 65535)}, optional={
        "protocol": st.sampled_from(["TCP", "UDP", "SCTP"]), "targetPort": st.sampled_from([80, "http"]),
        "name": st.sampled_from(["", "http"]), "nodePort": st.integers(30000, 32767)}), max_size=3),
    "selector": st.just({"app": "x"}),
    "sessionAffinity": st.sampled_from(["ClientIP", "None"]),
    "externalIPs": st.lists(st.sampled_from(["192.0.2.1", "2001:db8::1"]), max_size=2),
    "loadBalancerSourceRanges": st.lists(st.sampled_from(["203.0.113.0/24", "2001:db8::/32"]), max_size=2),
})


@settings(max_examples=100, deadline=None)
@given(K8S_FIELDS, st.lists(st.sampled_from(["10.244.0.1", "10.244.0.2", "fd00::5"]), max_size=3),
       st.booleans())
def test_k8s_objects_import_or_fail_cleanly(tmp_path_factory, spec, endpoints, ready):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec}
    family = "IPv6" if endpoints and ":" in endpoints[0] else "IPv4"
    eps = {"kind": "EndpointSlice", "metadata": {"name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
           "addressType": family, "ports": [{"name": "http", "port": 8080}],
           "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in endpoints]}
    path = tmp_path_factory.mktemp("k") / "objects.yaml"
    path.write_text(json.dumps(service) + "\n---\n" + json.dumps(eps) + "\n")
    _import_or_lb300("k8s", path)


_ANY = st.recursive(st.none() | st.booleans() | st.integers(-1, 70000) | st.sampled_from(
    ["", "x", "None", "TCP", "UDP", "IPv4", "ClientIP", "List", "10.96.0.1", "10.0.0.0/8", "http"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["kind", "name", "port", "targetPort", "nodePort", "protocol", "ip", "addresses", "ready", "ingress"]),
        inner, max_size=3), max_leaves=8)
_ODD = st.dictionaries(st.sampled_from(["kind", "metadata", "spec", "status", "items", "ports", "endpoints",
                                        "addressType", "subsets"]), _ANY, max_size=4)
_ODD_SPEC = st.dictionaries(st.sampled_from(
    ["type", "clusterIP", "clusterIPs", "ipFamilies", "ports", "selector", "externalIPs", "loadBalancerIP",
     "loadBalancerSourceRanges", "externalTrafficPolicy", "sessionAffinity", "sessionAffinityConfig",
     "trafficDistribution", "healthCheckNodePort"]), _ANY, max_size=4)


@settings(max_examples=150, deadline=None)
@given(_ODD, _ODD_SPEC, st.sampled_from(["Service", "EndpointSlice", "Endpoints", "List"]))
def test_k8s_fields_of_any_type_import_or_fail_cleanly(tmp_path_factory, body, spec, kind):
    service = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}], **spec}}
    odd = {"kind": kind, "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "s"}}, **body}
    path = tmp_path_factory.mktemp("k") / "objects.yaml"
    path.write_text(json.dumps(service) + "\n---\n" + json.dumps(odd) + "\n")
    _import_or_lb300("k8s", path)


def _import_or_lb300(kind: str, path) -> None:
    try:
        imported = import_config(kind, [str(path)])
    except ConfigError as error:
        assert {d.code for d in error.diagnostics} == {"LB300"}
        return
    lbspec.loads(imported.text)
    assert {d.code for d in imported.diagnostics} <= {"LB301"}
