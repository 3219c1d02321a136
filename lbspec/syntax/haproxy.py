"""HAProxy configuration text to plain data: sections, statements, server options.

The grammar is ``grammar/haproxy.lark``.  :func:`parse_haproxy` never raises
for bad input: a syntax error comes back as an LB300 diagnostic pointing at the
offending word, with what HAProxy expects there.  Nothing here knows what a
statement means; :mod:`lbspec.importers.haproxy` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from lbspec import diagnostics as d
from lbspec.ir import Span
from lbspec.resources import data_dir
from lbspec.syntax.parser import describe_terminal

__all__ = ["Word", "ServerOption", "Statement", "Section", "Config", "parse_haproxy", "unquote"]


@dataclass(frozen=True, slots=True)
class Word:
    """An argument as HAProxy reads it (quotes and escapes removed) and where it was written."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class ServerOption:
    """One option of `server` or `default-server`.

    ``value`` is an int for counts (`weight 3`), seconds for times (`inter 2s`),
    None for flags (`check`); an option without a rule of its own (`ssl`,
    `cookie`) is a flag here -- the importer knows which of them take a value.
    """

    name: str
    value: int | float | None
    span: Span
    text: str = ""  # as written: `inter 2s`

    def __post_init__(self) -> None:
        if not self.text:
            object.__setattr__(self, "text", self.name)


@dataclass(frozen=True, slots=True)
class Statement:
    """A line of a section: its keyword and arguments.

    ``text`` is the statement as written (whitespace runs collapsed, comment
    removed), for messages that quote it.  ``value`` holds the typed value of `timeout` (seconds) and `maxconn`;
    ``options`` the options of `server` and `default-server`; ``condition``
    the `if`/`unless` clause of `use_backend`, keyword first.
    """

    keyword: str
    args: tuple[Word, ...]
    span: Span
    text: str  # the line as written, without its comment
    value: int | float | None = None
    options: tuple[ServerOption, ...] = ()
    condition: tuple[Word, ...] = ()



@dataclass(frozen=True, slots=True)
class Section:
    kind: str  # global | defaults | frontend | backend | listen | peers | ...
    name: str | None
    defaults: str | None  # `from NAME`
    statements: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    sections: tuple[Section, ...]


_WORD = re.compile(r"""(?:[^\s#"'\\]|\\.|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')+""")
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1e-3}


_ESCAPES = {" ": " ", "#": "#", "\\": "\\", "'": "'", '"': '"', "r": "\r", "n": "\n", "t": "\t"}
_HEX = re.compile(r"x([0-9a-fA-F]{2})")


def unquote(text: str) -> str:
    """HAProxy's reading of a word: quotes removed, escapes resolved (`\\ `, `\\#`, `\\\\`, quotes, `\\r`, `\\n`,
    `\\t`, `\\xNN`); any other backslash is kept, as HAProxy keeps it (a regex's `\\.`)."""
    out, quote, index = [], None, 0
    while index < len(text):
        char = text[index]
        if char == "\\" and quote != "'" and index + 1 < len(text):
            escaped, hexa = text[index + 1], _HEX.match(text, index + 1)
            if hexa is not None:
                out.append(chr(int(hexa.group(1), 16)))
                index += 4
            elif escaped in _ESCAPES:
                out.append(_ESCAPES[escaped])
                index += 2
            else:
                out.append(char)
                index += 1
            continue
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        else:
            out.append(char)
        index += 1
    return "".join(out)


@lru_cache(maxsize=1)
def _lark() -> Lark:
    path = data_dir("grammar") / "haproxy.lark"
    return Lark(path.read_text(encoding="utf-8"), parser="lalr", lexer="contextual",
                propagate_positions=True, maybe_placeholders=False)


def parse_haproxy(text: str, file: str) -> tuple[Config | None, list[d.Diagnostic]]:
    """Parse one configuration file.  Returns the config, or None and the syntax error."""
    source = text if text.endswith("\n") else text + "\n"
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as error:
        return None, [_syntax_error(error, source, file)]
    try:
        sections = _ToSections(file, source).transform(tree)
    except VisitError as error:  # a bug in the transformer, not in the input
        raise d.InternalError(f"reading {file}: {error.orig_exc!r}") from error
    return Config(file, tuple(sections.children)), []


