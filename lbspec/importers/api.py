"""What :mod:`lbspec.importers` offers: :func:`import_config` and what it returns or raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NoReturn

from lbspec import diagnostics as d
from lbspec.importers.draft import ConfigError, ImportContext, Note, Options, ServiceDraft, file_span, finish, render

__all__ = ["KINDS", "Imported", "import_config", "ConfigError", "Options"]

KINDS = ("haproxy", "nginx", "nftables", "k8s")

_WHAT = {"haproxy": "HAProxy configuration", "nginx": "nginx configuration",
         "nftables": "nftables ruleset (`nft -j list ruleset`)", "k8s": "Kubernetes Services and EndpointSlices"}

# What makes a service, for each kind: said when a configuration has none.
_LOOKS_FOR = {
    "haproxy": "`frontend` and `listen` sections with a `bind` line",
    "nginx": "`server` blocks in `stream` or `http` that `listen` and `proxy_pass` to an `upstream` or an address",
    "nftables": "`dnat` rules reached from NAT chains on the `prerouting` and `output` hooks",
    "k8s": "`kind: Service` objects (with their EndpointSlices)",
}


@dataclass
class Imported:
    """An imported spec: its text, the services in it, and what could not be represented."""

    text: str
    services: list[str]
    diagnostics: list[d.Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def _reader(kind: str):
    if kind == "haproxy":
        from lbspec.importers.haproxy import import_haproxy
        return import_haproxy
    if kind == "nginx":
        from lbspec.importers.nginx import import_nginx
        return import_nginx
    if kind == "nftables":
        from lbspec.importers.nftables import import_nftables
        return import_nftables
    if kind == "k8s":
        from lbspec.importers.k8s import import_k8s
        return import_k8s
    raise d.InputError(f"unknown configuration kind {kind!r}: use one of {', '.join(KINDS)}")


def import_config(kind: str, paths: list[str], options: Options | None = None,
                  filename: str = "imported.lbspec") -> Imported:
    """Read configuration files of one ``kind`` and return the spec they amount to.

    Raises :class:`ConfigError` (LB300) for a file that cannot be read or parsed,
    and :class:`~lbspec.diagnostics.InputError` for options that do not fit.
    """
    ctx = ImportContext(options)
    services, notes = _reader(kind)(list(paths), ctx)
    if not services and not ctx.skipped:
        _nothing_found(kind, paths, notes, ctx)
    _rename(services, ctx.options.service_name)
    header = [f"Imported from {', '.join(paths)} ({_WHAT[kind]}) by `lbspec import {kind}`.",
              "Comments starting `not represented:` name settings the spec language cannot express.",
              *(n.text for n in notes)]
    text = finish(render(services, header), filename)
    return Imported(text, [s.name for s in services], list(ctx.diagnostics), dict(ctx.sources))


def _nothing_found(kind: str, paths: list[str], notes: list[Note], ctx: ImportContext) -> NoReturn:
    """LB300 at each file: an empty spec would look like a successful import of a configuration with no service.

    Parsers accept files of another kind (crossplane reads YAML or an nftables
    ruleset as unknown directives), so this is where such files are caught.
    The header notes, on the first file's error, say what was read and why it
    gave no service.
    """
    help = f"`lbspec import {kind}` looks for {_LOOKS_FOR[kind]}; a file of another kind has none"
    raise ConfigError([d.BAD_CONFIG.at(file_span(ctx.sources, path), what=f"no load-balanced service found in {path}",
                                       help=help, notes=[d.Note(n.text) for n in notes] if index == 0 else ())
                       for index, path in enumerate(paths)], ctx.sources)


def _rename(services: list[ServiceDraft], name: str | None) -> None:
    if name is None:
        return
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        raise d.InputError(f"--service-name {name!r} is not a name: use letters, digits, `_` and `-`, "
                           "starting with a letter or `_`")
    if len(services) != 1:
        found = ", ".join(s.name for s in services) or "none"
        raise d.InputError(f"--service-name names one service, but the configuration gives "
                           f"{len(services)} ({found})")
    services[0].name = name

