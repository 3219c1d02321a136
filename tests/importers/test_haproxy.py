"""`lbspec import haproxy`: HAProxy configurations to specs, judged by the model they load to."""

from __future__ import annotations

import ipaddress
import math
import shutil
import subprocess

import pytest

from lbspec.importers import ConfigError, Options, import_config
from lbspec.semantics.model import Affinity

from importing import CONFIGS, Result, addresses, backends, cli, rules, run

VALID = ["lab-tcp-checks.cfg", "lab-tcp-nocheck.cfg", "backups-weights.cfg", "routing.cfg", "http-checks.cfg",
         "unrepresented.cfg", "mixed-checks.cfg", "default-server-order.cfg"]


def haproxy(tmp_path, text: str, **options) -> Result:
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return Result(import_config("haproxy", [str(path)], Options(**options)))


TCP_DEFAULTS = """
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
"""


def frontend_backend(backend_body: str, bind: str = "10.0.0.1:80") -> str:
    return TCP_DEFAULTS + f"""
frontend f
    bind {bind}
    default_backend b

backend b
{backend_body}
"""


# ------------------------------------------------------------- the lab configs --

def test_lab_with_checks_is_a_proxy_with_tcp_health():
    result = run("haproxy", "lab-tcp-checks.cfg")
    lab = result.service("lab")
    assert lab.mode.kind == "proxy"
    assert [str(v) for v in lab.vips] == ["192.0.2.10"]  # the lab's VIP and backends: the e2e tests run this file
    assert [(x.protocol, x.ports) for x in lab.listens] == [("tcp", ((80, 80),))]
    assert addresses(lab, "app") == ["10.0.2.11", "10.0.2.12", "10.0.2.13"]
    assert {b.port for b in lab.backends} == {8080}
    assert lab.balance.algorithm == "round_robin"
    assert lab.affinity.kind == "flow" and lab.affinity.timeout == 30
    # inter 1s, fall 2, rise 1; no `timeout check`: a check may take `inter`
    assert (lab.health.kind, lab.health.fall, lab.health.rise) == ("tcp", 2, 1)
    assert lab.health.timeout == 1 and lab.health.every == 2
    assert rules(lab) == [("tcp", (), (), "app", None)]


def test_lab_configs_are_fully_represented():
    for name in ("lab-tcp-checks.cfg", "lab-tcp-nocheck.cfg"):
        result = run("haproxy", name)
        assert result.codes == [] and result.lost() == []


def test_lab_without_checks_has_no_health():
    lab = run("haproxy", "lab-tcp-nocheck.cfg").service("lab")
    assert lab.health.kind == "none"
    assert math.isinf(lab.health.detection_time)


def test_roundrobin_in_tcp_mode_keeps_connections_on_one_server():
    result = run("haproxy", "lab-tcp-nocheck.cfg")
    lab = result.service("lab")
    assert lab.balance.algorithm == "round_robin" and lab.affinity.kind == "flow"
    assert "never moves" in result.text


# ------------------------------------------------------------------ servers --

def test_weights_maxconn_disabled_and_backups():
    result = run("haproxy", "backups-weights.cfg")
    pg = result.service("pg")
    found = backends(pg, "pg")
    assert (found["pg1"].weight, found["pg2"].weight, found["pg3"].weight) == (10, 5, 0)
    assert found["pg4"].weight == 0  # `disabled`: in maintenance
    assert all(b.max_conn == 200 for b in found.values())  # from default-server
    assert [b.name for b in pg.pool("pg").backups] == ["spare1", "spare2"]
    (failover,) = pg.failovers
    assert (failover.source, failover.targets, failover.below) == ("pg", ("spare1", "spare2"), 1)
    assert pg.balance.algorithm == "least_conn"


def test_default_server_applies_to_the_servers_below_it():
    # HAProxy copies the `default-server` lines read so far (the defaults section's first) into each server
    result = run("haproxy", "default-server-order.cfg")
    found = backends(result.service("f"), "b")
    assert {n: (b.weight, b.max_conn) for n, b in found.items()} == {"s1": (7, None), "s2": (3, None), "s3": (2, 50)}
    assert result.service("f").health.kind == "none"  # `s1` comes before `default-server ... check`
    assert result.codes == ["LB301"]


