"""Reading specs from disk: files, includes, the property library, resolution.

The functions here never raise for bad input; they return diagnostics.  The
public wrappers in :mod:`lbspec` raise :class:`~lbspec.diagnostics.SpecError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lbspec import diagnostics as d
from lbspec import ir
from lbspec.resources import monitors_dir
from lbspec.semantics.model import Spec
from lbspec.semantics.resolve import resolve
from lbspec.syntax.cache import parse_file

__all__ = ["Loaded", "load_path", "load_services", "load_text", "library_files", "read_source", "no_service"]

LIBRARY_PREFIX = "<library>/"


@dataclass
class Loaded:
    """The outcome of loading one spec: the model (None on error), diagnostics, source texts."""

    spec: Spec | None
    diagnostics: list[d.Diagnostic]
    sources: dict[str, str] = field(default_factory=dict, repr=False)  # whole files: too long to show

    @property
    def ok(self) -> bool:
        return self.spec is not None


def no_service(path: str | os.PathLike) -> d.Diagnostic:
    """LB026: a spec to test or check that declares no service (empty, or only properties and includes)."""
    return d.NO_SERVICE.at(ir.Span(str(path), 1, 1, 1, 1), path=str(path),
                           help="write a `service` block, or use the spec that includes this file")


def read_source(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """The text of a file, or None and the reason it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8"), None
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "it is a directory"
    except PermissionError:
        return None, "permission denied"
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 text (byte {error.start})"
    except OSError as error:
        return None, error.strerror or str(error)


@lru_cache(maxsize=1)
def library_files() -> tuple[tuple[ir.SpecFile, ...], tuple[tuple[str, str], ...]]:
    """The parsed property library (``monitors/*.lbspec``) and its texts."""
    files, sources = [], []
    for path in sorted(monitors_dir().glob("*.lbspec")):
        name = LIBRARY_PREFIX + path.name
        text = path.read_text(encoding="utf-8")
        tree, errors = parse_file(text, name)
        if errors:
            raise d.InternalError(f"the property library does not parse: {errors[0].span}: {errors[0].message}")
        files.append(tree)
        sources.append((name, text))
    return tuple(files), tuple(sources)


def load_path(path: str | os.PathLike) -> Loaded:
    name = os.fspath(path)
    text, reason = read_source(name)
    if text is None:
        return Loaded(None, [d.UNREADABLE.at(None, path=name, reason=reason, data={"path": name})])
    return _load(text, name, Path(name).resolve())


def load_services(path: str | os.PathLike) -> Loaded:
    """A spec to check or to monitor traffic with: one that declares no service (an empty file, a file of
    properties) is an input error, LB026."""
    loaded = load_path(path)
    if loaded.ok and not loaded.spec.services:
        return Loaded(None, [*loaded.diagnostics, no_service(path)], loaded.sources)
    return loaded


def load_text(text: str, filename: str = "<string>", base: str | os.PathLike | None = None) -> Loaded:
    """Load a spec from text; includes are found relative to ``base`` (default: the cwd)."""
    return _load(text, filename, None, Path(base or Path.cwd()).resolve())


def _load(text: str, filename: str, path: Path | None, base: Path | None = None) -> Loaded:
    sources = {filename: text}
    diags: list[d.Diagnostic] = []
    files = _Includes(sources, diags, base or Path.cwd()).expand(text, filename, path)
    library, library_sources = library_files()
    sources.update(library_sources)
    if any(x.severity is d.Severity.ERROR for x in diags):
        return Loaded(None, diags, sources)
    spec, found = resolve(files, list(library), sources)
    diags.extend(found)
    diags.sort(key=d.Diagnostic.sort_key)
    return Loaded(spec, diags, sources)


def _parse_text(text: str, name: str):
    """Text given in memory is parsed afresh (the cache keeps files: what runs parse again and again)."""
    from lbspec.syntax.parser import parse_text

    return parse_text(text, name)


class _Includes:
    """Parses a file and, depth first, the files it includes (each once)."""

    def __init__(self, sources: dict[str, str], diags: list[d.Diagnostic], base: Path):
        self.sources = sources
        self.diags = diags
        self.base = base
        self.done: set[Path] = set()
        self.files: list[ir.SpecFile] = []

    def expand(self, text: str, name: str, path: Path | None) -> list[ir.SpecFile]:
        if path is not None:
            self.done.add(path)
        self._visit(text, name, path, ())
        return self.files

    def _visit(self, text: str, name: str, path: Path | None, stack: tuple[tuple[Path | None, str], ...]) -> None:
        tree, errors = parse_file(text, name) if path is not None else _parse_text(text, name)
        self.diags.extend(errors)
        if tree is None:
            return
        self.files.append(tree)
        stack = (*stack, (path, name))
        directory = path.parent if path is not None else self.base
        for node in (i for i in tree.items if isinstance(i, ir.Include)):
            self._include(node, name, directory, stack)

    def _include(self, node: ir.Include, parent: str, directory: Path,
                 stack: tuple[tuple[Path | None, str], ...]) -> None:
        try:
            target = (directory / node.path).resolve()
        except (ValueError, OSError, RuntimeError) as error:  # NUL bytes, symlink loops
            self.diags.append(d.INCLUDE_MISSING.at(node.span, path=node.path, reason=f"not a usable path ({error})"))
            return
        shown = os.path.normpath(os.path.join(os.path.dirname(parent), node.path))
        on_stack = [p for p, _ in stack]
        if target in on_stack:
            loop = [n for _, n in stack[on_stack.index(target):]]
            self.diags.append(d.INCLUDE_CYCLE.at(node.span, chain=" -> ".join([*loop, shown]),
                                                 help="remove one of these includes"))
            return
        if target in self.done:
            return
        self.done.add(target)
        text, reason = read_source(target)
        if text is None:
            self.diags.append(d.INCLUDE_MISSING.at(node.span, path=node.path, reason=reason,
                                                   notes=[d.Note(f"looked for {target}")]))
            return
        self.sources[shown] = text
        self._visit(text, shown, target, stack)
