"""Option types, checks and file output that more than one subcommand uses, so that each works the same way."""

from __future__ import annotations

import argparse
import math
import os
import tempfile

from lbspec.diagnostics import InputError

__all__ = ["number", "finite", "positive", "count", "witness_directory", "replace_file"]


def number(text: str, kind: type, what: str):
    """``text`` read as ``kind`` (int, float), or the argparse error that says ``what`` was expected."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}") from None


def finite(text: str, what: str) -> float:
    """``text`` read as a finite float: no option of lbspec means anything by nan or an infinity, which
    would pass every check of a sign and then compare false (or overflow) where the value is used."""
    value = number(text, float, what)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
    return value


def positive(text: str, what: str) -> float:
    """``text`` read as a finite float above zero (``what`` says what was expected, for the error)."""
    value = finite(text, what)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected {what}, not {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    value = number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, not {value}")
    return value


def witness_directory(directory: str) -> None:
    """Make ``--witness-dir`` before any work: a path that cannot be a directory is an input error up front,
    not a traceback once the findings are in."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create --witness-dir {directory}: {error.strerror}") from None


def replace_file(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` in one step (a crash or a full disk leaves the old file, and no temporary
    one): with the permissions of the file it replaces, or those a new file gets from the umask."""
    directory = os.path.dirname(path) or "."
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
