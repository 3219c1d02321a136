"""`lbspec fmt`: canonical layout, comments kept, same meaning, idempotent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lbspec
from lbspec.loader import load_text
from lbspec.syntax.format import format_tree

from conftest import EXAMPLES
from specgen import spec_files

MESSY = '''# file header

# about web
service   web{vip 192.0.2.10,192.0.2.11   listen tcp 80,443 ,udp 53
  mode tunnel   gue
    pool app{backend a 10.0.0.1:80 weight 2   # the big one
 backend b [2001:db8::1]:80 backup
 # spare capacity below

 backend c 10.0.0.3 max_conn 10
    # end of pool
    }


    forward tcp 80 from 10.0.0.0/8,10.1.0.0/16 to app port 8080   forward udp to app
    waive balance for not(tcp or udp) and dport in {1,2-3} "why \\"quoted\\""
  assert from 10.9.0.0/16 to tcp 443 only a,b
} # closing
property p "t" { stick flow for (tcp) while backend healthy }
# trailing comment at the end
'''

CANONICAL = '''# file header

# about web
service web {
    vip 192.0.2.10, 192.0.2.11
    listen tcp 80, 443, udp 53
    mode tunnel gue
    pool app {
        backend a 10.0.0.1:80 weight 2  # the big one
        backend b [2001:db8::1]:80 backup
        # spare capacity below

        backend c 10.0.0.3 max_conn 10
        # end of pool
    }

    forward tcp 80 from 10.0.0.0/8, 10.1.0.0/16 to app port 8080
    forward udp to app
    waive balance for not (tcp or udp) and dport in {1, 2-3} "why \\"quoted\\""
    assert from 10.9.0.0/16 to tcp 443 only a, b
}  # closing

property p "t" {
    stick flow for tcp while backend healthy
}
# trailing comment at the end
'''


def fmt(text: str) -> str:
    return format_tree(lbspec.parse(text), text)


def test_canonical_layout_keeps_every_comment():
    assert fmt(MESSY) == CANONICAL


def test_formatting_keeps_the_meaning():
    assert lbspec.parse(fmt(MESSY)).items == lbspec.parse(MESSY).items
    assert [c.text for c in lbspec.parse(fmt(MESSY)).comments] == [c.text for c in lbspec.parse(MESSY).comments]


def test_formatting_is_idempotent():
    assert fmt(CANONICAL) == CANONICAL


def test_one_line_blocks_are_expanded():
    assert fmt('property p "t" { reply from vip }  # why') == 'property p "t" {\n    reply from vip\n}  # why\n'


def test_comment_only_and_empty_files():
    assert fmt("") == ""
    assert fmt("  # just a note  \n\n\n# another\n") == "# just a note\n\n# another\n"


def test_nested_same_operators_keep_their_grouping():
    text = 'property p "t" { reply from vip for tcp or (udp or icmp) }'
    assert lbspec.parse(fmt(text)).items == lbspec.parse(text).items


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.lbspec")), ids=lambda p: p.name)
def test_examples_are_canonical(path):
    text = path.read_text()
    assert fmt(text) == text


@settings(max_examples=150)
@given(spec_files())
def test_generated_specs_round_trip(tree):
    text = format_tree(tree, "")
    parsed = lbspec.parse(text)
    assert parsed.items == tree.items
    assert format_tree(parsed, text) == text
    loaded = load_text(text)
    assert loaded.ok, [(x.code, x.message) for x in loaded.diagnostics]


@settings(max_examples=100)
@given(spec_files(), st.data())
def test_comments_survive_formatting_anywhere(tree, data):
    lines = format_tree(tree, "").split("\n")[:-1]
    commented = []
    for number, line in enumerate(lines):
        if data.draw(st.integers(0, 3)) == 0:
            commented.append(f"# above {number}")
        commented.append(line + (f"  # after {number}" if data.draw(st.integers(0, 3)) == 0 else ""))
    text = "\n".join(commented) + "\n"
    formatted = fmt(text)
    assert sorted(c.text for c in lbspec.parse(formatted).comments) == sorted(c.text for c in lbspec.parse(text).comments)
    assert lbspec.parse(formatted).items == tree.items
    assert fmt(formatted) == formatted


def test_a_string_s_control_characters_are_written_back_escaped_and_other_text_as_it_is():
    text = 'service a {\n    vip 192.0.2.1\n    health tcp "PING\\r\\n\\t\\"x\\"\\x00\\x16\\x80é" every 1s\n}\n'
    assert 'health tcp "PING\\r\\n\\t\\"x\\"\\x00\\x16\\x80é"' in fmt(text)
    assert fmt(fmt(text)) == fmt(text)
