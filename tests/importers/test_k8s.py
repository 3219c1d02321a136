"""`lbspec import k8s`: Services with their EndpointSlices to specs, judged by their model."""

from __future__ import annotations

import ipaddress
import json
import textwrap

import pytest

from lbspec.importers import ConfigError, Options, import_config

from importing import Result, addresses, cli, rules, run


def k8s(tmp_path, *documents: str, **options) -> Result:
    path = tmp_path / "objects.yaml"
    path.write_text("\n---\n".join(textwrap.dedent(d) for d in documents))
    return Result(import_config("k8s", [str(path)], Options(**options)))


SERVICE = """
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: prod}
    spec:
      clusterIP: 10.96.1.1
      selector: {app: api}
      ports:
        - {name: http, port: 80, targetPort: web}
"""


def endpoint_slice(*endpoints: str, port: int = 8080, family: str = "IPv4", name: str = "api-1") -> str:
    body = "\n".join(f"      - {e}" for e in endpoints)
    return f"""
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: {name}
      namespace: prod
      labels: {{kubernetes.io/service-name: api}}
    addressType: {family}
    ports:
      - {{name: http, port: {port}, protocol: TCP}}
    endpoints:
{body}
"""


# -------------------------------------------------------------- the lab shape --

def test_cluster_ip_with_tcp_and_udp_ports():
    result = run("k8s", "lab-clusterip.yaml")
    echo = result.service("echo")
    assert [str(v) for v in echo.vips] == ["10.96.0.50"]
    assert echo.mode.kind == "nat"
    assert addresses(echo, "echo") == ["10.244.1.11", "10.244.2.12", "10.244.3.13"]
    assert [b.name for b in echo.backends] == ["echo-5f7c9-a1", "echo-5f7c9-b2", "echo-5f7c9-c3"]
    assert rules(echo) == [("tcp", ((8080, 8080),), (), "echo", 8080), ("udp", ((9000, 9000),), (), "echo", 9000)]
    assert echo.balance.algorithm == "random" and (echo.affinity.kind, echo.affinity.timeout) == ("flow", 30.0)  # UDP
    assert echo.health.kind == "none"
    assert result.lost_mentions("masquerades")


# ---------------------------------------------------------------- endpoints --

def test_named_target_port_is_resolved_from_the_slice(tmp_path):
    result = k8s(tmp_path, SERVICE, endpoint_slice("{addresses: [10.244.0.1]}", port=8181))
    assert rules(result.service("api")) == [("tcp", ((80, 80),), (), "api", 8181)]


def test_each_port_goes_to_the_endpoints_whose_slice_lists_it(tmp_path):
    # kube-proxy sends port 9090 only to the endpoints of the slice that has a `metrics` port
    service = SERVICE.replace("targetPort: web}",
                              "targetPort: 8080}\n        - {name: metrics, port: 9090, targetPort: 9100}")
    both = endpoint_slice("{addresses: [10.244.0.1]}", "{addresses: [10.244.0.2]}").replace(
        "protocol: TCP}", "protocol: TCP}\n      - {name: metrics, port: 9100, protocol: TCP}")
    result = k8s(tmp_path, service, both, endpoint_slice("{addresses: [10.244.0.3]}", name="api-2"))
    api = result.service("api")
    pools = {r.ports: r.pool for r in api.rules}
    assert addresses(api, pools[((80, 80),)]) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    assert addresses(api, pools[((9090, 9090),)]) == ["10.244.0.1", "10.244.0.2"]
    assert [(r.ports, r.target_port) for r in api.rules] == [(((80, 80),), 8080), (((9090, 9090),), 9100)]


def test_a_port_no_slice_lists_goes_nowhere(tmp_path):
    # no slice has a `metrics` port: kube-proxy has no endpoints for port 9090 and rejects its traffic, as it does
    # for a Service without endpoints
    service = SERVICE.replace("targetPort: web}",
                              "targetPort: 8080}\n        - {name: metrics, port: 9090, targetPort: 9100}")
    result = k8s(tmp_path, service, endpoint_slice("{addresses: [10.244.0.1]}"))
    api = result.service("api")
    assert [(x.protocol, x.ports) for x in api.listens] == [("tcp", ((80, 80), (9090, 9090)))]
    assert rules(api) == [("tcp", ((80, 80),), (), "api", 8080)]
    assert addresses(api, "api") == ["10.244.0.1"]
    assert api.otherwise == "reject"


