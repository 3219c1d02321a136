"""Helpers for the importer tests: import a config, load the spec, look at what was lost."""

from __future__ import annotations

import io
from pathlib import Path

import lbspec
from lbspec.cli import main
from lbspec.importers import Imported, Options, import_config
from lbspec.semantics import model as m

CONFIGS = Path(__file__).resolve().parent / "configs"


class Result:
    """An import and the spec it loads to."""

    def __init__(self, imported: Imported):
        self.imported = imported
        self.text = imported.text
        self.spec = lbspec.loads(imported.text, "imported.lbspec")

    def service(self, name: str) -> m.Service:
        return self.spec.service(name)

    @property
    def codes(self) -> list[str]:
        return [d.code for d in self.imported.diagnostics]

    def lost(self) -> list[str]:
        """The `not represented` comments of the spec text."""
        return [line.strip() for line in self.text.splitlines() if "# not represented:" in line]

    def lost_mentions(self, *words: str) -> bool:
        """Some `not represented` comment names all these words."""
        return any(all(w in line for w in words) for line in self.lost())


def run(kind: str, *names: str, directory: Path | None = None, **options) -> Result:
    """Import files from configs/KIND (or ``directory``) and load the result."""
    base = directory or CONFIGS / kind
    paths = [str(base / n) for n in names]
    return Result(import_config(kind, paths, Options(**options)))


def backends(service: m.Service, pool: str) -> dict[str, m.Backend]:
    return {b.name: b for b in service.pool(pool).backends}


def addresses(service: m.Service, pool: str) -> list[str]:
    return [str(b.address) for b in service.pool(pool).backends]


def rules(service: m.Service) -> list[tuple]:
    """(protocol, ports, sources, pool, target port) for each rule, sources as text."""
    return [(r.protocol, r.ports, tuple(str(s) for s in r.sources), r.pool, r.target_port) for r in service.rules]


class Cli:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


def cli(*argv: str) -> Cli:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return Cli(code, out.getvalue(), err.getvalue())
