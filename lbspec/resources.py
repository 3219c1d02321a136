"""Where the data files shipped with lbspec live.

`grammar/` and `monitors/` sit at the top of the source tree.  A wheel carries
them inside the package as ``lbspec/_data/grammar`` and ``lbspec/_data/monitors``
(hatch ``force-include``); an editable install or a plain checkout does not, so
this module looks in both places.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["data_dir", "grammar_path", "monitors_dir"]

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory ``name`` (``grammar`` or ``monitors``), installed or in a checkout."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lbspec data directory {name!r} is missing from the installation")


def grammar_path() -> Path:
    return data_dir("grammar") / "lbspec.lark"


def monitors_dir() -> Path:
    return data_dir("monitors")