def test_a_port_whose_endpoints_all_stopped_serving_goes_nowhere(tmp_path):
    # kube-proxy leaves out endpoints that are neither ready nor serving: port 9090 has none left, and is rejected
    service = SERVICE.replace("targetPort: web}",
                              "targetPort: 8080}\n        - {name: metrics, port: 9090, targetPort: 9100}")
    stopped = endpoint_slice("{addresses: [10.244.0.2], conditions: {ready: false, serving: false}}",
                             name="api-2").replace("{name: http, port: 8080, protocol: TCP}",
                                                   "{name: metrics, port: 9100, protocol: TCP}")
    api = k8s(tmp_path, service, endpoint_slice("{addresses: [10.244.0.1]}"), stopped).service("api")
    assert [(r.ports, r.target_port) for r in api.rules] == [(((80, 80),), 8080)]
    assert addresses(api, api.rules[0].pool) == ["10.244.0.1"]
    assert api.otherwise == "reject"


def test_a_dual_stack_service_with_endpoints_of_one_family_rejects_the_other(tmp_path):
    # kube-proxy has no IPv6 endpoints for the Service's IPv6 address, and rejects what comes to it
    service = SERVICE.replace("clusterIP: 10.96.1.1", "clusterIPs: [10.96.1.1, 'fd00::1']\n"
                              "      ipFamilies: [IPv4, IPv6]")
    result = k8s(tmp_path, service, endpoint_slice("{addresses: [10.244.0.1]}"))
    api = result.service("api")
    assert [str(v) for v in api.vips] == ["10.96.1.1", "fd00::1"]
    assert rules(api) == [("tcp", ((80, 80),), ("0.0.0.0/0",), "api-v4", 8080)]
    assert api.otherwise == "reject"
    spec = tmp_path / "imported.lbspec"
    spec.write_text(result.text)
    found = json.loads(cli("check", str(spec), "--format", "json").out)["diagnostics"]
    assert "LB101" not in {x["code"] for x in found}  # the IPv6 traffic is covered: rejected


def test_a_port_goes_to_the_endpoints_that_list_its_name_and_protocol(tmp_path):
    # kube-proxy matches a Service port to the slice ports of the same name *and* protocol: the first slice's `dns`
    # is TCP, so the UDP port goes only to the second slice's endpoint, on its port 53
    service = SERVICE.replace("targetPort: web}", "targetPort: 8080}\n        - {name: dns, port: 53, protocol: UDP}")
    tcp = endpoint_slice("{addresses: [10.244.0.1]}").replace(
        "protocol: TCP}", "protocol: TCP}\n      - {name: dns, port: 5353, protocol: TCP}")
    udp = endpoint_slice("{addresses: [10.244.0.2]}", name="api-2").replace(
        "protocol: TCP}", "protocol: TCP}\n      - {name: dns, port: 53, protocol: UDP}")
    result = k8s(tmp_path, service, tcp, udp)
    api = result.service("api")
    pools = {r.protocol: r.pool for r in api.rules}
    assert addresses(api, pools["tcp"]) == ["10.244.0.1", "10.244.0.2"]
    assert addresses(api, pools["udp"]) == ["10.244.0.2"]
    assert [(r.protocol, r.target_port) for r in api.rules] == [("tcp", 8080), ("udp", 53)]


def test_endpoint_conditions(tmp_path):
    result = k8s(tmp_path, SERVICE, endpoint_slice(
        "{addresses: [10.244.0.1], conditions: {ready: true}}",
        "{addresses: [10.244.0.2]}",
        "{addresses: [10.244.0.3], conditions: {ready: false, serving: true, terminating: true}}",
        "{addresses: [10.244.0.4], conditions: {ready: false, serving: false, terminating: true}}",
        "{addresses: [10.244.0.5], conditions: {ready: false}}"))
    api = result.service("api")
    assert [(str(b.address), b.backup) for b in api.backends] == [
        ("10.244.0.1", False), ("10.244.0.2", False), ("10.244.0.3", True)]
    (failover,) = api.failovers
    assert failover.targets == (api.backends[2].name,) and failover.below == 1
    assert "10.244.0.5 is not ready" in result.text