# ------------------------------------------------------------ syntax errors --

_DESCRIBE = {"WORD": "a word", "INT": "a number", "TIME": "a time such as `2s` or `500ms`",
             "_NL": "the end of the line", "$END": "the end of the file"}
_SECTIONS = ("global", "defaults", "frontend", "backend", "listen")


def _describe(terminal: str) -> str:
    return describe_terminal(terminal, _lark(), _DESCRIBE)


def _expected(terminals: set[str]) -> str:
    words = sorted({_describe(t) for t in terminals})
    keywords = [w for w in words if w.startswith("`")]
    others = [w for w in words if not w.startswith("`")]
    if len(keywords) > 6:
        keywords = [*keywords[:6], "another keyword"]
    described = others + keywords
    if len(described) == 1:
        return f"expected {described[0]}"
    return "expected " + ", ".join(described[:-1]) + " or " + described[-1]


def _line_span(text: str, file: str, line: int, column: int) -> Span:
    lines = text.split("\n")
    content = lines[line - 1] if 0 < line <= len(lines) else ""
    rest = content[column - 1:]
    word = re.match(r"[^\s#]+", rest)
    width = len(word.group()) if word else 1
    return Span(file, line, column, line, column + width)


def _syntax_error(error: UnexpectedInput, text: str, file: str) -> d.Diagnostic:
    if isinstance(error, UnexpectedToken) and error.token.type == "_NL":
        return _missing_argument(error, text, file)
    if isinstance(error, UnexpectedToken):
        span = _line_span(text, file, error.token.line, error.token.column)
        if "FRONTEND" in error.expected and "WORD" not in error.expected:
            return d.BAD_CONFIG.at(span, what=f"`{error.token.value}` is outside any section",
                                   label="expected a section header",
                                   help=f"start the file with a section: {', '.join(_SECTIONS)}")
        return d.BAD_CONFIG.at(span, what=f"unexpected `{error.token.value}`",
                               label=_expected(set(error.expected)))
    if isinstance(error, UnexpectedCharacters):
        return _character_error(error, text, file)
    assert isinstance(error, UnexpectedEOF)
    lines = text.rstrip("\n").split("\n")
    span = Span(file, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
    return d.BAD_CONFIG.at(span, what="unexpected end of file", label=_expected(set(error.expected)))


def _missing_argument(error: UnexpectedToken, text: str, file: str) -> d.Diagnostic:
    """A line that ends too early: point just after its last word."""
    line = error.token.line
    content = text.split("\n")[line - 1]
    code = content.split("#", 1)[0].rstrip()
    span = Span(file, line, len(code) + 1, line, len(code) + 2)
    return d.BAD_CONFIG.at(span, what="this line ends too early", label=_expected(set(error.expected)))


def _character_error(error: UnexpectedCharacters, text: str, file: str) -> d.Diagnostic:
    char = text[error.pos_in_stream]
    allowed = set(error.allowed or ())
    if char in "\"'" and "WORD" in allowed:
        line_end = text.find("\n", error.pos_in_stream)
        span = Span(file, error.line, error.column, error.line,
                    error.column + max(1, line_end - error.pos_in_stream))
        return d.BAD_CONFIG.at(span, what="unterminated quote", label="this quote has no closing quote",
                               help=f"close it with `{char}` on the same line")
    span = _line_span(text, file, error.line, error.column)
    found = text[error.pos_in_stream:error.pos_in_stream + span.end_column - span.column]
    return d.BAD_CONFIG.at(span, what=f"unexpected `{found}`", label=_expected(allowed))


# ----------------------------------------------------------- tree building --

def _span(file: str, meta) -> Span:
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(file: str, token: Token) -> Span:
    return Span(file, token.line, token.column, token.end_line, token.end_column)


def _code_words(line: str, start: int) -> tuple[list[str], int]:
    """The words of a line from ``start`` up to its comment, and where the last one ends."""
    words, position, end = [], start, start
    while True:
        while position < len(line) and line[position] in " \t\r":
            position += 1
        match = _WORD.match(line, position)
        if match is None:
            return words, end
        words.append(match.group())
        position = end = match.end()


def _time(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9]+)([a-z]*)", text).groups()
    return int(number) * _TIME_UNITS[unit]