def test_several_backups_without_allbackups_are_flagged(tmp_path):
    assert run("haproxy", "backups-weights.cfg").lost_mentions("allbackups")
    text = frontend_backend("    option allbackups\n    server a 10.0.1.1:80 check\n"
                            "    server b1 10.0.1.2:80 check backup\n    server b2 10.0.1.3:80 check backup\n")
    result = haproxy(tmp_path, text)
    assert result.service("f").failovers[0].targets == ("b1", "b2")
    assert result.codes == []


def test_tcp_check_timing_uses_connect_timeout_when_timeout_check_is_set():
    pg = run("haproxy", "backups-weights.cfg").service("pg")
    # inter 5s; `timeout check 2s` with a TCP connect check: min(timeout connect 3s, inter) = 3s
    assert (pg.health.kind, pg.health.timeout, pg.health.every) == ("tcp", 3, 8)
    assert (pg.health.fall, pg.health.rise) == (3, 2)


def test_http_check_with_fastinter_spread_and_timeout_check():
    result = run("haproxy", "http-checks.cfg")
    api = result.service("api")
    assert api.health.kind == "http" and api.health.path == "/healthz"
    # min(connect 1s, inter 2s) + timeout check 3s = 4s; inter 2s + 10% spread + 4s = 6.2s
    assert api.health.timeout == pytest.approx(4)
    assert api.health.every == pytest.approx(6.2)
    assert result.lost_mentions("http-check expect status 200")
    assert result.lost_mentions("mode http")


@pytest.mark.parametrize("check, sent, lost", [
    ("option tcp-check\n    tcp-check send PING\\r\\n\n    tcp-check expect string +PONG", "PING\r\n", ["expect"]),
    ("option tcp-check\n    tcp-check expect string 220\n    tcp-check send HELO\\ lb\\r\\n", "HELO lb\r\n",
     ["expect"]),  # the server speaks first: what the LB sends still starts with the first send
    ("option tcp-check\n    tcp-check send-binary 50494e470d0a", "PING\r\n", []),
    ("option tcp-check\n    tcp-check send-binary 00ff00", "\x00\xff\x00", []),
    ("option tcp-check\n    tcp-check send-lf %[src]", None, ["send-lf"]),
    ("option redis-check", "PING\r\n", []),
    # the first bytes of these checks as HAProxy 2.6 sent them in the lab
    ("option ssl-hello-chk", "\x16\x03\x00", []),
    ("option ldap-check", "\x30\x0c\x02\x01\x01\x60\x07\x02\x01\x03\x04\x00\x80\x00", []),
    ("option pgsql-check user x", "\x00\x00\x00\x10\x00\x03\x00\x00user\x00x\x00\x00", []),
    ("option mysql-check user lb", "\x24\x00\x00\x01\x00\x82\x00\x00\x00\x80\x00\x01\x21" + "\x00" * 23 + "lb\x00\x00",
     []),
    ("option mysql-check user lb pre-41", "\x09\x00\x00\x01\x80\x00\x00\x00\x01lb\x00\x00", []),
    ("option mysql-check", None, []),  # it reads the server's greeting and sends nothing
    ("option smtpchk", "HELO localhost\r\n", []),
    ("option smtpchk EHLO lb.example", "EHLO lb.example\r\n", []),
])
def test_what_a_tcp_check_sends_is_the_spec_s_tcp_check_string(tmp_path, check, sent, lost):
    """`health tcp "PING\\r\\n"`: what the LB's checks send (the monitor takes such connections for checks, not
    for LB208); binary it cannot write stays `not represented`."""
    text = frontend_backend(f"    {check}\n    server a 10.0.1.1:80 check\n    server b 10.0.1.2:80 check\n")
    result = haproxy(tmp_path, text)
    health = result.service("f").health
    assert (health.kind, health.path) == ("tcp", sent)
    assert [word for word in ("expect", "send-binary", "send-lf", "mysql-check", "ssl-hello-chk", "ldap-check",
                              "pgsql-check", "smtpchk") if result.lost_mentions(word)] == lost
    if shutil.which("haproxy"):
        (tmp_path / "haproxy.cfg").write_text(text)
        done = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("check", ["    option tcp-check\n    tcp-check connect port 8081\n",
                                   "    option httpchk\n    http-check connect port 8081\n    http-check send uri /\n",
                                   "    option tcp-check\n    tcp-check connect addr 10.0.9.9\n"])
