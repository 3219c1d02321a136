"""The command line, through main(argv, stdout, stderr): exit codes, formats, every command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lbspec

from conftest import CLEAN, EXAMPLES, limited, service


@pytest.fixture
def spec(tmp_path):
    def write(text: str, name: str = "spec.lbspec"):
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def test_version(cli):
    run = cli("--version")
    assert run.code == 0 and lbspec.__version__ in run.out


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["fmt", "--help"], ["properties", "--help"]])
def test_help(cli, argv):
    run = cli(*argv)
    assert run.code == 0 and "usage:" in run.out and "Exit codes" in run.out


@pytest.mark.parametrize("argv", [[], ["check"], ["frobnicate"], ["check", "--format", "xml", "x"], ["fmt"]])
def test_usage_errors_exit_2(cli, argv):
    assert cli(*argv).code == 2


def test_check_clean_spec_exits_0(cli, spec):
    run = cli("check", spec(CLEAN))
    assert run.code == 0 and "no problems found" in run.out


def test_check_invalid_spec_exits_2_with_location(cli, spec):
    path = spec(service("forward tcp 80 to nowhere"))
    run = cli("check", path)
    assert run.code == 2
    assert "error[LB020]" in run.out and f"{path}:" in run.out


def test_check_warnings_exit_1(cli, spec):
    run = cli("check", "--front-end-only", spec(service("health tcp every 1s timeout 2s")))
    assert run.code == 1 and "warning[LB038]" in run.out


def test_check_missing_file_exits_2(cli, tmp_path):
    run = cli("check", str(tmp_path / "nope.lbspec"))
    assert run.code == 2 and "LB000" in run.out


def test_check_several_files_worst_exit_wins(cli, spec):
    good = spec(CLEAN, "good.lbspec")
    bad = spec("service {", "bad.lbspec")
    run = cli("check", good, bad)
    assert run.code == 2 and "good.lbspec" in run.out and "bad.lbspec" in run.out


def test_check_json(cli, spec):
    run = cli("check", "--format", "json", spec(service("forward tcp 80 to nowhere\nwaive balance")))
    document = json.loads(run.out)
    assert run.code == 2
    assert sorted(x["code"] for x in document["diagnostics"]) == ["LB020", "LB040"]
    first = document["diagnostics"][0]
    assert set(first) >= {"code", "name", "severity", "message", "span", "notes", "help", "label"}
    assert set(first["span"]) == {"file", "line", "column", "end_line", "end_column"}
    assert document["summary"]["errors"] == 2
    assert document["files"][0]["ok"] is False


def test_check_json_of_a_clean_spec(cli, spec):
    document = json.loads(cli("check", "--format", "json", spec(CLEAN)).out)
    assert [x["code"] for x in document["diagnostics"]] == ["LB105"] and document["files"][0]["services"] == ["s"]


def test_no_colour_unless_asked(cli, spec):
    path = spec(service("forward tcp 80 to nowhere"))
    assert "\x1b[" not in cli("check", path).out
    assert "\x1b[" in cli("check", "--color", "always", path).out


def test_fmt_rewrites_in_place(cli, spec, tmp_path):
    path = spec('service s{vip 192.0.2.1 listen tcp 80}  # note')
    run = cli("fmt", path)
    assert run.code == 0
    assert open(path).read() == "service s {\n    vip 192.0.2.1\n    listen tcp 80\n}  # note\n"
    assert [p.name for p in tmp_path.iterdir()] == ["spec.lbspec"]  # no temporary file left behind


def test_fmt_check_reports_without_writing(cli, spec):
    messy = 'service s{vip 192.0.2.1 listen tcp 80}'
    path = spec(messy)
    run = cli("fmt", "--check", path)
    assert run.code == 1 and open(path).read() == messy
    cli("fmt", path)
    assert cli("fmt", "--check", path).code == 0


def test_fmt_diff(cli, spec):
    run = cli("fmt", "--diff", spec('service s{vip 192.0.2.1}'))
    assert run.code == 1 and "+    vip 192.0.2.1" in run.out


def test_fmt_syntax_error_leaves_file_alone(cli, spec):
    path = spec("service s { vip }")
    run = cli("fmt", path)
    assert run.code == 2 and "LB001" in run.err and open(path).read() == "service s { vip }"


def test_fmt_stdin(cli, monkeypatch):
    import io
    monkeypatch.setattr("sys.stdin", io.StringIO("service s{vip 192.0.2.1}"))
    run = cli("fmt", "-")
    assert run.code == 0 and run.out == "service s {\n    vip 192.0.2.1\n}\n"


def test_fmt_keeps_file_mode(cli, spec):
    import os
    path = spec("service s{vip 192.0.2.1}")
    os.chmod(path, 0o640)
    cli("fmt", path)
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_properties_lists_the_library(cli):
    run = cli("properties")
    assert run.code == 0
    for name in ("no_drop", "healthy_only", "declared_only", "flow_affinity", "integrity", "reverse_path", "balance"):
        assert name in run.out


def test_properties_json_and_verbose(cli):
    document = json.loads(cli("properties", "--format", "json").out)
    names = {p["name"]: p for p in document["properties"]}
    assert names["no_drop"]["definition"] == "forward every packet within 50ms unless no backend healthy"
    assert names["no_drop"]["doc"]
    assert "forward every packet" in cli("properties", "-v").out


def test_properties_of_a_spec(cli):
    run = cli("properties", "--format", "json", str(EXAMPLES / "tunnel.lbspec"))
    document = json.loads(run.out)
    metrics = next(s for s in document["services"] if s["service"] == "metrics")
    assert "balance" in metrics["waived"]
    assert "balance" not in {c["name"] for c in metrics["checks"]}
    assert cli("properties", str(EXAMPLES / "web.lbspec")).code == 0


@pytest.mark.parametrize("spec_file", [[], [str(EXAMPLES / "tunnel.lbspec")]], ids=["library", "spec"])
def test_properties_colour_the_listing_when_asked(cli, spec_file):
    coloured = cli("properties", "-v", "--color", "always", *spec_file)
    plain = cli("properties", "-v", "--color", "never", *spec_file)
    assert coloured.code == plain.code == 0
    assert "\x1b[" in coloured.out and "\x1b[" not in plain.out


def test_properties_of_a_bad_spec_exits_2(cli, spec):
    assert cli("properties", spec("service {")).code == 2


def test_entry_point_module_runs():
    done = subprocess.run([sys.executable, "-m", "lbspec", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "lbspec" in done.stdout


@pytest.mark.parametrize("argv, code", [
    (["properties", "-v", str(EXAMPLES / "web.lbspec")], 0),
    (["check", "--format", "json", str(EXAMPLES / "findings" / "LB101-uncovered.lbspec")], 1),
    (["check", "--format", "json", "no-such-file.lbspec"], 2),
])
def test_the_command_ends_with_all_its_output_and_its_exit_code(cli, tmp_path, argv, code):
    """The command ends its process without tearing the interpreter down: what it wrote must be there in
    full, and its exit code kept, on a file (written in blocks) as in the same run in process."""
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        done = subprocess.run([sys.executable, "-m", "lbspec", *argv], stdout=out, stderr=err, timeout=120)
    same = cli(*argv)
    assert done.returncode == same.code == code
    assert (tmp_path / "out").read_text() == same.out and (tmp_path / "err").read_text() == same.err


def test_files_may_follow_options(cli, spec):
    first, second = spec(CLEAN, "a.lbspec"), spec(CLEAN, "b.lbspec")
    document = json.loads(cli("check", first, "--format", "json", second).out)
    assert [f["file"] for f in document["files"]] == [first, second]
    assert cli("check", first, "--no-such-option", second).code == 2


# ------------------------------------------------------- output the system refuses --

def test_fmt_that_cannot_write_leaves_the_file_as_it_was(spec, tmp_path):
    text = "service s { vip 192.0.2.1\n listen tcp 80 pool p { backend b 10.0.0.1 }\n forward tcp 80 to p }\n"
    path = spec(text)
    done = limited(["fmt", path], 64)
    assert done.returncode == 2 and path in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["spec.lbspec"] and open(path).read() == text


@pytest.mark.parametrize("argv", [["check", "--format", "json", str(EXAMPLES / "api.lbspec")],
                                  ["check", str(EXAMPLES / "api.lbspec")], ["properties", "-v"]])
def test_output_to_a_file_that_cannot_take_it_exits_2_without_a_traceback(tmp_path, argv):
    with open(tmp_path / "out", "w") as out:
        done = limited(argv, 256, stdout=out, stderr=subprocess.PIPE)
    assert done.returncode == 2 and done.stderr.strip() and "Traceback" not in done.stderr, done.stderr
