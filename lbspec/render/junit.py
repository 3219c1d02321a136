"""JUnit XML: one test case per (file, check), failing with the diagnostics that break it.

CI systems that read JUnit (GitLab, Jenkins, GitHub actions with a reporter)
show each property as a test that passed or failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from lbspec.diagnostics import Diagnostic, Severity

__all__ = ["render_junit"]


def render_junit(cases: Iterable[tuple[str, str, list[Diagnostic]]], stream: TextIO, suite: str = "lbspec",
                 failing: Severity = Severity.WARNING) -> None:
    """Write a JUnit document.

    ``cases`` are (classname, name, diagnostics) triples; a case fails when one
    of its diagnostics is at least ``failing`` severe, and is skipped-free
    otherwise.  Less severe diagnostics are kept as system-out.
    """
    import xml.etree.ElementTree as ET  # here: every lbspec command imports this module, few write JUnit

    root = ET.Element("testsuites", name=suite)
    suites: dict[str, ET.Element] = {}
    totals = {"tests": 0, "failures": 0}
    for classname, name, diagnostics in cases:
        element = suites.get(classname)
        if element is None:
            element = suites[classname] = ET.SubElement(root, "testsuite", name=classname)
        case = ET.SubElement(element, "testcase", classname=classname, name=name)
        totals["tests"] += 1
        bad = [d for d in diagnostics if d.severity.rank >= failing.rank]
        if bad:
            totals["failures"] += 1
            failure = ET.SubElement(case, "failure", type=bad[0].code, message=bad[0].message)
            failure.text = "\n".join(_line(d) for d in bad)
        notes = [d for d in diagnostics if d.severity.rank < failing.rank]
        if notes:
            ET.SubElement(case, "system-out").text = "\n".join(_line(d) for d in notes)
    for element in suites.values():
        cases_ = element.findall("testcase")
        element.set("tests", str(len(cases_)))
        element.set("failures", str(sum(1 for c in cases_ if c.find("failure") is not None)))
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    ET.indent(root)
    stream.write('<?xml version="1.0" encoding="utf-8"?>\n')
    stream.write(ET.tostring(root, encoding="unicode"))
    stream.write("\n")


def _line(diagnostic: Diagnostic) -> str:
    where = f"{diagnostic.span}: " if diagnostic.span else ""
    return f"{where}{diagnostic.severity.value}[{diagnostic.code}] {diagnostic.message}"
