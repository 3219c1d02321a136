"""`lbspec properties` as text: the library, or the properties each service of a spec is held to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from lbspec.render.text import make_console
from lbspec.semantics.model import PropertyDef, Service

__all__ = ["render_library", "render_applied"]

_NAME, _DEFINITION, _ASIDE, _WAIVED = "bold", "cyan", "dim", "yellow"


def render_library(properties: Sequence[PropertyDef], stream: TextIO, color: bool, verbose: bool = False) -> None:
    """One line per property (name and title); ``verbose`` adds its definition and what it promises."""
    from rich.text import Text

    console = make_console(stream, color)
    width = max((len(p.name) for p in properties), default=0)
    indent = " " * (width + 4)
    for prop in properties:
        console.print(Text.assemble((prop.name.ljust(width), _NAME), f"  {prop.title}"))
        if verbose:
            console.print(Text.assemble(indent, (prop.definition, _DEFINITION)))
            for line in prop.doc.splitlines():
                console.print(Text.assemble(indent, (f"# {line}", _ASIDE)))


def render_applied(services: Sequence[Service], stream: TextIO, color: bool) -> None:
    """Per service, each property it is held to (and where from), and each it waives (and why)."""
    from rich.text import Text

    console = make_console(stream, color)
    for service in services:
        console.print(Text.assemble("service ", (service.name, _NAME), ":"))
        for check in service.checks:
            scoped = " (partly waived)" if check.waivers else ""
            console.print(Text.assemble("  ", (check.name, _NAME), f"  {check.title}  ",
                                        (f"[{check.origin}]", _ASIDE), (scoped, _WAIVED)))
        for waiver in service.waivers:
            if waiver.scope is None:
                console.print(Text.assemble("  ", (waiver.property, _NAME), "  ", ("waived", _WAIVED),
                                            f": {waiver.reason}"))
