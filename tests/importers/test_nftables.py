"""`lbspec import nftables`: `nft -j list ruleset` output to specs, judged by their model.

The JSON files under configs/nftables are real `nft -j list ruleset` output of
the .nft files beside them; the last test regenerates them with the real nft
in a network namespace and checks that the import does not change.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess

import pytest

from lbspec.importers import ConfigError, Options, import_config

from importing import CONFIGS, Result, addresses, cli, rules, run


def ruleset(tmp_path, items: list[dict], **options) -> Result:
    path = tmp_path / "ruleset.json"
    path.write_text(json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]}))
    return Result(import_config("nftables", [str(path)], Options(**options)))


def nat_chain(family: str = "ip", table: str = "t", name: str = "pre", hook: str = "prerouting") -> dict:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1, "type": "nat", "hook": hook,
                      "prio": -100 if hook == "prerouting" else 100, "policy": "accept"}}


def rule(*exprs: dict, chain: str = "pre", handle: int = 2) -> dict:
    return {"rule": {"family": "ip", "table": "t", "chain": chain, "handle": handle, "expr": list(exprs)}}


def match(protocol: str, field: str, right) -> dict:
    return {"match": {"op": "==", "left": {"payload": {"protocol": protocol, "field": field}}, "right": right}}


def spread(mode: str, *addresses: str) -> dict:
    return {"dnat": {"addr": {"map": {"key": {"numgen": {"mode": mode, "mod": len(addresses), "offset": 0}},
                                      "data": {"set": [[i, a] for i, a in enumerate(addresses)]}}}}}


# ------------------------------------------------------------- the lab ruleset --

def test_lab_dnat_map():
    result = run("nftables", "lab-dnat.json")
    (service,) = result.spec.services
    assert [str(v) for v in service.vips] == ["10.0.0.1"]
    assert sorted((x.protocol, x.ports) for x in service.listens) == [("tcp", ((8080, 8080),)),
                                                                     ("udp", ((9000, 9000),))]
    assert service.mode.kind == "snat"  # an unconditional masquerade in postrouting
    pools = {r.protocol: r.pool for r in service.rules}
    assert addresses(service, pools["tcp"]) == ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
    assert addresses(service, pools["udp"]) == ["10.0.1.11", "10.0.1.12"]
    assert all(b.port is None and b.weight == 1 for b in service.backends)
    assert service.balance.algorithm == "random"
    # conntrack keeps an idle UDP flow 30s (`nf_conntrack_udp_timeout`), not the language's default 300s: a
    # datagram after a minute's pause is balanced anew, and held to 300s it was an affinity break (LB201)
    assert (service.affinity.kind, service.affinity.timeout) == ("flow", 30.0)
    assert service.health.kind == "none"
    assert result.codes == []


# ------------------------------------------------------------- hand-written --

def test_weights_from_numgen_ranges():
    service = run("nftables", "weighted.json").service("vip-192-0-2-10")
    assert [(str(b.address), b.weight) for b in service.backends] == [("10.1.0.1", 7), ("10.1.0.2", 3)]
    assert service.mode.kind == "snat"  # masquerade for daddr 10.1.0.0/16 covers both backends


def test_address_and_port_map_and_round_robin():
    service = run("nftables", "weighted.json").service("vip-192-0-2-11")
    assert service.balance.algorithm == "round_robin"
    assert [(r.ports, r.target_port) for r in service.rules] == [(((443, 443),), 8443), (((8443, 8443),), 8443)]


def test_jhash_is_modulo_hashing_on_its_fields():
    service = run("nftables", "weighted.json").service("vip-192-0-2-12")
    assert (service.balance.algorithm, service.balance.fields) == ("hash", ("src", "sport"))
    assert service.mode.kind == "nat"  # the masquerade covers 10.1.0.0/16 only


def test_named_map_port_range_source_set_and_single_targets():
    result = run("nftables", "weighted.json")
    ranged = result.service("vip-192-0-2-13")
    assert ranged.listens[0].ports == ((8000, 8100),) and addresses(ranged, ranged.rules[0].pool) == [
        "10.1.0.1", "10.1.0.2"]
    office = result.service("vip-192-0-2-14")
    assert rules(office) == [("tcp", ((22, 22),), ("10.0.0.0/8",), office.rules[0].pool, 2222)]
    single = result.service("vip-192-0-2-15")
    assert [str(b.address) for b in single.backends] == ["10.3.0.2"]


def test_conditions_the_spec_cannot_say_are_comments():
    result = run("nftables", "weighted.json")
    assert result.lost_mentions("iifname", "eth1")
    assert "vip-192-0-2-16" in [s.name for s in result.spec.services]


def test_ipv6_table():
    service = run("nftables", "weighted.json").service("vip-2001-db8--10")
    assert [str(b.address) for b in service.backends] == ["2001:db8:1::1", "2001:db8:1::2"]


def test_two_balance_methods_on_one_vip(tmp_path):
    result = ruleset(tmp_path, [
        nat_chain(),
        rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), spread("random", "10.0.0.1", "10.0.0.2")),
        rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 81), spread("inc", "10.0.0.1", "10.0.0.2"),
             handle=3),
    ])
    (service,) = result.spec.services
    assert service.balance.algorithm == "random"
    assert result.lost_mentions("balance round_robin")


def test_tcp_dport_as_a_map_key_is_tcp_only(tmp_path):
    # `ip daddr A tcp dport vmap { 8080 : jump web }` and `dnat to ip daddr . tcp dport map { ... }`: a
    # `tcp dport` key only matches TCP, as it does in a plain match; UDP to these ports is not translated
    tcp_dport = {"payload": {"protocol": "tcp", "field": "dport"}}
    result = ruleset(tmp_path, [
        nat_chain(),
        {"chain": {"family": "ip", "table": "t", "name": "web", "handle": 5}},
        rule(match("ip", "daddr", "192.0.2.1"),
             {"vmap": {"key": tcp_dport, "data": {"set": [[8080, {"jump": {"target": "web"}}]]}}}),
        rule({"dnat": {"addr": "10.0.0.1"}}, chain="web", handle=6),
        rule({"dnat": {"family": "ip", "addr": {"map": {
            "key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, tcp_dport]},
            "data": {"set": [[{"concat": ["192.0.2.2", 80]}, {"concat": ["10.0.0.2", 8080]}]]}}}}}, handle=3),
    ])
    by_vip = {str(s.vips[0]): s for s in result.spec.services}
    assert [(x.protocol, x.ports) for x in by_vip["192.0.2.1"].listens] == [("tcp", ((8080, 8080),))]
    assert [(x.protocol, x.ports) for x in by_vip["192.0.2.2"].listens] == [("tcp", ((80, 80),))]
    assert [(r.protocol, r.target_port) for r in by_vip["192.0.2.2"].rules] == [("tcp", 8080)]


def test_a_later_rule_for_the_same_address_and_port_is_left_out_for_it(tmp_path):
    # the first DNAT a connection meets decides: 192.0.2.1:80 goes to 10.0.0.1, never to 10.0.0.2
    result = ruleset(tmp_path, [
        nat_chain(),
        rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), {"dnat": {"addr": "10.0.0.1"}}),
        rule(match("ip", "daddr", {"set": ["192.0.2.1", "192.0.2.2"]}), match("tcp", "dport", 80),
             {"dnat": {"addr": "10.0.0.2"}}, handle=3),
    ])
    by_vip = {tuple(str(v) for v in s.vips): [str(b.address) for b in s.backends] for s in result.spec.services}
    assert by_vip == {("192.0.2.1",): ["10.0.0.1"], ("192.0.2.2",): ["10.0.0.2"]}
    assert "LB301" in result.codes


def test_masquerade_rules_that_together_cover_every_backend_are_snat(tmp_path):
    # postrouting sees the backend's address as the destination: each backend is masqueraded by one of the rules
    def masquerade(prefix: str, handle: int) -> dict:
        return rule(match("ip", "daddr", {"prefix": {"addr": prefix, "len": 24}}), {"masquerade": None},
                    chain="post", handle=handle)
    items = [nat_chain(), nat_chain(name="post", hook="postrouting"),
             rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), spread("random", "10.1.0.1", "10.2.0.1")),
             masquerade("10.1.0.0", 7)]
    assert ruleset(tmp_path, items).spec.services[0].mode.kind == "nat"  # one backend is not masqueraded
    result = ruleset(tmp_path, [*items, masquerade("10.2.0.0", 8)])
    assert result.spec.services[0].mode.kind == "snat"
    assert result.codes == []


def test_a_firewall_narrows_the_sources_of_a_dnat_rule_that_has_its_own(tmp_path):
    """`ip saddr != 10.0.0.0/8 drop` before DNAT rules, one of them for 10.1.0.0/16 alone: that rule's clients
    are still 10.1.0.0/16 (the firewall's list took their place: a rule taking all of 10.0.0.0/8), and one for
    192.168.0.0/16, which the firewall lets none of through, is no rule."""
    drop = {"rule": {"family": "ip", "table": "t", "chain": "fw", "handle": 5, "expr": [
        match("ip", "daddr", "192.0.2.1"),
        {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"drop": None}]}}
    firewall = {"chain": {"family": "ip", "table": "t", "name": "fw", "handle": 4, "type": "filter",
                          "hook": "prerouting", "prio": -110, "policy": "accept"}}
    def dnat(source: str, target: str, handle: int) -> dict:
        return rule(match("ip", "saddr", {"prefix": {"addr": source, "len": 16}}), match("ip", "daddr", "192.0.2.1"),
                    match("tcp", "dport", 80), {"dnat": {"addr": target}}, handle=handle)
    result = ruleset(tmp_path, [nat_chain(), firewall, drop, dnat("10.1.0.0", "10.0.9.1", 2),
                                dnat("192.168.0.0", "10.0.9.2", 3)])
    (service,) = result.spec.services
    assert [(r.protocol, tuple(str(s) for s in r.sources), r.pool) for r in service.rules] == [
        ("tcp", ("10.1.0.0/16",), service.rules[0].pool)]


def test_a_masquerade_of_what_leaves_through_an_interface_is_snat_and_says_so(tmp_path):
    # `oifname "eth1" masquerade`: the ruleset does not say eth1 reaches the backends; taken for it, as a nat
    # LB judged by `mode snat` gets no false verdict where a full-NAT LB judged by `mode nat` gets nothing else
    def masquerade(*conditions: dict) -> dict:
        return rule(*conditions, {"masquerade": None}, chain="post", handle=7)
    out = {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth1"}}
    come = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}
    balance = spread("random", "10.1.0.1", "10.2.0.1")
    items = [nat_chain(), nat_chain(name="post", hook="postrouting"),
             rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), balance)]
    result = ruleset(tmp_path, [*items, masquerade(out)])
    assert result.spec.services[0].mode.kind == "snat" and result.codes == []
    assert "eth1" in result.text
    assert ruleset(tmp_path, [*items, masquerade(come)]).spec.services[0].mode.kind == "nat"
    # beside a destination, the interface says no more than the destination does
    covering = match("ip", "daddr", {"prefix": {"addr": "10.1.0.0", "len": 24}})
    assert ruleset(tmp_path, [*items, masquerade(out, covering)]).spec.services[0].mode.kind == "nat"


def test_a_later_nat_chain_of_a_hook_gets_only_what_the_earlier_ones_leave():
    # the kernel translates a connection once: the first NAT chain (by priority) that translates it decides
    result = run("nftables", "nat-chains.json")
    (service,) = result.spec.services
    by_port = {r.ports: (addresses(service, r.pool), r.target_port) for r in service.rules}
    assert by_port == {((80, 80),): (["10.0.0.1"], 8001), ((81, 81),): (["10.0.0.2"], 8002)}


def test_nat_chains_of_a_hook_are_taken_in_the_order_of_their_priorities(tmp_path):
    document = json.loads((CONFIGS / "nftables" / "nat-chains.json").read_text())["nftables"]
    for item in document:
        if "chain" in item and item["chain"]["table"] == "b":
            item["chain"]["prio"] = -110  # table b's chain now comes first and takes ports 80 and 81
    (service,) = ruleset(tmp_path, document[1:]).spec.services
    assert [str(b.address) for b in service.backends] == ["10.0.0.2"]
    assert {r.ports for r in service.rules} == {((80, 80),), ((81, 81),)}


def test_nat_chains_of_equal_priority_that_translate_the_same_traffic_are_not_represented(tmp_path):
    # the kernel runs the chain registered last first; `nft -j list ruleset` lists tables and chains in the order
    # they were made, not in that one, so which of a and b takes port 80 is not in the ruleset
    document = json.loads((CONFIGS / "nftables" / "nat-chains.json").read_text())["nftables"]
    for item in document:
        if "chain" in item and item["chain"]["table"] == "b":
            item["chain"]["prio"] = -100  # `priority dstnat`, as table a's chain
    result = ruleset(tmp_path, document[1:])
    assert {r.ports for r in result.spec.services[0].rules} == {((80, 80),), ((81, 81),)}
    assert result.codes == ["LB301"]


def test_nat_chains_of_equal_priority_that_translate_other_traffic_are_fully_represented(tmp_path):
    items = [nat_chain(name="pre"), nat_chain(name="pre2"),
             rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), {"dnat": {"addr": "10.0.0.1"}}),
             rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 81), {"dnat": {"addr": "10.0.0.2"}},
                  chain="pre2")]
    result = ruleset(tmp_path, items)
    assert {r.ports for r in result.spec.services[0].rules} == {((80, 80),), ((81, 81),)}
    assert result.codes == []


def test_dnat_for_any_destination_needs_vip(tmp_path):
    items = [nat_chain(), rule(match("tcp", "dport", 80), {"dnat": {"addr": "10.0.0.5"}})]
    result = ruleset(tmp_path, items)
    assert result.spec.services == () and result.lost_mentions("--vip")
    given = ruleset(tmp_path, items, vips=(ipaddress.ip_address("192.0.2.7"),))
    assert [str(v) for v in given.spec.services[0].vips] == ["192.0.2.7"]


def test_redirect_is_not_represented(tmp_path):
    result = ruleset(tmp_path, [nat_chain(), rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80),
                                                  {"redirect": {"port": 3128}})])
    assert result.spec.services == () and result.lost_mentions("redirect")


def test_statements_the_spec_cannot_express_are_named_as_nft_writes_them():
    result = run("nftables", "statements.json")
    assert result.spec.services == () and result.codes == ["LB301"] * 3
    written = [line.strip() for line in (CONFIGS / "nftables" / "statements.nft").read_text().splitlines()
               if " dport " in line]
    assert len(written) == 3 and all(result.lost_mentions(f"`{line}`") for line in written)


# ---------------------------------------------------------------- kube-proxy --

@pytest.fixture(scope="module")
def kube() -> Result:
    return run("nftables", "kube-proxy.json")


def test_kube_proxy_cluster_ip(kube):
    web = kube.service("web")
    assert [str(v) for v in web.vips] == ["10.96.0.20"]
    assert addresses(web, "http") == ["10.244.1.5", "10.244.2.7", "10.244.3.9"]
    assert rules(web) == [("tcp", ((80, 80),), (), "http", 8080)]
    assert web.balance.algorithm == "random" and (web.affinity.kind, web.affinity.timeout) == ("flow", 300.0)  # TCP
    assert web.mode.kind == "nat" and web.otherwise == "reject"
    assert kube.lost_mentions("masquerade", "10.244.0.0/16")


def test_kube_proxy_udp_and_tcp_share_the_endpoints(kube):
    dns = kube.service("dns")
    assert sorted(x.protocol for x in dns.listens) == ["tcp", "udp"]
    assert len(dns.pools) == 1 and {r.target_port for r in dns.rules} == {53}


def test_kube_proxy_session_affinity_load_balancer_and_node_port(kube):
    front = kube.service("front")
    assert (front.affinity.kind, front.affinity.timeout) == ("client", 10800)
    external = kube.service("front-external")
    assert [str(v) for v in external.vips] == ["198.51.100.30"]
    assert external.mode.kind == "snat"  # external traffic is always masqueraded
    assert rules(external) == [("tcp", ((443, 443),), ("203.0.113.0/24",), "https", 8443)]
    assert external.otherwise == "drop"  # LoadBalancerSourceRanges
    nodeport = kube.service("front-nodeport")
    assert [str(v) for v in nodeport.vips] == ["192.168.0.2"]
    assert nodeport.listens[0].ports == ((30443, 30443),) and nodeport.otherwise is None


def test_kube_proxy_service_without_endpoints_is_rejected(kube):
    empty = kube.service("empty")
    assert empty.pools == () and empty.otherwise == "reject"
    assert empty.listens[0].ports == ((80, 80),)


# ------------------------------------------------------------------- errors --

@pytest.mark.parametrize("text, words", [
    ('{"nftables": [', "not JSON"),
    ('{"tables": []}', "not an nftables ruleset"),
    ('[1, 2]', "not an nftables ruleset"),
    ('{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [1]}}]}', "malformed rule"),
])
def test_malformed_rulesets_are_lb300(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config("nftables", [str(path)])
    assert raised.value.diagnostics[0].code == "LB300" and words in raised.value.diagnostics[0].message
    done = cli("import", "nftables", str(path))
    assert done.code == 2 and "error[LB300]" in done.err and "Traceback" not in done.err


def test_not_utf8_is_lb300(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00")
    done = cli("import", "nftables", str(path))
    assert done.code == 2 and "not UTF-8" in done.err


# --------------------------------------------------------------- the real nft --

def _live_reason() -> str | None:
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        return "nft or unshare is not installed"
    done = subprocess.run(["unshare", "-Urn", "nft", "list", "ruleset"], capture_output=True, timeout=10)
    return None if done.returncode == 0 else "cannot run nft in a user and network namespace here"


@pytest.mark.parametrize("name", ["lab-dnat", "weighted", "kube-proxy", "nat-chains", "statements"])
def test_live_nft_output_imports_the_same(tmp_path, name):
    reason = _live_reason()
    if reason:
        pytest.skip(reason)
    script = f"nft -f {CONFIGS / 'nftables' / (name + '.nft')} && nft -j list ruleset"
    done = subprocess.run(["unshare", "-Urn", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    live = ruleset_from(tmp_path, done.stdout)
    stored = run("nftables", f"{name}.json")
    assert live.spec.services == stored.spec.services


def ruleset_from(tmp_path, text: str) -> Result:
    path = tmp_path / "live.json"
    path.write_text(text)
    return Result(import_config("nftables", [str(path)]))


@pytest.mark.parametrize("op, states", [("in", ["established", "related"]),
                                        ("==", {"set": ["established", "related"]}), ("in", "established")])
def test_rules_for_established_connections_do_not_stop_the_walk(tmp_path, op, states):
    established = {"match": {"op": op, "left": {"ct": {"key": "state"}}, "right": states}}
    result = ruleset(tmp_path, [
        nat_chain(),
        rule(established, {"accept": None}),
        rule(match("ip", "daddr", "192.0.2.1"), match("tcp", "dport", 80), {"dnat": {"addr": "10.0.0.1"}}, handle=3),
    ])
    assert [str(b.address) for b in result.spec.services[0].backends] == ["10.0.0.1"]
