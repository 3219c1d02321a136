"""Text to syntax tree: the only module that talks to lark.

:func:`parse_text` never raises for bad input: syntax errors come back as
diagnostics (code, span, the tokens that were expected, a suggestion).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from copy import copy
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from lbspec import diagnostics as d
from lbspec import ir
from lbspec.resources import grammar_path

__all__ = ["parse_text", "keywords"]

_local = threading.local()


def _collect_comment(token: Token) -> None:
    _local.comments.append(token)


class _WholeWords:
    """Lets the lexer read a whole word in every state.

    A keyword is matched as a string, so where only keywords may follow
    (`mode nat`), `natt` would lex as `nat` and a stray `t`.  Accepting NAME
    everywhere makes the lexer take the whole word; lark then turns exact
    keywords back into keyword tokens, and anything else is reported as the
    unexpected word it is.
    """

    always_accept = ("NAME",)

    def process(self, stream):
        return stream


def _cache_file(grammar: str) -> str | None:
    """Where the compiled parser is kept between runs (see :mod:`lbspec.syntax.cache`)."""
    import hashlib
    import lark

    from lbspec.syntax.cache import cache_dir

    directory = cache_dir()
    if directory is None:
        return None
    digest = hashlib.sha256(f"{lark.__version__}\n{grammar}".encode()).hexdigest()[:16]
    return os.path.join(directory, f"grammar-{digest}.lark")


@lru_cache(maxsize=1)
def _lark() -> Lark:
    """The parser.  Compiling it (strict mode checks every terminal pair) takes a few tenths
    of a second, so the compiled tables are cached per user; lark checks the grammar's hash."""
    grammar = grammar_path().read_text(encoding="utf-8")
    options = dict(parser="lalr", lexer="contextual", strict=True, propagate_positions=True,
                   maybe_placeholders=False, lexer_callbacks={"COMMENT": _collect_comment},
                   postlex=_WholeWords())
    cache = _cache_file(grammar)
    if cache is not None:
        try:
            return Lark(grammar, cache=cache, **options)
        except Exception:  # noqa: BLE001 - an unwritable or damaged cache (OSError, unpickling errors)
            pass  # costs only time: build without it
    return Lark(grammar, **options)


def keywords() -> frozenset[str]:
    """Every keyword of the language (they may still be used as names where no keyword fits)."""
    return frozenset(t.pattern.value for t in _lark().terminals
                     if t.pattern.type == "str" and t.pattern.value.isidentifier())


def parse_text(text: str, file: str) -> tuple[ir.SpecFile | None, list[d.Diagnostic]]:
    """Parse one file.  Returns the tree, or None and the syntax error."""
    _local.comments = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as error:
        return None, [_syntax_error(error, text, file)]
    finally:
        comments, _local.comments = _local.comments, []
    deepest = _too_deep(tree)
    if deepest is not None:
        return None, [d.TOO_DEEP.at(_meta_span(deepest.meta, file), limit=MAX_DEPTH)]
    try:
        items = _ToIR(file).transform(tree)
    except VisitError as error:  # a bug in the transformer, not in the input
        raise d.InternalError(f"building the tree of {file}: {error.orig_exc!r}") from error
    spans = [_token_span(c, file) for c in comments]
    notes = tuple(ir.Comment(c.value.rstrip(), span=s) for c, s in zip(comments, spans))
    return ir.SpecFile(file, tuple(items), notes, span=_file_span(text, file)), []


MAX_DEPTH = 100  # filters inside filters; each level costs stack in every later stage, and specs need a few
_NESTING = frozenset({"filter", "filter_and", "filter_negation", "value_set"})  # the rules that can nest


