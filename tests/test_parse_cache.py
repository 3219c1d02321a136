"""Parsed files kept between runs: same trees as a fresh parse, no parser loaded on a hit, bounded, harmless
when damaged or unusable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbspec.loader import library_files, load_path
from lbspec.syntax import cache
from lbspec.syntax.parser import parse_text
from tests.conftest import EXAMPLES, MINIMAL


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LBSPEC_NO_CACHE", raising=False)
    return tmp_path / "cache" / "lbspec"


def entries(home: Path) -> list[Path]:
    return sorted(home.glob("parsed-*.pickle"))


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.lbspec")), ids=lambda p: p.name)
def test_a_cached_tree_is_the_tree_a_fresh_parse_gives(home, example):
    text = example.read_text()
    fresh, _ = parse_text(text, str(example))
    first, _ = cache.parse_file(text, str(example))  # parses and stores
    again, _ = cache.parse_file(text, str(example))  # from the cache
    assert fresh == first == again
    assert len(entries(home)) == 1


def test_the_name_is_part_of_the_key_spans_carry_it(home):
    a, _ = cache.parse_file(MINIMAL, "a.lbspec")
    b, _ = cache.parse_file(MINIMAL, "b.lbspec")
    assert a.span.file == "a.lbspec" and b.span.file == "b.lbspec"
    assert len(entries(home)) == 2


def test_a_file_with_errors_is_not_kept(home):
    tree, errors = cache.parse_file("service {", "bad.lbspec")
    assert tree is None and [e.code for e in errors] == ["LB001"]
    assert entries(home) == []


def test_a_damaged_entry_is_parsed_again_and_replaced(home):
    cache.parse_file(MINIMAL, "s.lbspec")
    (entry,) = entries(home)
    entry.write_bytes(b"not a pickle")
    tree, errors = cache.parse_file(MINIMAL, "s.lbspec")
    assert tree == parse_text(MINIMAL, "s.lbspec")[0] and not errors
    assert entry.read_bytes() != b"not a pickle"


def test_entries_are_bounded_least_recently_used_first(home, monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    for n in range(3):
        cache.parse_file(MINIMAL, f"{n}.lbspec")
    os.utime(entries(home)[0], (1, 1))
    oldest = entries(home)[0]
    cache.parse_file(MINIMAL, "3.lbspec")
    assert len(entries(home)) == 3 and oldest not in entries(home)


def test_no_cache_when_turned_off_or_the_directory_is_unusable(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LBSPEC_NO_CACHE", "1")
    assert cache.parse_file(MINIMAL, "s.lbspec")[0] is not None
    assert not home.exists()
    monkeypatch.delenv("LBSPEC_NO_CACHE")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o777)  # others may write in it: nothing is loaded from it, nothing stored
    assert cache.cache_dir() is None
    home.chmod(0o700)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the directory would be
    assert cache.cache_dir() is None
    assert cache.parse_file(MINIMAL, "s.lbspec")[0] is not None


def test_load_path_uses_the_cache_and_a_warm_run_never_imports_the_parser(home, tmp_path):
    spec = tmp_path / "web.lbspec"
    spec.write_text(MINIMAL)
    library_files.cache_clear()  # parsed once per process: parse it here, into this cache
    assert load_path(spec).ok
    assert len(entries(home)) > 1  # the spec and the property library
    probe = ("import sys; from lbspec.loader import load_path; "
             f"assert load_path({str(spec)!r}).ok; "
             "print(sorted(m for m in sys.modules if m.startswith(('lark', 'lbspec.syntax.parser'))))")
    env = dict(os.environ, XDG_CACHE_HOME=str(home.parent))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
