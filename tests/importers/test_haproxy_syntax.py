"""The HAProxy grammar (grammar/haproxy.lark) and lbspec.syntax.haproxy: sections, statements, words."""

from __future__ import annotations

import pytest

from lbspec.resources import data_dir
from lbspec.syntax.haproxy import parse_haproxy, unquote


def parse(text: str):
    config, errors = parse_haproxy(text, "h.cfg")
    assert errors == [], [e.message for e in errors]
    return config


def test_the_grammar_is_found_where_the_others_are():
    assert (data_dir("grammar") / "haproxy.lark").is_file()


def test_sections_and_their_statements():
    config = parse("""# a comment before everything
global
    maxconn 100          # a trailing comment
defaults base
    mode tcp
frontend f from base
    bind :80
backend b
    server s 10.0.0.1:80 check
listen l
    bind :81
peers mesh
    peer one 10.0.0.1:1024
    server two 10.0.0.2:1024
resolvers dns
    nameserver ns1 10.0.0.53:53
""")
    kinds = [(s.kind, s.name, s.defaults) for s in config.sections]
    assert kinds == [("global", None, None), ("defaults", "base", None), ("frontend", "f", "base"),
                     ("backend", "b", None), ("listen", "l", None), ("peers", "mesh", None),
                     ("resolvers", "dns", None)]
    # `maxconn` and `server` outside proxy sections are plain statements
    assert [s.keyword for s in config.sections[0].statements] == ["maxconn"]
    assert [s.keyword for s in config.sections[5].statements] == ["peer", "server"]
    assert config.sections[5].statements[1].options == ()


def test_statement_text_and_span_leave_the_comment_out():
    statement = parse("frontend f\n    bind 10.0.0.1:80   # public\n").sections[0].statements[0]
    assert statement.text == "bind 10.0.0.1:80"
    span = statement.span
    assert (span.line, span.column, span.end_line, span.end_column) == (2, 5, 2, 21)


def test_server_options_are_typed():
    server = parse("backend b\n  server s1 10.0.0.1:80 check inter 1500 fastinter 1s fall 2 rise 3 weight 7 "
                   "maxconn 50 backup cookie abc ssl\n").sections[0].statements[0]
    options = {o.name: o.value for o in server.options}
    assert options["inter"] == pytest.approx(1.5)  # milliseconds by default
    assert options["fastinter"] == 1.0
    assert (options["fall"], options["rise"], options["weight"], options["maxconn"]) == (2, 3, 7, 50)
    assert options["check"] is None and options["backup"] is None
    assert [o.text for o in server.options][:3] == ["check", "inter 1500", "fastinter 1s"]
    assert [w.text for w in server.args] == ["s1", "10.0.0.1:80"]


@pytest.mark.parametrize("written, seconds", [("250us", 0.00025), ("20ms", 0.02), ("3s", 3), ("2m", 120),
                                              ("1h", 3600), ("1d", 86400), ("100", 0.1)])
def test_times(written, seconds):
    statement = parse(f"defaults\n    timeout connect {written}\n").sections[0].statements[0]
    assert statement.value == pytest.approx(seconds)
    assert [w.text for w in statement.args] == ["connect"]


def test_quotes_escapes_and_hashes():
    statement = parse("frontend f\n  http-request set-header X-A \"a b # c\" 'd\\e' f\\ g\n"
                      "  acl x path_beg /a\\#b\n").sections[0].statements
    assert [w.text for w in statement[0].args] == ["set-header", "X-A", "a b # c", "d\\e", "f g"]
    assert [w.text for w in statement[1].args] == ["x", "path_beg", "/a#b"]
    assert unquote('"a"b\'c d\'') == "abc d"


@pytest.mark.parametrize("word, read", [
    ("PING\\r\\n", "PING\r\n"), ('"a\\tb"', "a\tb"), ("\\x41\\x0a", "A\n"), ("'\\n'", "\\n"),
    ("^/api\\.v1", "^/api\\.v1"),  # a backslash HAProxy does not read as an escape stays (a regex's)
])
def test_escapes_are_read_as_haproxy_reads_them(word, read):
    assert unquote(word) == read


def test_use_backend_condition():
    statement = parse("frontend f\n  use_backend b if { src 10.0.0.0/8 } || admin\n").sections[0].statements[0]
    assert [w.text for w in statement.args] == ["b"]
    assert [w.text for w in statement.condition] == ["if", "{", "src", "10.0.0.0/8", "}", "||", "admin"]


def test_crlf_and_no_final_newline():
    config = parse("frontend f\r\n    bind :80\r\nbackend b\r\n    server s 10.0.0.1:80")
    assert [s.kind for s in config.sections] == ["frontend", "backend"]
    assert config.sections[1].statements[0].args[1].text == "10.0.0.1:80"


def test_empty_and_comment_only_files():
    assert parse("").sections == ()
    assert parse("# nothing\n\n   # here\n").sections == ()


@pytest.mark.parametrize("text, what, column", [
    ("backend b\n  server s1 1.2.3.4:80 weight x\n", "unexpected `x`", 31),
    ("backend b\n  server s1\n", "this line ends too early", 12),
    ("frontend f\n  bind 'abc\n", "unterminated quote", 8),
    ("mode tcp\n", "`mode` is outside any section", 1),
    ("backend b\n  timeout connect soon\n", "unexpected `soon`", 19),
])
def test_syntax_errors_point_at_the_word(text, what, column):
    config, errors = parse_haproxy(text, "bad.cfg")
    assert config is None
    (error,) = errors
    assert error.code == "LB300" and error.message == what and error.span.column == column