def test_a_check_that_connects_elsewhere_is_not_represented(tmp_path, check):
    # the servers are checked on another port (or address) than the one traffic goes to
    text = frontend_backend(check + "    server a 10.0.1.1:80 check\n    server b 10.0.1.2:80 check\n")
    result = haproxy(tmp_path, text)
    assert result.service("f").health.kind in ("tcp", "http")
    assert result.codes == ["LB301"]
    if shutil.which("haproxy"):
        (tmp_path / "haproxy.cfg").write_text(text)
        done = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_backend_that_repeats_the_mode_is_fully_represented(tmp_path):
    result = haproxy(tmp_path, frontend_backend("    mode tcp\n    server a 10.0.1.1:80\n"))
    assert result.service("f").mode.kind == "proxy"
    assert result.codes == []


@pytest.mark.parametrize("option", ["interface eth0", "namespace blue"])
def test_a_listener_on_one_interface_or_namespace_is_not_represented(tmp_path, option):
    # only traffic arriving on that interface (or in that network namespace) reaches the listener
    plain = haproxy(tmp_path, frontend_backend("    server a 10.0.1.1:80\n"))
    assert plain.codes == []
    result = haproxy(tmp_path, frontend_backend("    server a 10.0.1.1:80\n", bind=f"10.0.0.1:80 {option}"))
    assert [str(v) for v in result.service("f").vips] == ["10.0.0.1"]
    assert result.codes == ["LB301"]


@pytest.mark.parametrize("body", ["    server a 10.0.1.1:80 namespace blue\n    server b 10.0.1.2:80\n",
                                  "    default-server namespace blue\n    server a 10.0.1.1:80\n"])
def test_a_server_reached_from_another_namespace_is_not_represented(tmp_path, body):
    # connections to the server leave from that network namespace, with its own addresses and routes (`haproxy -c`
    # accepts these lines only where the namespace exists: it opens it)
    result = haproxy(tmp_path, frontend_backend(body))
    assert str(result.service("f").pool("b").backends[0].address) == "10.0.1.1"
    assert result.codes == ["LB301"]


@pytest.mark.parametrize("binds, lost", [("10.0.0.1:80\n    bind 10.0.0.2:443", True),
                                          ("10.0.0.1:80,10.0.0.2:80\n    bind 10.0.0.1:443,10.0.0.2:443", False),
                                          (":80\n    bind 10.0.0.2:443", True), (":80\n    bind 10.0.0.2:80", False)])
