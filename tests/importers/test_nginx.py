"""`lbspec import nginx`: nginx configurations (stream and http) to specs, judged by their model."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lbspec.importers import ConfigError, Options, import_config

from importing import CONFIGS, Result, addresses, cli, rules, run

VALID = ["lab-stream.conf", "hashing.conf", "backups.conf", "access.conf", "http.conf", "with-includes.conf"]


def nginx(tmp_path, text: str, **options) -> Result:
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return Result(import_config("nginx", [str(path)], Options(**options)))


def stream(body: str) -> str:
    return "events {}\nstream {\n" + body + "\n}\n"


# ------------------------------------------------------------- the lab config --

def test_lab_stream_tcp_and_udp():
    result = run("nginx", "lab-stream.conf")
    tcp, udp = result.service("tcp_app"), result.service("udp_echo")
    assert tcp.mode.kind == udp.mode.kind == "proxy"
    assert [str(v) for v in tcp.vips] == [str(v) for v in udp.vips] == ["192.0.2.10"]  # the lab's, as in e2e
    assert [(x.protocol, x.ports) for x in tcp.listens] == [("tcp", ((80, 80),))]
    assert [(x.protocol, x.ports) for x in udp.listens] == [("udp", ((53, 53),))]
    assert addresses(tcp, "tcp_app") == ["10.0.2.11", "10.0.2.12", "10.0.2.13"]
    assert {b.port for b in udp.backends} == {5353}
    assert rules(udp) == [("udp", (), (), "udp_echo", None)]
    assert tcp.balance.algorithm == "round_robin"
    assert (tcp.affinity.kind, tcp.affinity.timeout, udp.affinity.timeout) == ("flow", 30, 5)


def test_passive_checks_are_no_health():
    result = run("nginx", "lab-stream.conf")
    assert result.service("tcp_app").health.kind == "none"
    assert result.lost_mentions("max_fails=1 fail_timeout=10s")
    assert set(result.codes) == {"LB301"}


def test_max_fails_zero_is_no_health_without_a_warning():
    result = run("nginx", "hashing.conf")
    assert result.service("unzoned").health.kind == "none"
    assert not result.lost_mentions("unzoned")
    assert not any("hashing.conf:36" in line for line in result.lost())


# ------------------------------------------------------------------ balance --

def test_hash_methods():
    result = run("nginx", "hashing.conf")
    by_client, by_flow = result.service("by_client").balance, result.service("by_flow").balance
    assert (by_client.algorithm, by_client.fields) == ("maglev", ("src",))
    assert (by_flow.algorithm, by_flow.fields) == ("hash", ("src", "sport"))
    assert result.service("by_cookie").balance.algorithm == "random"
    # its shares hang on data a capture does not show: the balance property is waived, not a false LB206
    assert [w.property for w in result.service("by_cookie").waivers] == ["balance"]
    assert not result.service("by_client").waivers and not result.service("by_flow").waivers
    assert result.lost_mentions("hash $ssl_preread_server_name")
    assert result.lost_mentions("ssl_preread on")


def test_random_two_and_least_conn():
    result = run("nginx", "hashing.conf")
    assert result.service("two_choices").balance.algorithm == "least_conn"  # by load, not by weight
    assert result.lost_mentions("random two least_conn")
    assert result.service("limited").balance.algorithm == "least_conn"


def test_max_conns_and_zones():
    result = run("nginx", "hashing.conf")
    assert [b.max_conn for b in result.service("limited").backends] == [100, 50]
    assert [b.max_conn for b in result.service("unzoned").backends] == [10, None]
    assert result.lost_mentions("max_conns=10", "zone")
    assert not result.lost_mentions("max_conns=100")


# ------------------------------------------------------------------ servers --

def test_weights_down_and_backups():
    result = run("nginx", "backups.conf")
    mail = result.service("mail")
    weights = [(b.name, b.weight, b.backup) for b in mail.backends]
    assert weights == [("mail-1", 5, False), ("mail-2", 2, False), ("mail-3", 0, False),
                       ("mail-4", 1, True), ("mail-5", 1, True)]
    (failover,) = mail.failovers
    assert (failover.targets, failover.below) == (("mail-4", "mail-5"), 1)
    assert [str(v) for v in mail.vips] == ["192.0.2.50", "2001:db8::50"]
    assert result.lost_mentions("max_fails=3 fail_timeout=30s")


def test_direct_proxy_pass_and_wildcard_listen():
    result = run("nginx", "unrepresented.conf")
    direct = result.service("stream-server")
    assert [str(v) for v in direct.vips] == ["0.0.0.0"]
    assert [(str(b.address), b.port) for b in direct.backends] == [("10.10.1.53", 53)]
    assert direct.health.kind == "none"
    assert result.lost_mentions("listen 8053 udp", "--vip")
    given = run("nginx", "unrepresented.conf", vips=(ipaddress.ip_address("192.0.2.81"),))
    assert [str(v) for v in given.service("stream-server").vips] == ["192.0.2.81"]


def test_tcp_and_udp_on_one_server_block(tmp_path):
    result = nginx(tmp_path, stream("upstream dns { server 10.0.2.1:53; }\n"
                                    "server { listen 10.0.0.53:53; listen 10.0.0.53:53 udp; proxy_pass dns; }"))
    service = result.service("dns")
    assert sorted(x.protocol for x in service.listens) == ["tcp", "udp"]
    assert rules(service) == [(None, (), (), "dns", None)]


def test_quic_listens_on_udp(tmp_path):
    # HTTP/3 (nginx 1.25+): `listen 443 quic` takes QUIC, over UDP, beside the TCP listener of HTTP/1 and 2
    text = ("events {}\nhttp {\n upstream app { server 10.0.3.1:8080 max_fails=0; }\n"
            " server { listen 10.0.0.9:443 ssl; LISTEN ssl_certificate site.pem; ssl_certificate_key site.key;\n"
            "   location / { proxy_pass http://app; } }\n}\n")
    both = nginx(tmp_path, text.replace("LISTEN", "listen 10.0.0.9:443 quic;")).service("app")
    assert sorted((x.protocol, x.ports) for x in both.listens) == [("tcp", ((443, 443),)), ("udp", ((443, 443),))]
    assert rules(both) == [(None, (), (), "app", None)]
    alone = nginx(tmp_path, text.replace(" ssl; LISTEN", " quic;")).service("app")
    assert [(x.protocol, x.ports) for x in alone.listens] == [("udp", ((443, 443),))]


@pytest.mark.parametrize("listens, lost", [("listen 10.0.0.1:80; listen 10.0.0.2:443;", True),
                                            ("listen 10.0.0.1:80; listen 10.0.0.2:80;", False),
                                            ("listen 10.0.0.1:80; listen 10.0.0.1:53 udp;", False)])
def test_listeners_that_are_not_on_every_address_are_flagged(tmp_path, listens, lost):
    # the spec listens on each `listen` port at each VIP; nginx on 10.0.0.2:443 only does not listen on 10.0.0.1:443
    result = nginx(tmp_path, stream("upstream u { server 10.0.2.1:80 max_fails=0; }\n"
                                    f"server {{ {listens} proxy_pass u; }}"))
    assert result.service("u").vips
    assert result.codes == (["LB301"] if lost else [])


# ------------------------------------------------------------------- access --

def test_allow_deny_all_becomes_rules_and_reject():
    result = run("nginx", "access.conf")
    admin = result.service("admin")
    assert rules(admin) == [("tcp", (), ("10.0.0.0/8",), "admin", None)]  # the IPv6 prefix: no IPv6 VIP
    assert admin.otherwise == "reject"
    odd = result.service("odd")
    assert rules(odd) == [("tcp", (), (), "odd", None)] and odd.otherwise is None
    assert result.lost_mentions("deny 10.9.9.9")


def test_allow_deny_in_a_location_is_not_dropped(tmp_path):
    # nginx refuses other clients' requests in that location; the spec's rules would let every client through
    text = ("events {}\nhttp {\n upstream app { server 10.0.3.1:8080 max_fails=0; }\n"
            " server { listen 10.0.0.9:80; location / { ACCESS proxy_pass http://app; } }\n}\n")
    result = nginx(tmp_path, text.replace("ACCESS", "allow 10.0.0.0/8; deny all;"))
    plain = nginx(tmp_path, text.replace("ACCESS", ""))
    assert rules(result.service("app")) == rules(plain.service("app"))
    assert result.codes.count("LB301") == plain.codes.count("LB301") + 2


# --------------------------------------------------------------------- http --

def test_http_server_with_locations():
    result = run("nginx", "http.conf")
    www = result.service("www_example_com")
    assert www.mode.kind == "proxy" and [p.name for p in www.pools] == ["site"]
    assert {b.port for b in www.backends} == {8080}
    assert result.lost_mentions("location /api/", "path-based")
    assert result.lost_mentions("proxy_set_header")
    assert result.lost_mentions("proxy_pass http://site", "each HTTP request")


def test_ip_hash_is_flagged(tmp_path):
    result = nginx(tmp_path, "events {}\nhttp {\n upstream u { ip_hash; server 10.0.0.1:80; server 10.0.0.2; }\n"
                             " server { listen 10.0.0.9:80; location / { proxy_pass http://u; } }\n}\n")
    service = result.service("u")
    assert (service.balance.algorithm, service.balance.fields) == ("hash", ("src",))
    assert [b.port for b in service.backends] == [80, 80]  # http upstreams default to port 80
    assert result.lost_mentions("ip_hash", "/24")


def test_proxy_pass_https_goes_to_port_443_and_is_tls(tmp_path):
    # nginx's implicit upstream for `proxy_pass https://ADDR` uses port 443, and speaks TLS to every upstream
    text = ("events {}\nhttp {\n upstream app { server 10.0.3.1:8443; }\n"
            " server { listen 10.0.0.9:80; location / { proxy_pass SCHEME://app; } }\n"
            " server { listen 10.0.0.9:81; location / { proxy_pass SCHEME://10.0.9.9; } }\n}\n")
    result = nginx(tmp_path, text.replace("SCHEME", "https"))
    direct = next(s for s in result.spec.services if s.name != "app")
    assert [(str(b.address), b.port) for b in direct.backends] == [("10.0.9.9", 443)]
    assert [b.port for b in result.service("app").backends] == [8443]
    plain = nginx(tmp_path, text.replace("SCHEME", "http"))
    assert result.codes.count("LB301") == plain.codes.count("LB301") + 2  # TLS to the upstream, in each service


# ----------------------------------------------------------- not represented --

@pytest.mark.parametrize("setting", ["listen 192.0.2.80:443 ssl", "proxy_ssl on", "proxy_protocol on",
                                     "proxy_next_upstream on", "limit_conn perclient 10", "slow_start",
                                     "server app.internal:8443", "proxy_responses 1"])
def test_each_unrepresented_setting_has_a_comment(setting):
    assert run("nginx", "unrepresented.conf").lost_mentions(setting), setting


def test_settings_of_the_stream_block_count_for_every_server(tmp_path):
    result = nginx(tmp_path, stream("proxy_bind 10.0.0.9;\nupstream u { server 10.0.0.1:80 max_fails=0; }\n"
                                    "server { listen 10.0.0.9:80; proxy_pass u; }"))
    assert result.lost_mentions("proxy_bind 10.0.0.9")


STREAM_PAIR = "upstream u { server 10.0.0.1:80 max_fails=0; server 10.0.0.2:80 max_fails=0; }\n"
HTTP_PAIR = ("events {}\nhttp {\n upstream u { server 10.0.0.1:80 max_fails=0; server 10.0.0.2:80 max_fails=0; }\n"
             " server { listen 10.0.0.9:80; location / { LOCATION proxy_pass http://u; } }\n}\n")


@pytest.mark.parametrize("text, lost", [
    (stream(STREAM_PAIR + "server { listen 10.0.0.9:80; proxy_pass u; }"), True),  # on by default
    (stream(STREAM_PAIR + "server { listen 10.0.0.9:80; proxy_pass u; proxy_next_upstream off; }"), False),
    (stream("proxy_next_upstream off;\n" + STREAM_PAIR + "server { listen 10.0.0.9:80; proxy_pass u; }"), False),
    (stream(STREAM_PAIR.replace(" server 10.0.0.2:80 max_fails=0;", "")
            + "server { listen 10.0.0.9:80; proxy_pass u; }"), False),  # one server: no next one
], ids=["default", "off", "off-for-the-stream-block", "one-server"])
def test_next_upstream_is_not_represented_unless_off(tmp_path, text, lost):
    # like HAProxy's `option redispatch`, nginx passes a connection that fails on its server to the next server
    assert nginx(tmp_path, text).codes == (["LB301"] if lost else [])


def test_half_close_changes_nothing_a_spec_says(tmp_path):
    # on, the session outlives the client's FIN as a spec takes for granted; off, the monitor reports lost answers
    for value in ("on", "off"):
        server = f"server {{ listen 10.0.0.9:80; proxy_pass u; proxy_next_upstream off; proxy_half_close {value}; }}"
        assert nginx(tmp_path, stream(STREAM_PAIR + server)).codes == []


NEXT_SERVER = "server { listen 10.0.0.9:80; proxy_pass u; LIMITS }"


@pytest.mark.parametrize("text, lost", [
    (stream(STREAM_PAIR + NEXT_SERVER), 3),  # on by default, and its two limits
    (stream(STREAM_PAIR + NEXT_SERVER.replace("LIMITS", "proxy_next_upstream off; LIMITS")), 0),
    (stream("proxy_next_upstream off;\n" + STREAM_PAIR + NEXT_SERVER), 0),
    (stream(STREAM_PAIR.replace(" server 10.0.0.2:80 max_fails=0;", "") + NEXT_SERVER), 0),
    (stream(STREAM_PAIR + NEXT_SERVER.replace("LIMITS", "proxy_next_upstream_tries 1;")), 0),
    (stream("proxy_next_upstream_tries 1;\n" + STREAM_PAIR + NEXT_SERVER.replace("LIMITS", "")), 0),
    (stream(STREAM_PAIR + NEXT_SERVER.replace("LIMITS", "proxy_next_upstream_tries 0; "
                                                        "proxy_next_upstream_timeout 0s;")), 1),  # 0: no limit
], ids=["default", "off", "off-for-the-stream-block", "one-server", "one-try", "one-try-for-the-stream-block",
        "no-limits"])
def test_next_upstream_limits_are_not_represented_only_when_a_connection_moves(tmp_path, text, lost):
    # `proxy_next_upstream_tries` and `_timeout` limit how far a failed connection moves on: nothing to limit when
    # it does not move (`off`, one server, or one try in all, which also makes `proxy_next_upstream` moot)
    text = text.replace("LIMITS", "proxy_next_upstream_tries 3; proxy_next_upstream_timeout 5s;")
    assert nginx(tmp_path, text).codes == ["LB301"] * lost
    if not _can_check_nginx():
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "nginx.conf").write_text(text)
        done = nginx_t(tmp_path, tmp_path / "conf", "nginx.conf")
        assert done.returncode == 0, done.stderr


def test_next_upstream_in_http_retries_requests_unless_off(tmp_path):
    # http's default is `proxy_next_upstream error timeout`
    default = nginx(tmp_path, HTTP_PAIR.replace("LOCATION", ""))
    off = nginx(tmp_path, HTTP_PAIR.replace("LOCATION", "proxy_next_upstream off;"))
    retried = nginx(tmp_path, HTTP_PAIR.replace("LOCATION", "proxy_next_upstream error http_502;"))
    assert default.codes.count("LB301") == retried.codes.count("LB301") == off.codes.count("LB301") + 1


def test_next_upstream_limits_in_http_count_where_requests_move(tmp_path):
    # the location that proxies inherits the server block's settings and may override them
    counts = {}
    for case, location in {"off": "proxy_next_upstream off;", "limited": "proxy_next_upstream_tries 3;",
                           "off-limited": "proxy_next_upstream off; proxy_next_upstream_tries 3;",
                           "one-try": "proxy_next_upstream_tries 1;"}.items():
        text = HTTP_PAIR.replace("LOCATION", location)
        counts[case] = nginx(tmp_path, text).codes.count("LB301")
        if not _can_check_nginx():
            (tmp_path / case).mkdir()
            (tmp_path / case / "nginx.conf").write_text(text.replace("http {", "http {\n access_log off;"))
            done = nginx_t(tmp_path, tmp_path / case, "nginx.conf")
            assert done.returncode == 0, done.stderr
    assert counts["off-limited"] == counts["one-try"] == counts["off"]
    assert counts["limited"] == counts["off"] + 2  # the default `error timeout`, and the limit


# ------------------------------------------------------------------ includes --

def test_includes_are_followed():
    result = run("nginx", "with-includes.conf")
    included = result.service("included")
    assert addresses(included, "included") == ["10.11.0.11", "10.11.0.12"]
    assert "conf.d/servers.stream:1" in result.text


# ------------------------------------------------------------------- errors --

@pytest.mark.parametrize("text, line, words", [
    ("events {}\nstream {\n server { listen 80; proxy_pass a\n}\n", 3, "not terminated"),
    ("events {}\nstream {\n upstream a { server 10.0.0.1:80; }\n", 3, "unexpected end of file"),
    ("upstream a { server 10.0.0.1:80; }\n", 1, "not allowed here"),
    ("events {}\nstream {\n upstream a { server 10.0.0.1; }\n server { listen 80; proxy_pass a; }\n}\n", 3,
     "has no port"),
    ("events {}\nstream {\n upstream a { hash; server 10.0.0.1:80; }\n}\n", 3, "invalid number of arguments"),
    ("events {}\nstream {\n include missing.conf;\n}\n", 3, "cannot read"),
    ("events {}\nstream {\n server { listen 10.0.0.1:http; proxy_pass 10.0.0.2:80; }\n}\n", 3, "no valid port"),
    ("events {}\nstream {\n upstream a { server 10.0.0.1:80 weight=x; }\n server { listen 80; proxy_pass a; }\n}\n",
     3, "not a number"),
])
def test_malformed_configs_are_lb300(tmp_path, text, line, words):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        import_config("nginx", [str(path)])
    (diagnostic,) = raised.value.diagnostics
    assert diagnostic.code == "LB300" and words in diagnostic.message
    assert diagnostic.span is not None and diagnostic.span.line == line
    done = cli("import", "nginx", str(path))
    assert done.code == 2 and "error[LB300]" in done.err and "Traceback" not in done.err


@pytest.mark.parametrize("name, text, directive", [
    ("haproxy.cfg", (CONFIGS / "haproxy" / "lab-tcp-checks.cfg").read_text(), "global"),
    ("nginx.conf", "events {}\nstream {}\nworker_processes 1\n", "worker_processes 1"),
], ids=["haproxy-config", "last-directive-without-semicolon"])
def test_a_file_ending_inside_a_directive_is_lb300_at_that_directive(tmp_path, name, text, directive):
    path = tmp_path / name
    path.write_text(text)
    done = cli("import", "nginx", str(path), "--format", "json")
    assert done.code == 2
    (diagnostic,) = json.loads(done.err)["diagnostics"]
    assert diagnostic["code"] == "LB300" and diagnostic["message"].strip()
    assert diagnostic["span"]["file"] == str(path)
    assert diagnostic["span"]["line"] == text.splitlines().index(directive) + 1


# ------------------------------------------------------------- the real nginx --

def _can_check_nginx() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not installed"
    if shutil.which("unshare") is None:
        return "unshare is missing (nginx -t binds the listen addresses; it runs in a network namespace)"
    done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    return None if done.returncode == 0 else "cannot create a user and network namespace here"


def nginx_t(tmp_path, directory, name: str) -> subprocess.CompletedProcess:
    """`nginx -t` of ``directory``/``name``, with the modules Debian's nginx.conf loads."""
    wrapper = directory / "wrapper.conf"
    wrapper.write_text(f"include /etc/nginx/modules-enabled/*.conf;\ninclude {name};\n")
    # nginx -t binds the listen addresses: let it, in a network namespace of its own.  For an http block it
    # also makes its temporary directories and gives them to its user; in a user namespace only root is
    # there to give them to, so it runs as root on empty directories mounted over where they go.
    mounts = ""
    for number, parent in enumerate(_temp_parents()):
        empty = directory / f"temp-{number}"
        empty.mkdir(exist_ok=True)
        mounts += f"mount --bind {empty} {parent} && "
    script = (f"{mounts}sysctl -qw net.ipv4.ip_nonlocal_bind=1 net.ipv6.ip_nonlocal_bind=1 && "
              f"nginx -t -q -e stderr -c {wrapper} -g 'pid {tmp_path}/nginx.pid; user root;'")
    return subprocess.run(["unshare", "-rnm", "sh", "-c", script], capture_output=True, text=True, timeout=30)


def _temp_parents() -> set[str]:
    """The existing directories that hold the temporary directories nginx was built to use."""
    built = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10).stderr
    paths = re.findall(r"--http-[a-z-]+-temp-path=(\S+)", built)
    return {str(Path(p).parent) for p in paths if Path(p).parent.is_dir()}


@pytest.mark.parametrize("name", VALID)
def test_nginx_accepts_the_test_configs(tmp_path, name):
    reason = _can_check_nginx()
    if reason:
        pytest.skip(reason)
    shutil.copytree(CONFIGS / "nginx", tmp_path / "conf")
    done = nginx_t(tmp_path, tmp_path / "conf", name)
    assert done.returncode == 0, done.stderr
