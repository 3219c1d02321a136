"""SARIF 2.1.0, as GitHub code scanning reads it.

Every code lbspec can emit is a rule (id, name, short and full description,
default level); every diagnostic is a result (rule id and index, level,
message, artifact URI and region, related locations for its notes, the
witness in its property bag).  A file that cannot be read (LB000) is a
result at its first line; a diagnostic of no file at all, a result without a
location, which SARIF allows -- dropping either would leave a run that failed
looking clean.
"""

from __future__ import annotations

import json
import os
from typing import Any, TextIO

from lbspec import __version__
from lbspec.diagnostics import KINDS, Diagnostic, Severity
from lbspec.ir import Span

__all__ = ["sarif_document", "render_sarif"]

_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _uri(path: str) -> str:
    if os.path.isabs(path):
        try:
            path = os.path.relpath(path)
        except ValueError:
            pass
    return path.replace(os.sep, "/")


def _in_a_file(span: Span | None) -> bool:
    return span is not None and span.line > 0 and not span.file.startswith("<")


def _location(span: Span, message: str | None = None) -> dict[str, Any]:
    location: dict[str, Any] = {"physicalLocation": {
        "artifactLocation": {"uri": _uri(span.file)},
        "region": {"startLine": span.line, "startColumn": span.column,
                   "endLine": span.end_line, "endColumn": span.end_column}}}
    if message:
        location["message"] = {"text": message}
    return location


def _rules() -> tuple[list[dict[str, Any]], dict[str, int]]:
    rules, index = [], {}
    for code in sorted(KINDS):
        kind = KINDS[code]
        index[code] = len(rules)
        rules.append({"id": code, "name": kind.name,
                      "shortDescription": {"text": kind.summary.split(";")[0].rstrip(".")},
                      "fullDescription": {"text": kind.summary},
                      "help": {"text": kind.summary},
                      "defaultConfiguration": {"level": _LEVEL[kind.severity]}})
    return rules, index


def _result(diagnostic: Diagnostic, index: dict[str, int]) -> dict[str, Any]:
    text = diagnostic.message + (f": {diagnostic.label}" if diagnostic.label else "")
    if diagnostic.help:
        text += f". Help: {diagnostic.help}"
    result: dict[str, Any] = {"ruleId": diagnostic.code, "ruleIndex": index[diagnostic.code],
                              "level": _LEVEL[diagnostic.severity], "message": {"text": text}}
    if _in_a_file(diagnostic.span):
        result["locations"] = [_location(diagnostic.span)]
    elif isinstance(diagnostic.data, dict) and diagnostic.data.get("path"):  # a file that cannot be read: its first line, where code scanning shows it
        result["locations"] = [_location(Span(str(diagnostic.data["path"]), 1, 1, 1, 1))]
    related = [_location(n.span, n.message) for n in diagnostic.notes if _in_a_file(n.span)]
    for number, location in enumerate(related):
        location["id"] = number
    if related:
        result["relatedLocations"] = related
    if diagnostic.witness is not None and hasattr(diagnostic.witness, "to_dict"):
        result["properties"] = {"witness": diagnostic.witness.to_dict()}
    return result


def sarif_document(diagnostics: list[Diagnostic]) -> dict[str, Any]:
    rules, index = _rules()
    results = [_result(d, index) for d in diagnostics]
    driver = {"name": "lbspec", "version": __version__, "semanticVersion": __version__,
              "informationUri": "https://pypi.org/project/lbspec/", "rules": rules}
    return {"$schema": SCHEMA, "version": "2.1.0", "runs": [{"tool": {"driver": driver}, "results": results}]}


def render_sarif(diagnostics: list[Diagnostic], stream: TextIO) -> None:
    json.dump(sarif_document(diagnostics), stream, indent=2)
    stream.write("\n")
