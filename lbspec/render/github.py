"""GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` line per diagnostic."""

from __future__ import annotations

from typing import TextIO

from lbspec.diagnostics import Diagnostic, Severity

__all__ = ["render_github"]

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _escape(text: str, property_: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_ else text


def render_github(diagnostics: list[Diagnostic], stream: TextIO) -> None:
    for diagnostic in diagnostics:
        fields = [f"title={_escape(f'{diagnostic.code} {diagnostic.name}', True)}"]
        span = diagnostic.span
        if span is not None and span.line > 0 and not span.file.startswith("<"):
            fields = [f"file={_escape(span.file, True)}", f"line={span.line}", f"col={span.column}",
                      f"endLine={span.end_line}", f"endColumn={span.end_column}", *fields]
        message = "\n".join([diagnostic.message + (f": {diagnostic.label}" if diagnostic.label else ""),
                             *diagnostic.witness_lines()])
        stream.write(f"::{_COMMAND[diagnostic.severity]} {','.join(fields)}::{_escape(message)}\n")