def test_dual_stack_load_balancer():
    result = run("k8s", "dualstack-lb.yaml")
    web = result.service("web")
    assert [str(v) for v in web.vips] == ["10.96.0.20", "fd00:10:96::20"]
    assert [p.name for p in web.pools] == ["web-v4", "web-v6"]
    assert rules(web)[:2] == [("tcp", ((80, 80),), ("0.0.0.0/0",), "web-v4", 8080),
                              ("tcp", ((80, 80),), ("::/0",), "web-v6", 8080)]
    assert (web.affinity.kind, web.affinity.timeout) == ("client", 600)
    assert [b.name for b in web.pool("web-v4").backups] == ["web-7d9f-old01"]
    assert result.lost_mentions("protocol: SCTP")
    assert result.lost_mentions("nodePort: 30080", "--vip")


def test_load_balancer_addresses_and_source_ranges():
    external = run("k8s", "dualstack-lb.yaml").service("web-external")
    assert [str(v) for v in external.vips] == ["198.51.100.20"]
    assert external.mode.kind == "snat"
    assert rules(external) == [("tcp", ((80, 80),), ("203.0.113.0/24",), "web", 8080),
                               ("tcp", ((9100, 9100),), ("203.0.113.0/24",), "web", 9100)]
    assert external.otherwise == "drop"


def test_node_ports_with_vip():
    result = run("k8s", "dualstack-lb.yaml", vips=(ipaddress.ip_address("192.168.0.2"),))
    nodeport = result.service("web-nodeport")
    assert [str(v) for v in nodeport.vips] == ["192.168.0.2"]
    assert rules(nodeport) == [("tcp", ((30080, 30080),), (), "web", 8080)]
    assert not result.lost_mentions("nodePort")


def test_external_traffic_policy_local(tmp_path):
    service = SERVICE.replace("clusterIP: 10.96.1.1", "clusterIP: 10.96.1.1\n      externalIPs: [192.0.2.5]\n"
                                                      "      externalTrafficPolicy: Local")
    result = k8s(tmp_path, service, endpoint_slice("{addresses: [10.244.0.1]}"))
    assert result.service("api-external").mode.kind == "nat"
    assert result.lost_mentions("externalTrafficPolicy: Local")


def test_legacy_endpoints_and_services_that_are_not_imported():
    result = run("k8s", "kube-dns.yaml")
    dns = result.service("kube-dns")
    assert addresses(dns, "kube-dns") == ["10.244.0.2", "10.244.0.3"]  # 10.244.0.4 is not ready
    assert {r.target_port for r in dns.rules} == {5353}
    assert [s.name for s in result.spec.services] == ["kube-dns", "reports"]
    assert result.lost_mentions("clusterIP: None") and result.lost_mentions("ExternalName")
    reports = result.service("reports")
    assert reports.pools == () and reports.otherwise == "reject"


def test_ipv6_endpoints_of_a_single_stack_service_are_left_out(tmp_path):
    result = k8s(tmp_path, SERVICE, endpoint_slice("{addresses: [10.244.0.1]}"),
                 endpoint_slice("{addresses: ['fd00::1']}", family="IPv6", name="api-2"))
    assert addresses(result.service("api"), "api") == ["10.244.0.1"]


def test_session_affinity_default_timeout(tmp_path):
    service = SERVICE.replace("selector:", "sessionAffinity: ClientIP\n      selector:")
    api = k8s(tmp_path, service, endpoint_slice("{addresses: [10.244.0.1]}")).service("api")
    assert (api.affinity.kind, api.affinity.timeout) == ("client", 10800)


def test_manifest_without_cluster_ip(tmp_path):
    result = k8s(tmp_path, SERVICE.replace("clusterIP: 10.96.1.1", "type: ClusterIP"),
                 endpoint_slice("{addresses: [10.244.0.1]}"))
    assert [str(v) for v in result.service("api").vips] == ["0.0.0.0"]
    assert result.lost_mentions("kubectl get svc")