def _too_deep(tree: Tree) -> Tree | None:
    """The first filter nested more than MAX_DEPTH deep, found without recursion (the tree may be deep)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        depth += node.data in _NESTING
        if depth > MAX_DEPTH:
            return node
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))
    return None


# ------------------------------------------------------------------ spans --

def _meta_span(meta: Any, file: str) -> ir.Span:
    if getattr(meta, "empty", True):
        return ir.NO_SPAN
    return ir.Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token, file: str) -> ir.Span:
    return ir.Span(file, token.line, token.column, token.end_line, token.end_column)


def _file_span(text: str, file: str) -> ir.Span:
    lines = text.split("\n")
    return ir.Span(file, 1, 1, len(lines), len(lines[-1]) + 1)


# ------------------------------------------------------------ syntax errors --

_DESCRIBE = {
    "NAME": "a name",
    "INT": "a number",
    "QUANTITY": "a quantity such as `2s` or `10%`",
    "IPV4": "an IPv4 address",
    "IPV6": "an IPv6 address",
    "STRING": "a quoted string",
    "$END": "end of file",
}


def describe_terminal(terminal: str, parser: Lark, words: dict[str, str]) -> str:
    """A terminal of ``parser`` in words: from ``words``, else its literal text in backquotes."""
    if terminal in words:
        return words[terminal]
    for t in parser.terminals:
        if t.name == terminal and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return terminal.lower()


def _describe(terminal: str) -> str:
    return describe_terminal(terminal, _lark(), _DESCRIBE)


def _expected_words(expected: set[str]) -> tuple[list[str], list[str]]:
    """Keywords (as text) and described token kinds, each sorted."""
    described = sorted({_describe(t) for t in expected if t != "COMMENT" and not t.startswith("__IGNORE")})
    keywords = sorted(w.strip("`") for w in described if w.startswith("`") and w.strip("`").isidentifier())
    return keywords, described


def _expected_text(described: list[str]) -> str:
    if not described:
        return "nothing more here"
    if len(described) == 1:
        return f"expected {described[0]}"
    return "expected " + ", ".join(described[:-1]) + " or " + described[-1]


def _suggestion(found: str, keywords: list[str]) -> str | None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", found):
        return None
    return d.did_you_mean(found, keywords)


def _syntax_error(error: UnexpectedInput, text: str, file: str) -> d.Diagnostic:
    if isinstance(error, UnexpectedEOF) or (
            isinstance(error, UnexpectedToken) and error.token.type == "$END"):
        return _eof_error(error, text, file)
    if isinstance(error, UnexpectedToken):
        return _token_error(error, file)
    assert isinstance(error, UnexpectedCharacters)
    return _character_error(error, text, file)


def _acceptable(state: Any, fallback: set[str]) -> set[str]:
    """The terminals that really lead on from a parser state.

    An LALR state's table lists lookaheads merged from every context the state
    is shared by; feeding each one to a copy of the state keeps only those that
    this input can actually continue with.
    """
    if state is None or not hasattr(state, "parse_conf"):
        return fallback
    conf = copy(state.parse_conf)
    conf.callbacks = {}
    accepted = set()
    for terminal in conf.states[state.position]:
        if not terminal.isupper():
            continue
        trial = state.copy(deepcopy_values=False)
        trial.parse_conf = conf
        try:
            trial.feed_token(Token(terminal, ""), is_end=terminal == "$END")
        except UnexpectedToken:
            continue
        accepted.add(terminal)
    return accepted or fallback


def _token_error(error: UnexpectedToken, file: str) -> d.Diagnostic:
    token = error.token
    keywords, described = _expected_words(_acceptable(error.state, set(error.expected)))
    return d.UNEXPECTED_TOKEN.at(
        _token_span(token, file), found=f"`{token.value}`",
        label=_expected_text(described), help=_suggestion(str(token.value), keywords))


def _character_error(error: UnexpectedCharacters, text: str, file: str) -> d.Diagnostic:
    line_end = text.find("\n", error.pos_in_stream)
    line_end = len(text) if line_end < 0 else line_end
    char = text[error.pos_in_stream]
    if char == '"':
        span = ir.Span(file, error.line, error.column, error.line,
                       error.column + line_end - error.pos_in_stream)
        return d.UNTERMINATED_STRING.at(span, label="this string has no closing quote",
                                        help='close it with `"` on the same line')
    word = re.match(r"[A-Za-z0-9_.:%/-]+", text[error.pos_in_stream:line_end])
    width = len(word.group()) if word else 1
    span = ir.Span(file, error.line, error.column, error.line, error.column + width)
    keywords, described = _expected_words(_acceptable(error.state, set(error.allowed or ())))
    found = word.group() if word else char
    shown = repr(char) if not char.isprintable() or char.isspace() else f"`{found}`"
    return d.UNEXPECTED_CHARACTER.at(span, char=shown, label=_expected_text(described),
                                     help=_suggestion(found, keywords))


def _eof_error(error: UnexpectedInput, text: str, file: str) -> d.Diagnostic:
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    span = ir.Span(file, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
    expected = _acceptable(getattr(error, "state", None), set(getattr(error, "expected", None) or ()))
    _, described = _expected_words(expected)
    notes = []
    opened = _unclosed_brace(text)
    if opened is not None:
        line, column = opened
        notes.append(d.Note("this block is never closed", ir.Span(file, line, column, line, column + 1)))
    return d.UNEXPECTED_EOF.at(span, label=_expected_text(described), notes=notes,
                               help="add the missing `}`" if opened else None)


def _unclosed_brace(text: str) -> tuple[int, int] | None:
    """Line and column of the innermost `{` left open, ignoring strings and comments."""
    stack: list[tuple[int, int]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = re.sub(r'"([^"\\\n]|\\.)*"', lambda m: " " * len(m.group()), line)
        stripped = stripped.split("#", 1)[0]
        for column, char in enumerate(stripped, start=1):
            if char == "{":
                stack.append((number, column))
            elif char == "}" and stack:
                stack.pop()
    return stack[-1] if stack else None


# ----------------------------------------------------------- tree building --

_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(.*)")


def _unquote(token: Token) -> str:
    body = token.value[1:-1]
    return re.sub(r"\\(x[0-9a-fA-F]{2}|.)", _escaped, body)


def _escaped(match: re.Match) -> str:
    """What a string's escape stands for: a line feed, carriage return, tab, the character of code ``\\xNN``,
    or the character after the backslash."""
    text = match.group(1)
    return chr(int(text[1:], 16)) if len(text) == 3 else {"n": "\n", "r": "\r", "t": "\t"}.get(text, text)


class _Flag(str):
    """A keyword-only clause (`backup`, `unless no backend healthy`) seen in a rule."""


def _tokens(children: list, kind: str) -> list[Token]:
    return [c for c in children if isinstance(c, Token) and c.type == kind]


def _of_type(children: list, kind: type | tuple[type, ...]) -> list:
    return [c for c in children if isinstance(c, kind) and not isinstance(c, Token)]


def _one(children: list, kind: type | tuple[type, ...]) -> Any:
    found = _of_type(children, kind)
    return found[0] if found else None


@v_args(meta=True)
class _ToIR(Transformer):
    """Lark tree to :mod:`lbspec.ir`, attaching a span to every node."""

    def __init__(self, file: str):
        super().__init__(visit_tokens=False)
        self.file = file

    def _span(self, meta: Any) -> ir.Span:
        return _meta_span(meta, self.file)

    def _ident(self, token: Token) -> ir.Ident:
        return ir.Ident(str(token), span=_token_span(token, self.file))

    def _names(self, children: list) -> list[ir.Ident]:
        return [self._ident(t) for t in _tokens(children, "NAME")]

    # --- top level
    def start(self, meta, children):
        return children

    def include(self, meta, children):
        return ir.Include(_unquote(children[0]), span=self._span(meta))

    def service(self, meta, children):
        return ir.Service(self._ident(children[0]), tuple(children[1:]), span=self._span(meta))

    def property(self, meta, children):
        name, title, pattern = children
        return ir.Property(self._ident(name), _unquote(title), pattern, span=self._span(meta))

    # --- service statements
    def vip(self, meta, children):
        return ir.Vip(tuple(children), span=self._span(meta))

    def listen(self, meta, children):
        return ir.Listen(tuple(children), span=self._span(meta))

    def listen_item(self, meta, children):
        protocol = next((str(c) for c in children if isinstance(c, str)), None)
        return ir.ListenItem(protocol, _one(children, ir.PortRange), span=self._span(meta))

    def mode(self, meta, children):
        (kind,) = children
        if isinstance(kind, ir.Mode):
            return dataclasses.replace(kind, span=self._span(meta))
        return ir.Mode(str(kind), span=self._span(meta))

    def tunnel_mode(self, meta, children):
        ports = _tokens(children, "INT")
        return ir.Mode("tunnel", str(children[0]), int(ports[0]) if ports else None,
                       span=self._span(meta))

    def pool(self, meta, children):
        return ir.Pool(self._ident(children[0]), tuple(children[1:]), span=self._span(meta))

    def backend(self, meta, children):
        name, endpoint, *options = children
        return ir.Backend(self._ident(name), endpoint, tuple(options), span=self._span(meta))

    def weight(self, meta, children):
        return ir.Weight(children[0], span=self._span(meta))

    def backup(self, meta, children):
        return ir.Backup(span=self._span(meta))

    def max_conn(self, meta, children):
        return ir.MaxConn(int(children[0]), span=self._span(meta))

    def signed_int(self, meta, children):
        value = int(_tokens(children, "INT")[0])
        return -value if _tokens(children, "NEGATIVE") else value

    def forward(self, meta, children):
        target = _tokens(children, "NAME")[0]
        port = _one(children, int)
        return ir.Forward(_one(children, ir.Traffic), _one(children, tuple) or (),
                          self._ident(target), port, span=self._span(meta))

    def traffic(self, meta, children):
        return ir.Traffic(str(children[0]), _one(children, tuple) or (), span=self._span(meta))

    def sources(self, meta, children):
        return tuple(children)

    def target_port(self, meta, children):
        return int(children[0])

    def otherwise(self, meta, children):
        return ir.Otherwise(str(children[0]), span=self._span(meta))

    def balance(self, meta, children):
        return ir.Balance(str(children[0]), _one(children, tuple) or (), span=self._span(meta))

    def hash_fields(self, meta, children):
        return tuple(str(c) for c in children)

    def affinity(self, meta, children):
        return ir.Affinity(str(children[0]), _one(children, ir.Quantity), span=self._span(meta))

    def affinity_timeout(self, meta, children):
        return children[0]

    def health(self, meta, children):
        path = _tokens(children, "STRING")
        return ir.Health(str(children[0]), _unquote(path[0]) if path else None,
                         tuple(_of_type(children, ir.HealthSetting)), span=self._span(meta))

    def _setting(name: str):  # noqa: N805 - a factory used in the class body
        def build(self, meta, children):
            value = children[0]
            value = value if isinstance(value, ir.Quantity) else int(value)
            return ir.HealthSetting(name, value, span=self._span(meta))
        return build

    health_every = _setting("every")
    health_timeout = _setting("timeout")
    health_fall = _setting("fall")
    health_rise = _setting("rise")
    del _setting

    def failover(self, meta, children):
        source = _one(children, ir.Ident)
        targets = _one(children, tuple)
        below = int(_tokens(children, "INT")[0])
        return ir.Failover(source, targets, below, span=self._span(meta))

    def failover_source(self, meta, children):
        return self._ident(children[0])

    def capacity(self, meta, children):
        down, down_span = _one(children, tuple) or (None, None)
        return ir.Capacity(int(children[0]), down, down_span, span=self._span(meta))

    def capacity_down(self, meta, children):
        return int(children[0]), _token_span(children[0], self.file)

    def require(self, meta, children):
        return ir.Require(self._ident(children[0]), _one(children, ir.Quantity), span=self._span(meta))

    def require_within(self, meta, children):
        return children[0]

    def waive(self, meta, children):
        reason = _tokens(children, "STRING")
        scope = next((c for c in children[1:] if not isinstance(c, Token)), None)
        return ir.Waive(self._ident(children[0]), scope, _unquote(reason[0]) if reason else None,
                        span=self._span(meta))

    def assertion(self, meta, children):
        return ir.Assert(children[0], span=self._span(meta))

    def only_route(self, meta, children):
        sources = next((c for c in children[:-1] if isinstance(c, tuple)), ())
        return ir.OnlyRoute(sources, _one(children, ir.Traffic), children[-1], span=self._span(meta))

    def only_traffic(self, meta, children):
        return children[0]

    # --- patterns
    def scope(self, meta, children):
        return children[0]

    def _scope(self, children: list) -> ir.Filter | None:
        return _one(children, (ir.FilterOr, ir.FilterAnd, ir.FilterNot, ir.FilterWord, ir.FilterTest))

    def response(self, meta, children):
        return ir.Response(self._scope(children), _one(children, ir.Quantity),
                           "unless" in children, span=self._span(meta))

    def unless_no_backend(self, meta, children):
        return _Flag("unless")

    def absence(self, meta, children):
        event, after, names = children[-1]
        return ir.Absence(self._scope(children), event, after, names, span=self._span(meta))

    def to_down(self, meta, children):
        return ("down", bool(children), ())

    def after_detection(self, meta, children):
        return _Flag("after")

    def to_undeclared(self, meta, children):
        return ("undeclared", False, ())

    def to_names(self, meta, children):
        return ("names", False, children[0])

    def twice(self, meta, children):
        return ("twice", False, ())

    def stickiness(self, meta, children):
        return ir.Stickiness(str(children[0]), self._scope(children), "while" in children,
                             span=self._span(meta))

    def while_healthy(self, meta, children):
        return _Flag("while")

    def distribution(self, meta, children):
        return ir.Distribution(str(children[0]), self._scope(children), _one(children, ir.Quantity),
                               span=self._span(meta))

    def integrity(self, meta, children):
        fields = tuple(str(c) for c in children if isinstance(c, _Flag))
        return ir.Integrity(fields, self._scope(children), span=self._span(meta))

    def reverse_path(self, meta, children):
        return ir.ReversePath(self._scope(children), span=self._span(meta))

    # --- filters
    def filter(self, meta, children):
        return ir.FilterOr(tuple(children), span=self._span(meta))

    def filter_and(self, meta, children):
        return ir.FilterAnd(tuple(children), span=self._span(meta))

    def filter_negation(self, meta, children):
        return ir.FilterNot(children[0], span=self._span(meta))

    def filter_word(self, meta, children):
        return ir.FilterWord(self._ident(children[0]), span=self._span(meta))

    def filter_test(self, meta, children):
        field, *rest = children
        op = rest[0] if len(rest) == 2 else None
        return ir.FilterTest(str(field), op, rest[-1], span=self._span(meta))

    def comparison(self, meta, children):
        return " ".join(str(c) for c in children)

    def value_word(self, meta, children):
        return self._ident(children[0])

    def value_set(self, meta, children):
        return ir.ValueSet(tuple(children), span=self._span(meta))

    # --- values
    def _keyword(self, meta, children):
        return _Flag(children[0])

    protocol = protocol_or_any = plain_mode = encap = otherwise_action = _keyword
    balance_algorithm = hash_field = affinity_kind = health_kind = filter_field = _keyword
    stick_key = distribution_unit = preserve_field = _keyword

    def port_list(self, meta, children):
        return tuple(children)

    def port_range(self, meta, children):
        low, *high = (int(t) for t in _tokens(children, "INT"))
        return ir.PortRange(low, high[0] if high else low, span=self._span(meta))

    def name_list(self, meta, children):
        return tuple(self._names(children))

    def quantity(self, meta, children):
        number, unit = _QUANTITY.fullmatch(str(children[0])).groups()
        return ir.Quantity(number, unit, span=self._span(meta))

    def address(self, meta, children):
        return ir.Address(str(children[0]), span=self._span(meta))

    def prefix(self, meta, children):
        length = _tokens(children, "INT")
        return ir.Prefix(children[0], int(length[0]) if length else None, span=self._span(meta))

    def endpoint(self, meta, children):
        address_token = next(c for c in children if c.type in ("IPV4", "IPV6"))
        ports = _tokens(children, "INT")
        return ir.Endpoint(ir.Address(str(address_token), span=_token_span(address_token, self.file)),
                           int(ports[0]) if ports else None, span=self._span(meta))
