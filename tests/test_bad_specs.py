"""Malformed and ill-formed specs: each gives the right code at the right place.

`@` marks where the diagnostic must point; it is removed before loading.
"""

from __future__ import annotations

import json

import pytest

from lbspec.loader import load_path, load_text

from conftest import MINIMAL, locate, service

S = "service s {\n    vip 192.0.2.1\n    listen tcp 80\n    pool p {\n        backend b1 10.0.0.1\n    }\n"

CASES = {
    # --- syntax
    "misspelt top-level keyword": ("LB001", "@servce web {}"),
    "misspelt statement": ("LB001", "service s { @lisen tcp 80 }"),
    "misspelt otherwise action": ("LB001", S + "    otherwise @dorp\n}"),
    "unknown mode": ("LB001", S + "    mode @natt\n}"),
    "misspelt backend option": ("LB001", "service s { pool p { backend b 10.0.0.1 @wieght 3 } }"),
    "pool without a name": ("LB001", "service s { pool @{ } }"),
    "forward without to": ("LB001", S + "    forward tcp 80 @p\n}"),
    "property without a title": ("LB001", "property p @{ reply from vip }"),
    "word where a quantity belongs": ("LB001", S + "    require no_drop within @fast\n}"),
    "unknown health check": ("LB001", S + "    health @smtp\n}"),
    "unknown balance algorithm": ("LB001", S + "    balance @wrr\n}"),
    "a name where a port belongs": ("LB001", "service s { listen tcp @http }"),
    "filter nested too deep": ("LB005", S + "    waive no_drop for " + "not " * 100 + "@not tcp \"why\"\n}"),
    "set nested too deep": ("LB005", S + "    waive no_drop for dport in " + "{" * 100 + "@{80" + "}" * 101 + " \"why\"\n}"),
    "missing closing brace": ("LB004", "service s {\n    vip 192.0.2.1@"),
    "unterminated string": ("LB003", S + "    waive balance @\"no closing quote\n}"),
    "semicolon": ("LB002", "service s { vip 192.0.2.1@; }"),
    "unknown operator": ("LB002", 'property p "t" { reply from vip for dport @=~ 80 }'),
    # --- names
    "unknown pool": ("LB020", S + "    forward tcp 80 to @pp\n}"),
    "forward to a backend": ("LB020", S + "    forward tcp 80 to @b1\n}"),
    "unknown failover target": ("LB021", S + "    forward tcp 80 to p\n    failover to @spare when healthy < 1\n}"),
    "unknown backend in assertion": ("LB021", S + "    forward tcp 80 to p\n    assert only @b2\n}"),
    "unknown property required": ("LB022", S + "    forward tcp 80 to p\n    require @no_dorp\n}"),
    "unknown property waived": ("LB022", S + "    forward tcp 80 to p\n    waive @balanse \"why\"\n}"),
    "duplicate pool": ("LB023", S + "    pool @p {\n        backend b2 10.0.0.2\n    }\n}"),
    "duplicate backend across pools": ("LB023", S + "    pool q {\n        backend @b1 10.0.0.2\n    }\n}"),
    "pool and backend share a name": ("LB023", S + "    pool @b1 {\n        backend b3 10.0.0.3\n    }\n}"),
    "duplicate service": ("LB023", MINIMAL + "service @s { vip 192.0.2.2 listen tcp 80 }"),
    "library property redefined": ("LB023", 'property @no_drop "mine" { reply from vip }'),
    "two modes": ("LB024", S + "    mode nat\n    @mode dsr\n}"),
    "weight twice": ("LB024", "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 weight 2 @weight 3 } }"),
    "health setting twice": ("LB024", S + "    health tcp every 2s @every 3s\n}"),
    "two services on one VIP, protocol and port": ("LB027", MINIMAL + "service t { vip 192.0.2.1 listen tcp 443, @80 }"),
    "a port range overlapping another service's": ("LB027", MINIMAL + "service t { vip 192.0.2.1 listen @tcp 1-100 }"),
    "no vip": ("LB025", "service @s { listen tcp 80 }"),
    "no listen": ("LB025", "service @s { vip 192.0.2.1 }"),
    # --- values
    "IPv4 octet above 255": ("LB030", "service s { vip @192.0.2.300 listen tcp 80 }"),
    "IPv6 with three colons": ("LB030", "service s { vip @2001:db8:::1 listen tcp 80 }"),
    "backend address invalid": ("LB030", "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b @10.0.0.256 } }"),
    "prefix with host bits": ("LB031", S + "    forward tcp 80 from @10.0.0.1/8 to p\n}"),
    "prefix too long": ("LB031", S + "    forward tcp 80 from @10.0.0.0/33 to p\n}"),
    "listen port above 65535": ("LB032", "service s { vip 192.0.2.1 listen tcp @70000 }"),
    "backend port 0": ("LB032", "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b @10.0.0.1:0 } }"),
    "target port above 65535": ("LB032", S + "    @forward tcp 80 to p port 99999\n}"),
    "empty port range": ("LB033", "service s { vip 192.0.2.1 listen tcp @90-80 }"),
    "negative weight": ("LB034", "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 @weight -1 } }"),
    "unknown unit": ("LB035", S + "    affinity flow timeout @5sec\n}"),
    "missing unit": ("LB035", S + "    forward tcp 80 to p\n    require no_drop within @50\n}"),
    "percentage for a duration": ("LB036", S + "    affinity flow timeout @10%\n}"),
    "duration for a percentage": ("LB036", S + "    forward tcp 80 to p\n    require balance within @5s\n}"),
    "IPv6 source in an IPv4 service": ("LB037", S + "    forward tcp 80 from @2001:db8::/32 to p\n}"),
    "fall of zero": ("LB038", S + "    health tcp @fall 0\n}"),
    "failover below one": ("LB038",
                           "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 backend c 10.0.0.2 backup }"
                           " @failover to c when healthy < 0 }"),
    "max_conn of zero": ("LB038", "service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 @max_conn 0 } }"),
    "as many down as there are backends": ("LB038", S + "    forward tcp 80 to p\n    capacity 10 conns with @1 down\n}"),
    "deadline too large to compute with": ("LB038", S + "    forward tcp 80 to p\n    require no_drop within @1e400s\n}"),
    "a duration of too many digits": ("LB038", S + "    affinity flow timeout @" + "9" * 400 + "s\n}"),
    "a detection window too long": ("LB038", S + "    @health tcp fall " + "9" * 400 + "\n}"),
    "zero deadline": ("LB038", S + "    forward tcp 80 to p\n    require no_drop within @0ms\n}"),
    "icmp with a port": ("LB039", "service s { vip 192.0.2.1 listen tcp 80, @icmp 8 }"),
    "port with no protocol": ("LB039", "service s { vip 192.0.2.1 listen @80 }"),
    "forward icmp with ports": ("LB039", S + "    forward @icmp 8 to p\n}"),
    # --- properties
    "waiver without reason": ("LB040", S + "    forward tcp 80 to p\n    @waive balance\n}"),
    "waiver with an empty reason": ("LB040", S + "    forward tcp 80 to p\n    @waive balance \"  \"\n}"),
    "waived twice": ("LB041", S + "    waive balance \"a\"\n    @waive balance \"b\"\n}"),
    "required and waived": ("LB041", S + "    waive no_drop \"a\"\n    @require no_drop\n}"),
    "within on a stickiness property": ("LB042", S + "    require flow_affinity within @5s\n}"),
    "hash fields on round robin": ("LB042", S + "    @balance round_robin(src)\n}"),
    "timeout on affinity none": ("LB042", S + "    affinity none timeout @5s\n}"),
    "string on a udp health check": ("LB042", S + "    @health udp \"/x\"\n}"),
    "unknown filter word": ("LB043", S + "    waive no_drop for @tpc \"why\"\n}"),
    "port field with an address": ("LB043", S + "    waive no_drop for sport in @10.0.0.0/8 \"why\"\n}"),
    "order on an address": ("LB043", S + "    waive no_drop for @src < 10.0.0.1 \"why\"\n}"),
    "unknown flag": ("LB043", S + "    waive no_drop for flags has @sin \"why\"\n}"),
    "failover to a primary": ("LB044", S + "    failover to @b1 when healthy < 1\n}"),
    "ambiguous pool failover": ("LB044", S + "    pool q {\n        backend b2 10.0.0.2\n    }\n    pool r {\n"
                                "        backend b3 10.0.0.3\n    }\n    @failover to r when healthy < 1\n}"),
    "GUE port on IPIP": ("LB045", S + "    @mode tunnel ipip port 5555\n}"),
    # --- includes
    "missing include": ("LB010", '@include "nowhere.lbspec"\n' + MINIMAL),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec_gives_code_at_location(name):
    code, marked = CASES[name]
    text, line, column = locate(marked)
    diagnostics = load_text(text, "bad.lbspec").diagnostics
    errors = [x for x in diagnostics if x.code == code]
    assert errors, f"expected {code}, got {[(x.code, x.message) for x in diagnostics]}"
    assert (errors[0].span.line, errors[0].span.column) == (line, column), errors[0]
    assert errors[0].span.file == "bad.lbspec"


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_every_syntax_and_semantic_code_has_a_case():
    from lbspec.diagnostics import KINDS

    covered = {code for code, _ in CASES.values()} | {"LB000", "LB011", "LB026", "LB099"}
    assert {c for c in KINDS if c.startswith("LB0")} <= covered


def test_errors_carry_suggestions():
    text, _, _ = locate(CASES["unknown pool"][1])
    (error,) = [x for x in load_text(text).diagnostics if x.code == "LB020"]
    assert "`p`" in error.help
    text, _, _ = locate(CASES["misspelt statement"][1])
    (error,) = load_text(text).diagnostics
    assert "`listen`" in error.help and "`vip`" in error.label


def test_include_cycle(tmp_path):
    (tmp_path / "a.lbspec").write_text('include "b.lbspec"\n' + MINIMAL)
    (tmp_path / "b.lbspec").write_text('include "a.lbspec"\n')
    loaded = load_path(tmp_path / "a.lbspec")
    assert [x.code for x in loaded.diagnostics] == ["LB011"]
    (cycle,) = loaded.diagnostics
    assert cycle.span.file.endswith("b.lbspec") and cycle.span.line == 1


def test_include_of_itself_is_a_cycle(tmp_path):
    (tmp_path / "a.lbspec").write_text('include "a.lbspec"\n' + MINIMAL)
    assert [x.code for x in load_path(tmp_path / "a.lbspec").diagnostics] == ["LB011"]


def test_diamond_includes_load_each_file_once(tmp_path):
    (tmp_path / "a.lbspec").write_text('include "b.lbspec"\ninclude "c.lbspec"\n' + MINIMAL)
    (tmp_path / "b.lbspec").write_text('include "d.lbspec"\n')
    (tmp_path / "c.lbspec").write_text('include "d.lbspec"\n')
    (tmp_path / "d.lbspec").write_text('property mine "t" { reply from vip }\n')
    loaded = load_path(tmp_path / "a.lbspec")
    assert loaded.ok, loaded.diagnostics


def test_errors_in_included_files_point_into_them(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.lbspec").write_text('include "sub/b.lbspec"\n' + MINIMAL)
    (tmp_path / "sub" / "b.lbspec").write_text('include "missing.lbspec"\n')
    loaded = load_path(tmp_path / "a.lbspec")
    (error,) = loaded.diagnostics
    assert error.code == "LB010" and error.span.file.endswith("sub/b.lbspec")


@pytest.mark.parametrize("make", [
    lambda p: p,  # missing
    lambda p: (p.mkdir(), p)[1],  # a directory
    lambda p: (p.write_bytes(b"service \xff\xfe {}"), p)[1],  # not UTF-8
])
def test_unreadable_files_give_lb000(tmp_path, make):
    path = make(tmp_path / "spec.lbspec")
    loaded = load_path(path)
    assert not loaded.ok and [x.code for x in loaded.diagnostics] == ["LB000"]


@pytest.mark.parametrize("depth", [100, 5000])
def test_deepest_filter_allowed_and_deeper_ones_rejected_without_a_traceback(cli, tmp_path, depth):
    path = tmp_path / "deep.lbspec"
    path.write_text(S + "    waive no_drop for " + "not " * depth + "tcp \"why\"\n}")
    run = cli("check", "--front-end-only", str(path))
    assert run.code == (0 if depth == 100 else 2) and ("LB005" in run.out) == (depth > 100)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", 'property mine "t" { reply from vip }\n'],
                         ids=["empty", "comment", "properties only"])
@pytest.mark.parametrize("front_end_only", [[], ["--front-end-only"]], ids=["check", "front-end"])
def test_checking_a_spec_with_no_service_is_lb026_exit_2(cli, tmp_path, text, front_end_only):
    path = tmp_path / "nothing.lbspec"
    path.write_text(text)
    run = cli("check", "--format", "json", *front_end_only, str(path))
    document = json.loads(run.out)
    assert run.code == 2 and [x["code"] for x in document["diagnostics"]] == ["LB026"]
    assert document["diagnostics"][0]["span"]["line"] == 1


def test_one_run_reports_every_semantic_error():
    text = service("forward tcp 80 to nowhere\nwaive balance\naffinity flow timeout 5parsecs")
    found = sorted(x.code for x in load_text(text).diagnostics)
    assert found == ["LB020", "LB035", "LB040"]


def test_a_listener_conflict_points_at_both_claims():
    text, line, column = locate(MINIMAL + "service t { vip 192.0.2.1 listen @tcp }")
    (conflict,) = load_text(text, "bad.lbspec").diagnostics
    assert conflict.code == "LB027" and (conflict.span.line, conflict.span.column) == (line, column)
    assert (4, 12) in {(n.span.line, n.span.column) for n in conflict.notes}  # `tcp 80` of service s


def test_two_proxies_sharing_a_listener_are_a_warning():
    # a proxy may pick the service by what it reads (virtual hosts); the spec cannot say how
    proxies = MINIMAL.replace("forward tcp 80 to p", "forward tcp 80 to p mode proxy")
    diagnostics = load_text(proxies + "service t { vip 192.0.2.1 listen tcp 80 mode proxy }").diagnostics
    assert [(x.code, x.severity.value) for x in diagnostics] == [("LB027", "warning")]
    half = load_text(proxies + "service t { vip 192.0.2.1 listen tcp 80 }").diagnostics
    assert [(x.code, x.severity.value) for x in half] == [("LB027", "error")]


@pytest.mark.parametrize("other", ["vip 192.0.2.2 listen tcp 80", "vip 192.0.2.1 listen tcp 81-90, udp 80",
                                   "vip 192.0.2.1 listen icmp"])
def test_services_sharing_no_listener_do_not_conflict(other):
    assert [x.code for x in load_text(MINIMAL + f"service t {{ {other} }}").diagnostics] == []


def test_a_quantity_too_large_is_reported_whole():
    text, line, column = locate(S + "    forward tcp 80 to p\n    require no_drop within @1e400s\n}")
    (error,) = load_text(text).diagnostics
    assert (error.code, error.span.line, error.span.column, error.span.end_column) == ("LB038", line, column, column + 6)


def test_a_quantity_may_have_an_exponent():
    spec = load_text(S + "    forward tcp 80 to p\n    require no_drop within 1.5e3ms\n}").spec
    (no_drop,) = [c for c in spec.services[0].checks if c.name == "no_drop"]
    assert no_drop.pattern.within == 1.5