@v_args(meta=True)
class _ToSections(Transformer):
    """Turns the parse tree into Sections and Statements."""

    def __init__(self, file: str, source: str):
        super().__init__()
        self.file = file
        self.lines = source.split("\n")

    def _statement(self, keyword: str, meta, children: list, **typed) -> Statement:
        words, end = _code_words(self.lines[meta.line - 1], meta.column - 1)
        span = Span(self.file, meta.line, meta.column, meta.line, end + 1)
        return Statement(keyword, self._words(children), span, " ".join(words), **typed)

    def _word(self, token: Token) -> Word:
        return Word(unquote(str(token)), _token_span(self.file, token))

    def _words(self, children: list) -> tuple[Word, ...]:
        return tuple(self._word(c) for c in children if isinstance(c, Token) and c.type == "WORD")

    def _section(self, kind: str, meta, children: list) -> Section:
        name = next((c for c in children if isinstance(c, tuple) and c[0] == "name"), None)
        parent = next((c for c in children if isinstance(c, tuple) and c[0] == "from"), None)
        statements = tuple(c for c in children if isinstance(c, Statement))
        return Section(kind, name and name[1], parent and parent[1], statements, _span(self.file, meta))

    # --- sections
    def global_section(self, meta, children):
        return self._section("global", meta, children)

    def defaults_section(self, meta, children):
        return self._section("defaults", meta, children)

    def proxy_section(self, meta, children):
        return self._section(str(children[0]), meta, children[1:])

    def other_section(self, meta, children):
        name = next((w.text for w in self._words(children)), None)
        statements = [c for c in children if isinstance(c, Statement)]
        return self._section(str(children[0]), meta, [("name", name)] * bool(name) + statements)

    def name(self, meta, children):
        return ("name", unquote(str(children[0])))

    def from_defaults(self, meta, children):
        return ("from", unquote(str(children[0])))

    def proxy_kind(self, meta, children):
        return str(children[0])

    def other_kind(self, meta, children):
        return str(children[0])

    # --- statements
    def statement(self, meta, children):
        words = self._words(children)
        return self._statement(words[0].text, meta, children[1:])

    plain_statement = statement

    def bind(self, meta, children):
        return self._statement("bind", meta, children)

    def balance(self, meta, children):
        return self._statement("balance", meta, children)

    def mode(self, meta, children):
        return self._statement("mode", meta, children)

    def option(self, meta, children):
        return self._statement("option", meta, children)

    def acl(self, meta, children):
        return self._statement("acl", meta, children)

    def default_backend(self, meta, children):
        return self._statement("default_backend", meta, children)

    def timeout(self, meta, children):
        seconds = next(c[0] for c in children if isinstance(c, tuple))
        return self._statement("timeout", meta, children, value=seconds)

    def maxconn(self, meta, children):
        value = next(c for c in children if isinstance(c, Token) and c.type == "INT")
        return self._statement("maxconn", meta, [], value=int(value))

    def use_backend(self, meta, children):
        condition = next((c for c in children if isinstance(c, tuple)), ())
        return self._statement("use_backend", meta, children, condition=condition)

    def condition(self, meta, children):
        first = children[0]
        return (first, *self._words(children[1:]))

    def condition_kind(self, meta, children):
        return self._word(children[0])

    def time(self, meta, children):
        return _time(str(children[0])), str(children[0])

    # --- servers
    def server(self, meta, children):
        options = tuple(c for c in children if isinstance(c, ServerOption))
        return self._statement("server", meta, children, options=options)

    def default_server(self, meta, children):
        options = tuple(c for c in children if isinstance(c, ServerOption))
        return self._statement("default-server", meta, [], options=options)

    def flag_option(self, meta, children):
        return ServerOption(str(children[0]), None, _span(self.file, meta))

    def other_option(self, meta, children):
        return ServerOption(unquote(str(children[0])), None, _span(self.file, meta))

    def int_option(self, meta, children):
        key, value = children
        return ServerOption(key, int(value), _span(self.file, meta), f"{key} {value}")

    def time_option(self, meta, children):
        key, (seconds, written) = children
        return ServerOption(key, seconds, _span(self.file, meta), f"{key} {written}")

    def int_key(self, meta, children):
        return str(children[0])

    def time_key(self, meta, children):
        return str(children[0])

    def start(self, meta, children):
        return Tree("start", children)

