"""Shared helpers: load specs from text and compare diagnostics by code."""

from __future__ import annotations

import importlib.util
import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from lbspec.cli import main
from lbspec.loader import load_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MINIMAL = """
service s {
    vip 192.0.2.1
    listen tcp 80
    pool p {
        backend b1 10.0.0.1
    }
    forward tcp 80 to p
}
"""


# MINIMAL with a health check: nothing for `lbspec check` to report above info level.
CLEAN = MINIMAL.replace("forward tcp 80 to p\n", "forward tcp 80 to p\n    health tcp\n")


def codes(text: str, filename: str = "spec.lbspec", base: Path | None = None) -> list[str]:
    return [x.code for x in load_text(text, filename, base).diagnostics]


def assert_diagnostics(text: str, *expected: str, base: Path | None = None) -> None:
    """The spec gives exactly these codes (in any order)."""
    assert sorted(codes(text, base=base)) == sorted(expected)


def locate(marked: str) -> tuple[str, int, int]:
    """Remove the `@` marker from a spec; return the text and the marker's line and column."""
    index = marked.index("@")
    text = marked[:index] + marked[index + 1:]
    line = marked.count("\n", 0, index) + 1
    column = index - (marked.rfind("\n", 0, index) + 1) + 1
    return text, line, column


def service(body: str, name: str = "s") -> str:
    """A minimal valid service with extra statements."""
    return MINIMAL.replace("service s {", f"service {name} {{").replace("forward tcp 80 to p\n",
                                                                        f"forward tcp 80 to p\n{body}\n")


class Run:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


def run_cli(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def limited(argv: list[str], limit: int, **streams) -> subprocess.CompletedProcess:
    """``python -m lbspec ARGV`` unable to write more than ``limit`` bytes to any file: a write past it
    fails (EFBIG) as one to a full disk does (ENOSPC).  Pipes are not limited."""
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    streams = streams or {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    env = dict(os.environ, LBSPEC_NO_CACHE="1")
    return subprocess.run([sys.executable, "-m", "lbspec", *argv], preexec_fn=preexec, text=True, env=env,
                          timeout=120, **streams)


def example_pylb(name: str):
    """examples/pylb imported as module ``name``: pytester runs import it as `pylb` from their own copy."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "pylb" / "__init__.py",
                                                  submodule_search_locations=[str(EXAMPLES / "pylb")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
