"""Renderers: diagnostics to text, JSON, SARIF, JUnit or GitHub annotations.  Checkers never print; these do."""

from lbspec.render.github import render_github
from lbspec.render.json import diagnostic_to_dict, render_json
from lbspec.render.junit import render_junit
from lbspec.render.sarif import render_sarif, sarif_document
from lbspec.render.text import format_diagnostic, render_text

__all__ = ["render_text", "render_json", "render_sarif", "sarif_document", "render_junit", "render_github",
           "format_diagnostic", "diagnostic_to_dict"]
