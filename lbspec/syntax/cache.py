"""Parsed spec files kept between runs, so a run whose files were all parsed before never loads the parser.

A file's tree depends only on its text, its name (spans carry it) and lbspec's own grammar and tree-building
code, so it is kept under a digest of all of these in the user's cache directory (``$XDG_CACHE_HOME/lbspec``,
else ``~/.cache/lbspec``; never a shared directory).  The property library and the user's spec are parsed
on every run: with the cache, ``lbspec monitor`` starts a fifth faster.  Only files that parse cleanly are
kept, at most :data:`MAX_ENTRIES` (the least recently used go first).  Any trouble with the cache -- no home,
an unwritable or foreign directory, a damaged entry -- costs only the time to parse again.
``LBSPEC_NO_CACHE=1`` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from lbspec import __version__, ir
from lbspec.diagnostics import Diagnostic
from lbspec.resources import grammar_path

__all__ = ["cache_dir", "parse_file", "MAX_ENTRIES"]

MAX_ENTRIES = 128
_PREFIX, _SUFFIX = "parsed-", ".pickle"


def cache_dir() -> str | None:
    """The user's own lbspec cache directory (made if need be), or None where there is none to use."""
    if os.environ.get("LBSPEC_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "lbspec")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        status = os.stat(directory)
    except OSError:
        return None
    if hasattr(os, "getuid") and (status.st_uid != os.getuid() or status.st_mode & 0o022):
        return None  # somebody else's, or others may write in it: do not load what they could have written
    return directory if os.access(directory, os.W_OK) else None


def parse_file(text: str, name: str) -> tuple[ir.SpecFile | None, list[Diagnostic]]:
    """:func:`lbspec.syntax.parser.parse_text`, answered from the cache when the file was parsed before."""
    directory = cache_dir()
    entry = None
    if directory is not None:
        digest = hashlib.sha256(_toolchain() + name.encode() + b"\0" + text.encode()).hexdigest()[:32]
        entry = os.path.join(directory, _PREFIX + digest + _SUFFIX)
        tree = _load(entry)
        if tree is not None:
            return tree, []
    from lbspec.syntax.parser import parse_text

    tree, errors = parse_text(text, name)
    if tree is not None and entry is not None:
        _store(entry, tree)
    return tree, errors


@lru_cache(maxsize=1)
def _toolchain() -> bytes:
    """What a tree depends on besides the file: Python's and lbspec's versions, the grammar, the tree types
    and the code that builds them (a checkout being edited changes these without a new version)."""
    digest = hashlib.sha256(f"{sys.version_info[:2]} {__version__}\0".encode())
    for path in (grammar_path(), Path(ir.__file__), Path(__file__).with_name("parser.py")):
        digest.update(path.read_bytes())
    return digest.digest()


def _load(entry: str) -> ir.SpecFile | None:
    try:
        with open(entry, "rb") as stream:
            tree = pickle.load(stream)
        os.utime(entry)  # recently used: kept when older entries are pruned
    except Exception:  # noqa: BLE001 - missing, being replaced, damaged: parse again
        return None
    return tree if isinstance(tree, ir.SpecFile) else None


def _store(entry: str, tree: ir.SpecFile) -> None:
    directory = os.path.dirname(entry)
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".parsed-")
    except OSError:
        return
    try:
        with os.fdopen(handle, "wb") as stream:
            pickle.dump(tree, stream, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, entry)
    except (OSError, pickle.PicklingError, RecursionError):
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return
    _prune(directory)


def _prune(directory: str) -> None:
    """Keep the :data:`MAX_ENTRIES` most recently used entries."""
    with contextlib.suppress(OSError):  # another run may be pruning or replacing the same entries
        entries = [e for e in os.scandir(directory) if e.name.startswith(_PREFIX) and e.name.endswith(_SUFFIX)]
        if len(entries) <= MAX_ENTRIES:
            return
        entries.sort(key=_last_used, reverse=True)
        for stale in entries[MAX_ENTRIES:]:
            with contextlib.suppress(OSError):
                os.unlink(stale.path)


def _last_used(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return 0
