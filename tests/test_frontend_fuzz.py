"""The front end reports diagnostics for any input and never raises."""

from __future__ import annotations

from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from lbspec.diagnostics import Diagnostic
from lbspec.loader import load_text
from lbspec.resources import grammar_path

from conftest import EXAMPLES

EXAMPLE_TEXTS = [p.read_text() for p in sorted(EXAMPLES.glob("*.lbspec"))]


@lru_cache(maxsize=1)
def grammar_strings():
    grammar = Lark(grammar_path().read_text(), parser="lalr", lexer="contextual")
    return from_lark(grammar, explicit={
        "COMMENT": st.just("# c\n"),
        "WS": st.sampled_from([" ", "\n", "\t"]),
    })


def assert_only_diagnostics(text: str) -> None:
    loaded = load_text(text, "fuzz.lbspec")
    assert all(isinstance(x, Diagnostic) for x in loaded.diagnostics)
    assert loaded.ok or any(x.severity.value == "error" for x in loaded.diagnostics)
    for x in loaded.diagnostics:
        assert x.code.startswith("LB0") and x.code != "LB099"


@settings(max_examples=300)
@given(st.data())
def test_strings_from_the_grammar(data):
    assert_only_diagnostics(data.draw(grammar_strings()))


@settings(max_examples=300)
@given(st.sampled_from(EXAMPLE_TEXTS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3),
                                                          st.text(max_size=4)), min_size=1, max_size=4))
def test_mutated_examples(text, edits):
    for position, kind, fragment in edits:
        position %= len(text) + 1
        if kind == 0:  # insert
            text = text[:position] + fragment + text[position:]
        elif kind == 1:  # delete
            text = text[:position] + text[position + len(fragment) + 1:]
        elif kind == 2:  # replace
            text = text[:position] + fragment + text[position + len(fragment):]
        else:  # cut the file short
            text = text[:position]
    assert_only_diagnostics(text)


@settings(max_examples=200)
@given(st.text())
def test_arbitrary_text(text):
    assert_only_diagnostics(text)


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["service", "s", "{", "}", "vip", "192.0.2.1", "::1", "listen", "tcp", "80", ",",
                                 "pool", "p", "backend", "b", "10.0.0.1:80", "forward", "to", "from", "10.0.0.0/8",
                                 "-", "weight", "-1", "property", '"t"', "reply", "vip", "for", "not", "(", ")",
                                 "and", "or", "dport", "in", "within", "5ms", "waive", "require", "no_drop",
                                 "assert", "only", "failover", "when", "healthy", "<", "1", "include", '"x"',
                                 "mode", "tunnel", "gue", "port", "health", "every", "2s", "#", "\n"]), max_size=40))
def test_token_soup(tokens):
    assert_only_diagnostics(" ".join(tokens))
