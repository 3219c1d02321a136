"""lbspec: hold load balancers to a written specification.

The public API::

    spec = lbspec.load("web.lbspec")           # a resolved Spec, or SpecError
    spec = lbspec.loads(text, filename="x")     # the same, from text
    tree = lbspec.parse(text, filename="x")     # the syntax tree of one file

Everything not named in ``__all__`` may change between releases.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

from lbspec.diagnostics import (  # noqa: E402
    Diagnostic, InputError, InternalError, LbspecError, Note, Severity, SpecError,
)
from lbspec.ir import (  # noqa: E402
    Absence, Address, Affinity, Assert, Backend, Backup, Balance, Capacity, Comment, Distribution,
    Endpoint, Failover, FilterAnd, FilterNot, FilterOr, FilterTest, FilterWord, Forward, Health,
    HealthSetting, Ident, Include, Integrity, Listen, ListenItem, MaxConn, Mode, Otherwise, Pool,
    PortRange, Prefix, Property, Quantity, Require, Response, ReversePath, Service, Span, SpecFile,
    Stickiness, Traffic, ValueSet, Vip, Waive, Weight, OnlyRoute,
)
from lbspec.semantics.model import Spec  # noqa: E402

__all__ = [
    "__version__", "load", "loads", "parse",
    "Spec", "Diagnostic", "Note", "Severity", "LbspecError", "SpecError", "InputError", "InternalError",
    # the syntax tree (lbspec.ir)
    "Span", "SpecFile", "Service", "Property", "Include", "Vip", "Listen", "ListenItem", "Mode",
    "Pool", "Backend", "Weight", "Backup", "MaxConn", "Endpoint", "Forward", "Traffic", "Otherwise",
    "Balance", "Affinity", "Health", "HealthSetting", "Failover", "Capacity", "Require", "Waive",
    "Assert", "OnlyRoute", "Response", "Absence", "Stickiness", "Distribution", "Integrity",
    "ReversePath", "FilterOr", "FilterAnd", "FilterNot", "FilterWord", "FilterTest", "ValueSet",
    "Ident", "Address", "Prefix", "PortRange", "Quantity", "Comment",
]


def _checked(loaded) -> Spec:
    if loaded.spec is None:
        raise SpecError(loaded.diagnostics, loaded.sources)
    return loaded.spec


def load(path: str | os.PathLike) -> Spec:
    """Load a spec file, its includes and the property library, and resolve them.

    Raises :class:`SpecError` (a ``ValueError``) whose ``diagnostics`` say what
    is wrong and where.  Warnings are on the returned ``Spec.diagnostics``.
    """
    from lbspec.loader import load_path

    return _checked(load_path(path))


def loads(text: str, filename: str = "<string>", base: str | os.PathLike | None = None) -> Spec:
    """Like :func:`load`, from text; includes are looked up under ``base`` (default: the cwd)."""
    from lbspec.loader import load_text

    return _checked(load_text(text, filename, base))


def parse(text: str, filename: str = "<string>") -> SpecFile:
    """The syntax tree of one file, without following includes or checking meaning.

    Raises :class:`SpecError` on a syntax error.
    """
    from lbspec.syntax.parser import parse_text

    tree, errors = parse_text(text, filename)
    if tree is None:
        raise SpecError(errors, {filename: text})
    return tree