def test_manifests_without_cluster_ips_on_one_port_load(tmp_path):
    # plain manifests: every Service listens on port 80 of an address the API server has not assigned yet
    other = SERVICE.replace("name: api,", "name: web,").replace("app: api", "app: web")
    result = k8s(tmp_path, *(s.replace("clusterIP: 10.96.1.1", "type: ClusterIP") for s in (SERVICE, other)))
    api, web = result.service("api"), result.service("web")
    unassigned = ipaddress.ip_network("0.0.0.0/8")  # "this network": never a destination, clearly a placeholder
    assert api.vips != web.vips and all(v in unassigned for v in (*api.vips, *web.vips))


def test_an_address_and_port_two_services_claim_goes_to_the_first(tmp_path):
    # kube-proxy would send the traffic to one of them; the Services do not say which
    lb = "\n      type: LoadBalancer\n      externalIPs: [192.0.2.9]"
    first = SERVICE.replace("clusterIP: 10.96.1.1", "clusterIP: 10.96.1.1" + lb)
    second = first.replace("name: api,", "name: web,").replace("10.96.1.1", "10.96.1.2")
    result = k8s(tmp_path, first, second)
    assert [s.name for s in result.spec.services] == ["api", "api-external", "web"]
    assert [str(v) for v in result.service("web").vips] == ["10.96.1.2"]
    assert "LB301" in result.codes


def test_a_service_given_twice_is_imported_once(tmp_path):
    result = k8s(tmp_path, SERVICE, endpoint_slice("{addresses: [10.244.0.1]}"), SERVICE)
    assert [s.name for s in result.spec.services] == ["api"]
    assert addresses(result.service("api"), "api") == ["10.244.0.1"]


def test_load_balancer_ip_only_for_load_balancers_and_ip_mode_proxy(tmp_path):
    # `loadBalancerIP` is a request to the cloud for type LoadBalancer only; an ingress with `ipMode: Proxy`
    # is left to the cloud load balancer (kube-proxy programs nothing for it)
    cluster = SERVICE.replace("clusterIP: 10.96.1.1", "clusterIP: 10.96.1.1\n      loadBalancerIP: 192.0.2.5")
    assert [s.name for s in k8s(tmp_path, cluster).spec.services] == ["api"]
    proxied = SERVICE.replace("clusterIP: 10.96.1.1", "clusterIP: 10.96.1.1\n      type: LoadBalancer") + (
        "    status:\n      loadBalancer:\n        ingress:\n"
        "          - {ip: 192.0.2.6, ipMode: Proxy}\n          - {ip: 192.0.2.7, ipMode: VIP}\n")
    result = k8s(tmp_path, proxied)
    assert [str(v) for v in result.service("api-external").vips] == ["192.0.2.7"]
    assert "LB301" in result.codes


def test_same_name_in_two_namespaces(tmp_path):
    other = SERVICE.replace("namespace: prod", "namespace: staging").replace("10.96.1.1", "10.96.1.2")
    result = k8s(tmp_path, SERVICE, other)
    assert [s.name for s in result.spec.services] == ["prod-api", "staging-api"]


def test_several_files(tmp_path):
    (tmp_path / "svc.yaml").write_text(textwrap.dedent(SERVICE))
    (tmp_path / "eps.yaml").write_text(textwrap.dedent(endpoint_slice("{addresses: [10.244.0.9]}")))
    imported = import_config("k8s", [str(tmp_path / "svc.yaml"), str(tmp_path / "eps.yaml")])
    assert "10.244.0.9" in imported.text


# ------------------------------------------------------------------- errors --

