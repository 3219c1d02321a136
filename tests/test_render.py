"""Renderers: the caret sits under the span; notes and help are shown; JSON carries the same facts."""

from __future__ import annotations

import io
import json

from lbspec.diagnostics import UNKNOWN_POOL, Note
from lbspec.ir import Span
from lbspec.render import render_json, render_text

SOURCE = "service s {\n\tforward tcp 80 to ap\n}\n"


def rendered(diagnostic, color=False) -> str:
    out = io.StringIO()
    render_text([diagnostic], {"x.lbspec": SOURCE}, out, color)
    return out.getvalue()


def test_caret_under_the_span_with_tabs_expanded():
    diagnostic = UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap", help="did you mean `app`?",
                                 label="no such pool")
    text = rendered(diagnostic)
    lines = text.splitlines()
    source_line = next(l for l in lines if "forward tcp" in l)
    caret_line = next(l for l in lines if "^" in l)
    assert source_line[source_line.index("ap"):].startswith("ap")
    assert caret_line.index("^") == source_line.index(" ap") + 1
    assert caret_line.count("^") == 2 and "no such pool" in caret_line
    assert text.startswith("error[LB020]: unknown pool `ap`")
    assert "--> x.lbspec:2:20" in text and "help: did you mean `app`?" in text


def test_notes_with_spans_get_their_own_snippet():
    diagnostic = UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap",
                                 notes=[Note("service here", Span("x.lbspec", 1, 9, 1, 10)), Note("plain note")])
    text = rendered(diagnostic)
    assert "note: service here" in text and "--> x.lbspec:1:9" in text and "note: plain note" in text


def test_unknown_file_or_no_span_still_renders():
    assert "unknown pool" in rendered(UNKNOWN_POOL.at(None, name="ap"))
    assert "elsewhere:3:1" in rendered(UNKNOWN_POOL.at(Span("elsewhere", 3, 1, 3, 2), name="ap"))


def test_colour_only_when_asked():
    diagnostic = UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap")
    assert "\x1b[" not in rendered(diagnostic) and "\x1b[" in rendered(diagnostic, color=True)


class _Trace:
    def __init__(self, *lines: str):
        self.lines = list(lines)

    def describe(self) -> list[str]:
        return self.lines


def test_a_witness_summary_under_the_caret_is_not_repeated():
    steps = ("t=0s first step", "t=1s second step")
    same = rendered(UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap", label="the summary",
                                    witness=_Trace("the summary", *steps)))
    assert same.count("the summary") == 1 and all(same.count(step) == 1 for step in steps)
    other = rendered(UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap", label="e.g. a packet",
                                     witness=_Trace("a packet: what became of it", *steps)))
    assert other.count("what became of it") == 1 and all(other.count(step) == 1 for step in steps)


def test_json_document():
    out = io.StringIO()
    render_json([UNKNOWN_POOL.at(Span("x.lbspec", 2, 20, 2, 22), name="ap", help="h")], out, files=["x.lbspec"])
    document = json.loads(out.getvalue())
    assert document["lbspec"] == 1 and document["files"] == ["x.lbspec"]
    (entry,) = document["diagnostics"]
    assert (entry["code"], entry["name"], entry["severity"]) == ("LB020", "unknown-pool", "error")
    assert entry["span"] == {"file": "x.lbspec", "line": 2, "column": 20, "end_line": 2, "end_column": 22}
    assert document["summary"] == {"errors": 1, "warnings": 0, "infos": 0}
