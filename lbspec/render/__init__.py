"""Renderers: diagnostics to text or JSON.  Checkers never print; these do."""

from lbspec.render.json import diagnostic_to_dict, render_json
from lbspec.render.text import format_diagnostic, render_text

__all__ = ["render_text", "render_json", "format_diagnostic", "diagnostic_to_dict"]
