"""The wheel carries grammar/ and monitors/, and an installed lbspec finds them there."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

hatchling = pytest.importorskip("hatchling.builders.wheel", reason="hatchling is installed by `pip install -e .[test]`")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    builder = hatchling.WheelBuilder(str(ROOT))
    (path,) = list(builder.build(directory=str(out), versions=["standard"]))
    return path


def test_wheel_ships_the_grammar_and_the_library(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lbspec/_data/grammar/lbspec.lark" in names
    assert "lbspec/_data/monitors/no_drop.lbspec" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_layout_finds_its_data(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = ("import lbspec.resources as r, lbspec; "
            "print(r.grammar_path()); print(len(lbspec.loads('').properties))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    grammar, count = done.stdout.split()
    assert grammar.startswith(str(tmp_path)) and "_data" in grammar
    assert int(count) >= 7
