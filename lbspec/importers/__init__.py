"""Importers: the configuration a load balancer runs, as a spec (`lbspec import`).

::

    from lbspec.importers import import_config
    imported = import_config("haproxy", ["haproxy.cfg"])
    print(imported.text)          # the spec, in canonical layout
    imported.diagnostics          # LB301 for each setting the spec cannot express

A configuration that cannot be read or parsed raises
:class:`~lbspec.importers.draft.ConfigError` (LB300).  docs/importers.md says
how each load balancer's settings map to the spec language.

The names are those of :mod:`lbspec.importers.api`, loaded when first asked for: every `lbspec` command
imports :mod:`lbspec.importers.command` to build its command line, and with it this package.
"""

from __future__ import annotations

__all__ = ["KINDS", "Imported", "import_config", "ConfigError", "Options"]


def __getattr__(name: str):
    if name in __all__:
        from lbspec.importers import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
