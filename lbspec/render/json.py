"""Machine-readable output.  The schema is in docs/output.md."""

from __future__ import annotations

import json
from typing import Any, TextIO

from lbspec.diagnostics import Diagnostic, Severity
from lbspec.ir import Span

__all__ = ["diagnostic_to_dict", "span_to_dict", "render_json", "write_line", "summary_counts", "plain"]

SCHEMA_VERSION = 1


def span_to_dict(span: Span | None) -> dict[str, Any] | None:
    if span is None:
        return None
    return {"file": span.file, "line": span.line, "column": span.column,
            "end_line": span.end_line, "end_column": span.end_column}


def diagnostic_to_dict(diagnostic: Diagnostic) -> dict[str, Any]:
    out: dict[str, Any] = {
        "code": diagnostic.code,
        "name": diagnostic.name,
        "severity": diagnostic.severity.value,
        "message": diagnostic.message,
        "span": span_to_dict(diagnostic.span),
        "label": diagnostic.label,
        "help": diagnostic.help,
        "notes": [{"message": n.message, "span": span_to_dict(n.span)} for n in diagnostic.notes],
    }
    if diagnostic.witness is not None and hasattr(diagnostic.witness, "to_dict"):
        out["witness"] = diagnostic.witness.to_dict()
    if diagnostic.data is not None:
        out["data"] = diagnostic.data
    return out


def summary_counts(diagnostics: list[Diagnostic]) -> dict[str, int]:
    return {s.value + "s": sum(1 for x in diagnostics if x.severity is s) for s in Severity}


def render_json(diagnostics: list[Diagnostic], stream: TextIO, **extra: Any) -> None:
    document = {"lbspec": SCHEMA_VERSION, **extra,
                "diagnostics": [diagnostic_to_dict(x) for x in diagnostics],
                "summary": summary_counts(diagnostics)}
    json.dump(document, stream, indent=2, default=plain)
    stream.write("\n")


def write_line(item: Diagnostic | dict[str, Any], stream: TextIO) -> None:
    """One JSON object on a line of its own, flushed at once (``--format jsonl``)."""
    document = diagnostic_to_dict(item) if isinstance(item, Diagnostic) else item
    stream.write(json.dumps(document, default=plain) + "\n")
    stream.flush()


def plain(value: Any) -> Any:
    """JSON for numpy scalars and other stragglers."""
    return value.item() if hasattr(value, "item") else str(value)
