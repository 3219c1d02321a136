"""rustc-style text: `file:line:col`, the source line, a caret under the span, notes.

Colour comes from rich and only when the stream is a terminal (or when asked).  rich is imported when
text is rendered, not before: runs that print JSON start without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

from lbspec.diagnostics import Diagnostic, Severity
from lbspec.ir import Span

__all__ = ["render_text", "format_diagnostic", "make_console"]

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "bold yellow", Severity.INFO: "bold cyan"}
_TAB = 4


def make_console(stream: TextIO, color: bool, terminal: bool | None = None) -> Console:
    """A console writing to ``stream``: a terminal (for live displays) when told, else when coloured."""
    from rich.console import Console

    return Console(file=stream, force_terminal=color if terminal is None else terminal, no_color=not color,
                   color_system="auto" if color else None,
                   highlight=False, markup=False, emoji=False, soft_wrap=True, width=10_000)


def render_text(diagnostics: list[Diagnostic], sources: dict[str, str], stream: TextIO,
                color: bool = False) -> None:
    console = make_console(stream, color)
    for diagnostic in diagnostics:
        console.print(format_diagnostic(diagnostic, sources))
        console.print()


def format_diagnostic(diagnostic: Diagnostic, sources: dict[str, str]) -> Text:
    style = _STYLE[diagnostic.severity]
    from rich.text import Text

    out = Text()
    out.append(f"{diagnostic.severity.value}[{diagnostic.code}]", style=style)
    out.append(f": {diagnostic.message}\n", style="bold")
    gutter = _gutter([diagnostic.span, *(n.span for n in diagnostic.notes)])
    if diagnostic.span is not None:
        _snippet(out, diagnostic.span, sources, gutter, diagnostic.label, style)
    elif diagnostic.label:
        out.append(f"{' ' * gutter}= {diagnostic.label}\n")
    for note in diagnostic.notes:
        if note.span is None:
            out.append(f"{' ' * gutter}= ", style="bold blue")
            out.append(f"note: {note.message}\n")
    if diagnostic.help:
        out.append(f"{' ' * gutter}= ", style="bold blue")
        out.append(f"help: {diagnostic.help}\n")
    witness = diagnostic.witness_lines()
    if witness:
        first, *rest = witness
        out.append(f"{' ' * gutter}= ", style="bold blue")
        out.append(f"witness: {first}\n")
        for line in rest:
            out.append(f"{' ' * gutter}  {' ' * 9}{line}\n")
    for note in diagnostic.notes:
        if note.span is not None:
            out.append("note", style="bold green")
            out.append(f": {note.message}\n")
            _snippet(out, note.span, sources, gutter, None, "bold green")
    out.rstrip()
    return out


def _gutter(spans: list[Span | None]) -> int:
    lines = [s.line for s in spans if s is not None and s.line > 0]
    return len(str(max(lines))) + 1 if lines else 1


def _snippet(out: Text, span: Span, sources: dict[str, str], gutter: int, label: str | None, style: str) -> None:
    pad = " " * gutter
    out.append(f"{pad[:-1]}--> ", style="bold blue")
    out.append(f"{span}\n")
    text = sources.get(span.file)
    lines = text.split("\n") if text is not None else []
    if not 0 < span.line <= len(lines):
        if label:
            out.append(f"{pad}= {label}\n")
        return
    line = lines[span.line - 1]
    out.append(f"{pad}|\n", style="bold blue")
    out.append(f"{str(span.line).rjust(gutter - 1)} | ", style="bold blue")
    out.append(line.expandtabs(_TAB) + "\n")
    start = len(line[:span.column - 1].expandtabs(_TAB))
    end_column = span.end_column if span.end_line == span.line else len(line) + 1
    width = max(1, len(line[:end_column - 1].expandtabs(_TAB)) - start)
    out.append(f"{pad}| ", style="bold blue")
    out.append(" " * start + "^" * width + (f" {label}" if label else ""), style=style)
    out.append("\n")
