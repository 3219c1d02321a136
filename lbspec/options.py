"""Option types and checks that more than one subcommand uses, so that each is read the same way."""

from __future__ import annotations

import argparse
import math
import os

from lbspec.diagnostics import InputError

__all__ = ["number", "finite", "positive", "count", "witness_directory"]


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