@pytest.mark.parametrize("text, words", [
    ("kind: Service\nmetadata: {name: x\n", "not YAML"),
    ("- just\n- a list\n", "not a Kubernetes object"),
    ("kind: Service\nmetadata: {name: x}\nspec:\n  clusterIP: 10.0.0.300\n  ports: [{port: 80}]\n",
     "not an IP address"),
    ("kind: Service\nmetadata: {name: x}\nspec:\n  clusterIP: 10.0.0.3\n  ports: [{port: eighty}]\n",
     "not a number"),
    ("kind: Service\nmetadata: {name: x}\nspec:\n  clusterIP: 10.0.0.3\n  ports: 80\n", "not a list"),
])
def test_malformed_objects_are_lb300(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config("k8s", [str(path)])
    assert raised.value.diagnostics[0].code == "LB300" and words in raised.value.diagnostics[0].message
    done = cli("import", "k8s", str(path))
    assert done.code == 2 and "error[LB300]" in done.err and "Traceback" not in done.err


@pytest.mark.parametrize("text, line", [
    ("# nginx\nevents {}\nstream {\n    upstream a { server 10.0.0.1:80; }\n}\n", 2),
    ("kind: Service\nmetadata: {name: x}\n---\n# a list\n- a\n- b\n", 5),
    ("kind: List\nitems:\n  - kind: Service\n  - metadata: {name: x}\n", 4),
], ids=["nginx-config", "second-document-a-list", "list-item-without-kind"])
def test_a_document_that_is_not_an_object_is_lb300_at_its_line(tmp_path, text, line):
    path, span = _lb300(tmp_path, text)
    assert span is not None and (span.file, span.line) == (str(path), line)


def _lb300(tmp_path, text: str):
    """Import ``text`` as a manifest: it must fail with one LB300, whose file and span this returns."""
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config("k8s", [str(path)])
    (diagnostic,) = raised.value.diagnostics
    assert diagnostic.code == "LB300"
    return path, diagnostic.span


_PORTS = "kind: Service\nmetadata: {name: x}\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n"
_WITH_ENDPOINTS = ("kind: Service\nmetadata: {name: api, namespace: prod}\nspec:\n  clusterIP: 10.96.1.1\n"
                   "  selector: {app: api}\n  ports: [{name: http, port: 80}]\n  sessionAffinity: ClientIP\n"
                   "  sessionAffinityConfig: {clientIP: {timeoutSeconds: TIMEOUT}}\n---\n"
                   "kind: EndpointSlice\nmetadata: {name: api-1, namespace: prod, labels: "
                   "{kubernetes.io/service-name: api}}\nports: [{name: http, port: 8080}]\n"
                   "endpoints:\n  - addresses: [10.244.0.1]\n    conditions: {ready: READY}\n")


@pytest.mark.parametrize("text, line", [
    ("kind: 5\nmetadata: {name: x}\n", 1),
    ("metadata: {name: x}\nkind: [Service]\n", 2),
    ("kind: List\nitems: 5\n", 2),
    ("kind: Service\nmetadata: [x]\n", 2),
    ("kind: Service\nmetadata: {name: 5}\n", 2),
    ("kind: Service\nmetadata: {name: x}\nspec: [clusterIP, ports]\n", 3),
    ("kind: Service\nmetadata: {name: x}\nspec: 5\n", 3),
    (_PORTS + "    - port: 80\n      nodePort: '30080'\n  type: NodePort\n", 7),
    (_PORTS + "    - port: 80\n      targetPort: [8080]\n", 7),
    (_PORTS + "    - port: 80\n      protocol: 6\n", 7),
    (_PORTS + "    - port: 99999\n", 6),
    (_PORTS + "    - port: 80\n      targetPort: 0\n", 7),
    (_PORTS + "    - port: 80\nstatus: [loadBalancer]\n", 7),
    (_PORTS + "    - port: 80\nstatus:\n  loadBalancer: {ingress: 5}\n", 8),
    (_WITH_ENDPOINTS.replace("TIMEOUT", "'3h'").replace("READY", "true"), 8),
    (_WITH_ENDPOINTS.replace("TIMEOUT", "60").replace("READY", "'yes'"), 15),
], ids=["kind-number", "kind-list", "list-items-number", "metadata-list", "name-number", "spec-list",
        "spec-number", "node-port-string", "target-port-list", "protocol-number", "port-out-of-range",
        "target-port-zero", "status-list", "ingress-number", "timeout-string", "ready-string"])
def test_fields_of_the_wrong_type_are_lb300_at_their_line(tmp_path, text, line):
    path, span = _lb300(tmp_path, text)
    assert (span.file, span.line) == (str(path), line)
    done = cli("import", "k8s", str(path), "--format", "json")
    assert done.code == 2
    assert [(d["code"], d["span"]["line"]) for d in json.loads(done.err)["diagnostics"]] == [("LB300", line)]