def test_listeners_that_are_not_on_every_address_are_flagged(tmp_path, binds, lost):
    # the spec listens on each `listen` port at each VIP; HAProxy on 10.0.0.2:443 only does not listen on 10.0.0.1:443
    result = haproxy(tmp_path, frontend_backend("    server a 10.0.1.1:80\n", bind=binds),
                     vips=(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")))
    assert {str(v) for v in result.service("f").vips} == {"10.0.0.1", "10.0.0.2"}
    assert result.codes == (["LB301"] if lost else [])


def test_mixed_checks_give_no_health(tmp_path):
    result = run("haproxy", "mixed-checks.cfg")
    assert result.service("mixed").health.kind == "none"
    assert result.lost_mentions("check", "blind")
    assert "LB301" in result.codes


def test_server_without_port_and_ipv6_servers(tmp_path):
    result = haproxy(tmp_path, frontend_backend("    server v4 10.0.1.1\n    server v6 [2001:db8::2]:8080\n"
                                                "    server v6at ipv6@2001:db8::3:8081\n"))
    found = backends(result.service("f"), "b")
    assert (found["v4"].port, str(found["v6"].address), found["v6"].port) == (None, "2001:db8::2", 8080)
    assert (str(found["v6at"].address), found["v6at"].port) == ("2001:db8::3", 8081)


def test_names_are_made_valid_and_unique(tmp_path):
    text = TCP_DEFAULTS + """
frontend web.front
    bind 10.0.0.1:80
    default_backend web

backend web
    server web 10.0.1.1:80
    server 1st.server 10.0.1.2:80
"""
    result = haproxy(tmp_path, text)
    service = result.service("web_front")
    assert [p.name for p in service.pools] == ["web"]
    assert [b.name for b in service.backends] == ["web-web", "_1st_server"]


# ------------------------------------------------------------------ balance --

# `waived`: the spec waives the balance property -- no share is meant (`first`), or the shares hang on data a
# capture does not show -- where holding HAProxy to `round_robin` or `random` would be a false LB206
@pytest.mark.parametrize("lines, algorithm, fields, lost, waived", [
    ("balance roundrobin", "round_robin", (), False, False),
    ("balance static-rr", "round_robin", (), False, False),
    ("balance leastconn", "least_conn", (), False, False),
    ("balance source", "hash", ("src",), False, False),
    ("balance source\n    hash-type consistent", "maglev", ("src",), False, False),
    ("balance random(1)", "random", (), False, False),
    ("balance random", "least_conn", (), True, False),  # the less loaded of two drawn: load, not weights
    ("balance random(3)", "least_conn", (), True, False),
    ("balance first", "round_robin", (), True, True),
    ("balance uri", "random", (), True, True),
    ("balance hdr(host)", "random", (), True, True),
    ('balance hash req.hdr("x-a\\\\b")', "random", (), True, True),
])
def test_balance(tmp_path, lines, algorithm, fields, lost, waived):
    result = haproxy(tmp_path, frontend_backend(f"    {lines}\n    server a 10.0.1.1:80\n    server b 10.0.1.2:80\n"))
    service = result.service("f")
    assert (service.balance.algorithm, service.balance.fields) == (algorithm, fields)
    assert result.lost_mentions(lines.split("\n")[0].strip()) is lost
    assert [w.property for w in service.waivers] == (["balance"] if waived else [])


@pytest.mark.parametrize("option", ["slowstart 10s", "agent-check agent-port 9999"])
def test_servers_whose_weights_change_at_run_time_waive_the_balance_property(tmp_path, option):
    """`slowstart`: a server back from down takes traffic gradually (HAProxy gave one 12% of 156 connections
    where its weight gives 33%: LB206 under the spec imported before); an agent sets weights at run time."""
    result = haproxy(tmp_path, frontend_backend(f"    balance roundrobin\n    server a 10.0.1.1:80 check {option}\n"
                                                "    server b 10.0.1.2:80 check\n"))
    service = result.service("f")
    assert service.balance.algorithm == "round_robin"
    assert [w.property for w in service.waivers] == ["balance"]
    assert result.lost_mentions(option.split()[0])


def test_stick_on_src_is_client_affinity(tmp_path):
    result = run("haproxy", "unrepresented.cfg")
    www = result.service("www")
    assert www.affinity.kind == "client" and www.affinity.timeout == 1800


def test_stick_on_src_in_another_sections_table_takes_its_expiry(tmp_path):
    text = frontend_backend("    stick on src table st_src\n    server a 10.0.1.1:80\n") + (
        "\nbackend st_src\n    stick-table type ip size 1m expire 45m\n")
    result = haproxy(tmp_path, text)
    assert (result.service("f").affinity.kind, result.service("f").affinity.timeout) == ("client", 2700)
    assert result.codes == []


def test_timeout_tunnel_decides_the_flow_timeout(tmp_path):
    text = frontend_backend("    timeout tunnel 1h\n    server a 10.0.1.1:80\n")
    assert haproxy(tmp_path, text).service("f").affinity.timeout == 3600


def test_a_timeout_of_0_is_none(tmp_path):
    """HAProxy waits for ever on a timeout of 0: the spec says no idle timeout (it said 0 ms, which no spec
    may say, so the import failed)."""
    text = frontend_backend("    server a 10.0.1.1:80\n").replace("timeout client 30s", "timeout client 0")
    assert haproxy(tmp_path, text).service("f").affinity.timeout == 30
    never = text.replace("timeout server 30s", "timeout server 0")
    assert haproxy(tmp_path, never).service("f").affinity.timeout == Affinity("flow").timeout  # the language's default


# ------------------------------------------------------------------- routing --

def test_use_backend_with_src_and_dst_port_acls():
    result = run("haproxy", "routing.cfg")
    edge = result.service("edge")
    assert [str(v) for v in edge.vips] == ["192.0.2.10"]
    assert edge.listens[0].ports == ((80, 80), (443, 443), (9000, 9000))
    office = ("10.0.0.0/8", "192.168.0.0/16")
    assert rules(edge) == [("tcp", ((9000, 9000),), office, "admin", None),
                           ("tcp", (), office, "office", None),
                           ("tcp", (), (), "web", None)]
    assert edge.balance.algorithm == "maglev"  # from the default backend
    assert result.lost_mentions("use_backend canary", "req.ssl_sni")
    assert "canary" in [p.name for p in edge.pools]
    assert "unused" in result.text and "used by no frontend" in result.text


def test_frontend_without_default_backend_rejects_the_rest(tmp_path):
    text = TCP_DEFAULTS + """
frontend f
    bind 10.0.0.1:80
    bind 10.0.0.1:81
    use_backend b if { dst_port 81 }

backend b
    server a 10.0.1.1:80
"""
    service = haproxy(tmp_path, text).service("f")
    assert service.otherwise == "reject"
    assert rules(service) == [("tcp", ((81, 81),), (), "b", None)]


def test_a_source_of_another_family_gives_no_rule(tmp_path):
    text = TCP_DEFAULTS + """
frontend f
    bind 10.0.0.1:80
    use_backend b if { src 2001:db8::/32 }
    default_backend b

backend b
    server a 10.0.1.1:80
"""
    assert rules(haproxy(tmp_path, text).service("f")) == [("tcp", (), (), "b", None)]


def _admitting(rules_text: str) -> str:
    return TCP_DEFAULTS + f"""
frontend f
    bind 10.0.0.1:80
    acl office src 10.0.0.0/8 192.168.0.0/16
{rules_text}
    use_backend admin if {{ src 10.1.0.0/16 }}
    use_backend admin if {{ src 172.16.0.0/12 }}
    default_backend b

backend b
    server a 10.0.1.1:80

backend admin
    server x 10.0.2.1:80
"""


def test_tcp_request_rules_that_admit_clients_by_source_are_rules_from_them_and_a_reject(tmp_path):
    """`accept if` source conditions then `reject`: every rule takes the admitted clients alone (narrowed to
    its own sources), and the rest are rejected.  Not imported, HAProxy's rejections were LB200s."""
    text = _admitting("    tcp-request connection accept if office\n    tcp-request connection accept if "
                      "{ src 203.0.113.7 }\n    tcp-request connection reject")
    result = haproxy(tmp_path, text)
    service = result.service("f")
    assert rules(service) == [("tcp", (), ("10.1.0.0/16",), "admin", None),  # within the office: narrowed
                              ("tcp", (), ("10.0.0.0/8", "192.168.0.0/16", "203.0.113.7/32"), "b", None)]
    assert service.otherwise == "reject"  # 172.16.0.0/12 is not admitted: its rule is gone
    assert not result.lost_mentions("tcp-request")


@pytest.mark.parametrize("rules_text", [
    "    tcp-request connection reject if office",  # a deny list: the spec has no rule for "all but these"
    "    tcp-request connection accept if office\n    tcp-request content reject",  # two kinds of rule
    "    tcp-request connection accept if { dst_port 80 }\n    tcp-request connection reject",  # not a source
])
def test_tcp_request_rules_beyond_a_list_of_admitted_clients_stay_not_represented(tmp_path, rules_text):
    result = haproxy(tmp_path, _admitting(rules_text))
    assert result.service("f").otherwise is None
    assert result.lost_mentions("tcp-request")


# ---------------------------------------------------------------- listeners --

def test_wildcard_bind_without_and_with_vip(tmp_path):
    text = frontend_backend("    server a 10.0.1.1:80\n", bind="*:80")
    result = haproxy(tmp_path, text)
    assert [str(v) for v in result.service("f").vips] == ["0.0.0.0"]
    assert result.lost_mentions("bind *:80", "--vip")
    given = haproxy(tmp_path, text, vips=(__import__("ipaddress").ip_address("192.0.2.99"),))
    assert [str(v) for v in given.service("f").vips] == ["192.0.2.99"]
    assert given.codes == []


def test_two_frontends_on_one_bind_load_with_a_warning(tmp_path):
    # HAProxy binds with SO_REUSEPORT, so two frontends may share an address and port: the kernel
    # spreads connections between them.  Two proxies on one listener are a warning, not a spec that fails.
    text = TCP_DEFAULTS + "".join(f"""
frontend {name}
    bind 192.0.2.10:80
    default_backend {name}-pool

backend {name}-pool
    server s 10.0.1.{index}:80
""" for index, name in enumerate(("a", "b"), 1))
    result = haproxy(tmp_path, text)
    assert [s.name for s in result.spec.services] == ["a", "b"]
    assert [(x.code, x.severity.value) for x in result.spec.diagnostics] == [("LB027", "warning")]


def test_port_ranges_and_ipv6_binds(tmp_path):
    text = frontend_backend("    server a 10.0.1.1\n", bind="10.0.0.1:8000-8010")
    text = text.replace("    bind 10.0.0.1:8000-8010\n", "    bind 10.0.0.1:8000-8010\n    bind [2001:db8::1]:80\n")
    service = haproxy(tmp_path, text).service("f")
    assert [str(v) for v in service.vips] == ["10.0.0.1", "2001:db8::1"]
    assert service.listens[0].ports == ((80, 80), (8000, 8010))


def test_listen_section_is_frontend_and_backend(tmp_path):
    text = TCP_DEFAULTS + """
listen both
    bind 10.0.0.9:3306
    server db1 10.0.9.1:3306 check
"""
    service = haproxy(tmp_path, text).service("both")
    assert [p.name for p in service.pools] == ["both"] and service.health.kind == "tcp"


def test_frontend_without_bind_is_not_imported(tmp_path):
    text = TCP_DEFAULTS + "\nfrontend f\n    default_backend b\n\nbackend b\n    server a 10.0.1.1:80\n"
    result = haproxy(tmp_path, text)
    assert result.spec.services == () and "no usable `bind`" in result.text


@pytest.mark.parametrize("bind", ["localhost:8001", '"${VIP_ADDR}:8002"', "/run/haproxy/app.sock"])
def test_a_bind_on_a_host_name_variable_or_path_is_left_out(tmp_path, bind):
    # HAProxy accepts all three (a name or variable resolved at start, a Unix socket); the spec needs an address
    text = frontend_backend("    server a 10.0.1.1:80\n", bind=f"{bind}\n    bind 10.0.0.1:80")
    result = haproxy(tmp_path, text)
    assert [str(v) for v in result.service("f").vips] == ["10.0.0.1"]
    assert result.codes == ["LB301"]
    alone = haproxy(tmp_path, frontend_backend("    server a 10.0.1.1:80\n", bind=bind))
    assert alone.spec.services == () and set(alone.codes) == {"LB301"}


def test_a_statistics_listener_is_not_a_service(tmp_path):
    # HAProxy answers on it itself; there is nothing to balance (an empty pool would say connections go nowhere)
    text = frontend_backend("    server a 10.0.1.1:80\n") + (
        "\nlisten stats\n    bind 10.0.0.1:8404\n    mode http\n    stats enable\n    stats uri /stats\n")
    result = haproxy(tmp_path, text)
    assert [s.name for s in result.spec.services] == ["f"]
    assert result.codes == []


# ----------------------------------------------------------------- defaults --

def test_settings_come_from_the_last_defaults_section(tmp_path):
    text = """
defaults
    mode http
    timeout client 5s

defaults
    mode tcp
    timeout client 50s
    timeout server 50s

frontend f
    bind 10.0.0.1:80
    default_backend b

backend b
    server a 10.0.1.1:80
"""
    result = haproxy(tmp_path, text)
    assert result.service("f").affinity.timeout == 50
    assert not result.lost_mentions("mode http")


def test_named_defaults_and_from(tmp_path):
    text = """
defaults slow
    mode tcp
    timeout client 90s
    timeout server 90s

defaults fast
    mode tcp
    timeout client 5s
    timeout server 5s

frontend f from slow
    bind 10.0.0.1:80
    default_backend b

backend b from slow
    server a 10.0.1.1:80
"""
    assert haproxy(tmp_path, text).service("f").affinity.timeout == 90


def test_files_are_read_in_order():
    result = run("haproxy", "split-global.cfg", "split-proxies.cfg")
    split = result.service("split")
    assert (split.health.fall, split.health.rise, split.health.every) == (2, 2, 6)  # default-server of file 1
    assert split.affinity.timeout == 20
    assert [str(b.address) for b in split.backends] == ["10.5.0.11", "2001:db8:5::12"]
    assert split.balance.algorithm == "random" and result.codes == []


# ----------------------------------------------------------- not represented --

@pytest.mark.parametrize("setting", [
    "maxconn 50000", "option redispatch", "retries 3", "maxconn 10000", "option forwardfor", "tcp-request",
    "http-request deny", "ssl", "slowstart 30s", "send-proxy", "app3.internal", "agent-check", "balance uri",
])
def test_each_unrepresented_setting_has_a_comment(setting):
    result = run("haproxy", "unrepresented.cfg")
    assert result.lost_mentions(setting), setting


def test_unrepresented_settings_name_their_line():
    result = run("haproxy", "unrepresented.cfg")
    assert result.lost_mentions("unrepresented.cfg:8", "option redispatch")
    lines = {d.span.line for d in result.imported.diagnostics if d.span}
    assert {4, 8, 9, 16, 17} <= lines
    assert set(result.codes) == {"LB301"}


def test_hostname_server_is_left_out():
    www = run("haproxy", "unrepresented.cfg").service("www")
    assert [b.name for b in www.backends] == ["app1", "app2", "app4"]


# ------------------------------------------------------------------- errors --

@pytest.mark.parametrize("text, line", [
    ("backend b\n    server s1 10.0.0.1:80 weight abc\n", 2),
    ("backend b\n    server s1\n", 2),
    ("frontend f\n    bind \"10.0.0.1:80\n", 2),
    ("bind :80\n", 1),
    ("backend b\n    server s1 10.0.0.1:80 inter 2sec\n", 2),
    ("frontend f\n    bind 10.0.0.1:80\n    default_backend missing\n", 3),
    ("frontend f from nowhere\n    bind 10.0.0.1:80\n", 1),
    ("frontend f\n    bind 10.0.0.1\n", 2),
    ("frontend f\n    bind 10.0.0.300:80\n", 2),
    ("listen l\n    bind :80\n    server s1 10.0.0.1:99999\n", 3),
    ("global\n    maxconn 10\nfrontend\n", 3),
])
def test_malformed_configs_are_lb300_with_the_line(tmp_path, text, line):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config("haproxy", [str(path)])
    (diagnostic,) = raised.value.diagnostics
    assert diagnostic.code == "LB300" and diagnostic.span.line == line
    run_ = cli("import", "haproxy", str(path))
    assert run_.code == 2 and "error[LB300]" in run_.err and f"bad.cfg:{line}:" in run_.err
    assert "Traceback" not in run_.err and run_.out == ""


def test_unreadable_file_is_lb300(tmp_path):
    run_ = cli("import", "haproxy", str(tmp_path / "missing.cfg"))
    assert run_.code == 2 and "LB300" in run_.err and "no such file" in run_.err


# ---------------------------------------------------------- the real haproxy --

@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("name", VALID)
def test_haproxy_accepts_the_test_configs(name):
    done = subprocess.run(["haproxy", "-c", "-f", str(CONFIGS / "haproxy" / name)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_split_config():
    files = [str(CONFIGS / "haproxy" / n) for n in ("split-global.cfg", "split-proxies.cfg")]
    done = subprocess.run(["haproxy", "-c", "-f", files[0], "-f", files[1]], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_settings_without_checked_servers_are_not_comments(tmp_path):
    text = frontend_backend("    option httpchk GET /\n    http-check expect status 200\n    timeout check 1s\n"
                            "    server a 10.0.1.1:80\n")
    result = haproxy(tmp_path, text)
    assert result.service("f").health.kind == "none"
    assert result.codes == []
