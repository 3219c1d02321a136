"""`lbspec check` through the CLI: formats, filters, exit codes, witness captures."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import lbspec
from lbspec.check import CheckOptions, check_spec
from lbspec.cli import main

from conftest import EXAMPLES, limited

API = str(EXAMPLES / "api.lbspec")
WEB = str(EXAMPLES / "web.lbspec")


def test_findings_exit_1_clean_exit_0(cli):
    assert cli("check", API).code == 1
    assert cli("check", WEB).code == 0


def test_exit_zero(cli):
    assert cli("check", "--exit-zero", API).code == 0


def test_select_and_ignore(cli):
    document = json.loads(cli("check", "--format", "json", "--select", "LB104", API).out)
    assert {x["code"] for x in document["diagnostics"]} == {"LB104"}
    document = json.loads(cli("check", "--format", "json", "--ignore", "LB1", API).out)
    assert document["diagnostics"] == []
    assert cli("check", "--ignore", "LB100,LB101,LB104,LB106", API).code == 0


def test_severity_override(cli):
    document = json.loads(cli("check", "--format", "json", "--severity", "LB105=error", WEB).out)
    assert [x["severity"] for x in document["diagnostics"] if x["code"] == "LB105"] == ["error"]
    assert cli("check", "--severity", "LB105=error", WEB).code == 1
    assert cli("check", "--severity", "LB105=loud", WEB).code == 2


@pytest.mark.parametrize("bad", [["--timeout", "0"], ["--timeout", "soon"], ["--timeout", "nan"], ["--timeout", "inf"],
                                 ["--format", "pdf"],
                                 ["--jobs", "0"], ["--jobs", "-3"], ["--rlimit", "-5"], ["--rlimit", "0"]])
def test_bad_options_exit_2(cli, bad):
    assert cli("check", *bad, WEB).code == 2


@pytest.mark.parametrize("bad", [["--select", "foo"], ["--select", "LB9"], ["--select", "LB104,LB1O4"],
                                 ["--ignore", "LB9"], ["--severity", "LB999=error"]])
def test_codes_that_name_no_diagnostic_exit_2(cli, bad):
    # a typo would otherwise hide every finding
    run = cli("check", *bad, API)
    assert run.code == 2 and bad[1].split(",")[-1].split("=")[0] in run.err


@pytest.mark.parametrize("good", [["--select", "LB1"], ["--select", "LB10"], ["--ignore", "lb0"],
                                  ["--severity", "LB1=error"]])
def test_codes_and_prefixes_lbspec_has_are_accepted(cli, good):
    assert cli("check", *good, API).code == 1


def test_json_witness_schema(cli):
    document = json.loads(cli("check", "--format", "json", API).out)
    finding = next(x for x in document["diagnostics"] if x["code"] == "LB100")
    witness = finding["witness"]
    assert set(witness) == {"property", "service", "summary", "steps"}
    packet_step = next(s for s in witness["steps"] if "packet" in s)
    assert set(packet_step["packet"]) == {"proto", "src", "dst", "sport", "dport", "flags"}
    assert packet_step["decision"]["action"] in ("forward", "drop", "reject")
    assert finding["data"]["service"] == "api"


def test_json_witness_names_the_property_it_breaks(cli):
    library = {p["name"] for p in json.loads(cli("properties", "--format", "json").out)["properties"]}
    document = json.loads(cli("check", "--format", "json", API, str(EXAMPLES / "findings" / "LB102-overlap.lbspec")).out)
    named = {x["code"]: x["witness"]["property"] for x in document["diagnostics"] if "witness" in x}
    assert named["LB101"] == "no_drop" and named["LB104"] == "flow_affinity"
    assert named["LB102"] is None  # two rules overlapping break no property
    assert {named[code] for code in ("LB100", "LB101", "LB104")} <= library


def test_sarif_has_what_code_scanning_requires(cli):
    run = cli("check", "--format", "sarif", API)
    document = json.loads(run.out)
    assert document["version"] == "2.1.0" and "sarif-2.1.0" in document["$schema"]
    (sarif_run,) = document["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "lbspec"
    rules = {r["id"]: r for r in driver["rules"]}
    assert all(r["shortDescription"]["text"] and r["fullDescription"]["text"] for r in rules.values())
    assert sarif_run["results"]
    for result in sarif_run["results"]:
        assert result["ruleId"] in rules and driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"] and result["level"] in ("error", "warning", "note")
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"].endswith("api.lbspec")
        assert location["region"]["startLine"] >= 1 and location["region"]["startColumn"] >= 1
    assert {"LB100", "LB101", "LB104"} <= {r["ruleId"] for r in sarif_run["results"]}


def test_sarif_keeps_a_file_that_cannot_be_read(cli, tmp_path):
    # code scanning rejects results without a location: the file's first line is one
    run = cli("check", "--format", "sarif", str(tmp_path / "missing.lbspec"))
    (result,) = json.loads(run.out)["runs"][0]["results"]
    location = result["locations"][0]["physicalLocation"]
    assert run.code == 2 and result["ruleId"] == "LB000"
    assert location["artifactLocation"]["uri"].endswith("missing.lbspec") and location["region"]["startLine"] == 1


def test_junit(cli):
    root = ET.fromstring(cli("check", "--format", "junit", API, WEB).out)
    cases = root.findall(".//testcase")
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert {"no_drop", "flow_affinity", "structure"} <= failed
    assert int(root.get("tests")) == len(cases) and int(root.get("failures")) == len(
        [c for c in cases if c.find("failure") is not None])
    web = [c for c in cases if c.get("classname", "").endswith("web.lbspec:web")]
    assert web and all(c.find("failure") is None for c in web)


def test_github_annotations(cli):
    lines = cli("check", "--format", "github", API).out.splitlines()
    assert any(l.startswith("::error file=") and "title=LB100" in l for l in lines)
    assert any(l.startswith("::warning file=") and "title=LB104" in l for l in lines)
    assert all("\n" not in l for l in lines)


def test_github_annotations_state_a_witness_summary_once(cli):
    document = json.loads(cli("check", "--format", "json", "--select", "LB100", API).out)
    summaries = [x["witness"]["summary"] for x in document["diagnostics"]]
    lines = cli("check", "--format", "github", "--select", "LB100", API).out.splitlines()
    assert summaries and len(lines) == len(summaries)
    for line, summary in zip(lines, summaries):
        assert line.count(summary) == 1


def test_explain_in_text(cli):
    run = cli("check", "--explain", WEB)
    assert run.code == 0 and "LB112" in run.out and "rests on this" in run.out


def test_witness_captures(cli, tmp_path):
    from scapy.all import rdpcap

    run = cli("check", "--witness-dir", str(tmp_path), API)
    assert run.code == 1
    captures = sorted(tmp_path.glob("*.pcap"))
    assert {p.name.split("-")[2] for p in captures} >= {"LB100", "LB101", "LB104"}
    split = next(p for p in captures if "LB104" in p.name)
    frames = rdpcap(str(split))
    assert len(frames) == 4  # two client packets, each forwarded
    assert frames[1]["IP"].dst != frames[3]["IP"].dst  # to two different backends
    if shutil.which("tshark"):
        done = subprocess.run(["tshark", "-r", str(split)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and len(done.stdout.splitlines()) == 4


def test_witness_dir_that_is_a_file_exits_2(cli, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("")
    run = cli("check", "--witness-dir", str(taken), API)
    assert run.code == 2 and str(taken) in run.err


def test_a_witness_that_cannot_be_written_exits_2_after_the_report(cli, tmp_path):
    fine = tmp_path / "fine"
    assert cli("check", "--witness-dir", str(fine), API).code == 1
    first = sorted(p.name for p in fine.iterdir())[0]
    blocked = tmp_path / "blocked"
    (blocked / first).mkdir(parents=True)  # where the first capture would go
    run = cli("check", "--witness-dir", str(blocked), "--format", "json", API)
    assert run.code == 2 and first in run.err
    assert {"LB100", "LB101", "LB104"} <= {x["code"] for x in json.loads(run.out)["diagnostics"]}


def test_a_witness_cut_short_by_a_full_disk_is_removed(tmp_path):
    done = limited(["check", "--witness-dir", str(tmp_path), "--format", "json", API], 60)
    assert done.returncode == 2 and "LB100" in done.stdout and list(tmp_path.iterdir()) == []


def test_tunnel_witness_is_encapsulated(cli, tmp_path):
    from scapy.all import UDP, rdpcap

    spec = tmp_path / "t.lbspec"
    spec.write_text((EXAMPLES / "findings" / "LB104-per-packet.lbspec").read_text().replace(
        "balance round_robin", "balance round_robin\n    mode tunnel gue"))
    assert cli("check", "--witness-dir", str(tmp_path / "w"), str(spec)).code == 1
    frames = rdpcap(str(next((tmp_path / "w").glob("*LB104*.pcap"))))
    assert frames[1][UDP].dport == 6080


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _many_services(tmp_path) -> str:
    blocks = [f"service s{i} {{ vip 192.0.2.{i + 1} listen tcp 80 pool p {{ backend b 10.0.0.1 }} "
              f"forward tcp 80 to p health tcp }}" for i in range(20)]
    path = tmp_path / "many.lbspec"
    path.write_text("\n".join(blocks))
    return str(path)


@pytest.mark.parametrize("no_color", [False, True])
def test_progress_shows_on_a_terminal_with_or_without_colour(tmp_path, monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    out, err = io.StringIO(), _Terminal()
    assert main(["check", "--jobs", "1", _many_services(tmp_path)], out, err) == 0
    assert "checking" in err.getvalue()


def test_no_progress_turns_the_bar_off(tmp_path):
    out, err = io.StringIO(), _Terminal()
    assert main(["check", "--jobs", "1", "--no-progress", _many_services(tmp_path)], out, err) == 0
    assert err.getvalue() == ""


def test_a_check_of_one_service_shows_progress_once_it_takes_a_while(tmp_path, monkeypatch):
    """One service of a thousand backends takes several seconds: the bar shows once the check has taken
    `_Progress.DELAY` (0 here), and moves within the service; with the delay not reached, nothing shows."""
    from lbspec import cli as command_line

    spec = tmp_path / "one.lbspec"
    spec.write_text("service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 } forward tcp 80 to p }\n")
    monkeypatch.setattr(command_line._Progress, "DELAY", 0.0)
    err = _Terminal()
    assert main(["check", "--jobs", "1", str(spec)], io.StringIO(), err) == 1
    assert err.getvalue() != ""  # the bar was drawn (stdout holds the findings)
    monkeypatch.setattr(command_line._Progress, "DELAY", 3600.0)
    err = _Terminal()
    assert main(["check", "--jobs", "1", str(spec)], io.StringIO(), err) == 1
    assert err.getvalue() == ""


def test_progress_is_told_within_a_service():
    spec = lbspec.loads("service s { vip 192.0.2.1 listen tcp 80 pool p { backend b 10.0.0.1 } "
                        "forward tcp 80 to p }\n")
    told = []
    check_spec(spec, CheckOptions(jobs=1), lambda done, total: told.append((done, total)))
    assert len(told) > 8 and all(total == 1 for _, total in told)
    assert [done for done, _ in told] == sorted(done for done, _ in told) and told[-1][0] == 1 and told[0][0] < 1
