"""`lbspec import` on the command line, through lbspec.cli.main: options, output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lbspec

from importing import CONFIGS, cli

LAB = str(CONFIGS / "haproxy" / "lab-tcp-checks.cfg")
UNREPRESENTED = str(CONFIGS / "haproxy" / "unrepresented.cfg")


def test_help_lists_the_kinds_and_exit_codes():
    done = cli("import", "--help")
    assert done.code == 0
    for word in ("haproxy", "nginx", "nftables", "k8s", "--output", "--service-name", "--vip", "Exit"):
        assert word in done.out


def test_fully_represented_config_exits_0_and_prints_a_loadable_spec():
    done = cli("import", "haproxy", LAB)
    assert done.code == 0
    spec = lbspec.loads(done.out)
    assert [s.name for s in spec.services] == ["lab"]
    assert "LB301" not in done.err


def test_unrepresented_settings_exit_1_with_warnings():
    done = cli("import", "haproxy", UNREPRESENTED)
    assert done.code == 1
    assert "warning[LB301]" in done.err and "unrepresented.cfg:8:" in done.err
    assert "# not represented:" in done.out
    lbspec.loads(done.out)


def test_quiet_keeps_the_comments_and_the_exit_code():
    done = cli("import", "haproxy", UNREPRESENTED, "--quiet")
    assert done.code == 1 and "LB301" not in done.err and "# not represented:" in done.out


def test_output_is_canonical(tmp_path):
    done = cli("import", "haproxy", LAB, "-o", str(tmp_path / "lab.lbspec"))
    assert done.code == 0 and done.out == ""
    assert cli("fmt", "--check", str(tmp_path / "lab.lbspec")).code == 0
    assert cli("check", str(tmp_path / "lab.lbspec")).code in (0, 1)  # loads: not exit 2


def test_output_file_replaces_the_old_one(tmp_path):
    target = tmp_path / "out.lbspec"
    target.write_text("old")
    assert cli("import", "haproxy", LAB, "--output", str(target)).code == 0
    assert target.read_text().startswith("# Imported from")


@pytest.mark.parametrize("umask, existing, mode", [(0o002, None, 0o664), (0o077, None, 0o600), (0o077, 0o644, 0o644)])
def test_output_file_permissions_are_a_new_file_s_or_the_old_one_s(tmp_path, umask, existing, mode):
    """As a shell's `>` gives them: a new file's from the umask (a temporary file's are 0600), an old one's
    kept."""
    target = tmp_path / "out.lbspec"
    if existing is not None:
        target.write_text("old")
        target.chmod(existing)
    before = os.umask(umask)
    try:
        assert cli("import", "haproxy", LAB, "-o", str(target)).code == 0
    finally:
        os.umask(before)
    assert target.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("target", ["missing/out.lbspec", "existing"])
def test_output_that_cannot_be_written_is_an_input_error_and_writes_nothing(tmp_path, target):
    (tmp_path / "existing").mkdir()
    done = cli("import", "haproxy", LAB, "--vip", "192.0.2.5", "-o", str(tmp_path / target))
    assert done.code == 2 and done.out == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]


def test_service_name(tmp_path):
    done = cli("import", "haproxy", LAB, "--service-name", "edge")
    assert done.code == 0 and [s.name for s in lbspec.loads(done.out).services] == ["edge"]
    several = cli("import", "nginx", str(CONFIGS / "nginx" / "lab-stream.conf"), "--service-name", "edge")
    assert several.code == 2 and "names one service" in several.err
    bad = cli("import", "haproxy", LAB, "--service-name", "9lives")
    assert bad.code == 2 and "not a name" in bad.err


def test_vip_option_is_checked():
    done = cli("import", "haproxy", LAB, "--vip", "not-an-address")
    assert done.code == 2 and "not an IP address" in done.err


def test_unknown_kind_is_a_usage_error():
    assert cli("import", "f5", LAB).code == 2


def test_json_warnings():
    done = cli("import", "haproxy", UNREPRESENTED, "--format", "json")
    assert done.code == 1
    document = json.loads(done.err)
    assert document["services"] == ["www"]
    assert {d["code"] for d in document["diagnostics"]} == {"LB301"}
    assert all(d["span"]["file"] == UNREPRESENTED for d in document["diagnostics"] if d["span"])


def test_json_files_are_the_entries_of_output_md():
    path = str(CONFIGS / "nginx" / "lab-stream.conf")
    document = json.loads(cli("import", "nginx", path, "--format", "json").err)
    assert document["services"] == ["tcp_app", "udp_echo"]
    assert document["files"] == [{"file": path, "ok": True, "services": document["services"],
                                  "summary": document["summary"]}]
    failed = json.loads(cli("import", "nginx", LAB, "--format", "json").err)
    assert failed["files"] == [{"file": LAB, "ok": False, "services": [], "summary": failed["summary"]}]


def test_json_errors(tmp_path):
    path = tmp_path / "bad.cfg"
    path.write_text("frontend f\n    bind\n")
    done = cli("import", "haproxy", str(path), "--format", "json")
    assert done.code == 2
    (diagnostic,) = json.loads(done.err)["diagnostics"]
    assert diagnostic["code"] == "LB300" and diagnostic["span"]["line"] == 2


@pytest.mark.parametrize("kind, name", [("haproxy", "lab-tcp-nocheck.cfg"), ("nginx", "lab-stream.conf"),
                                        ("nftables", "lab-dnat.json"), ("k8s", "lab-clusterip.yaml")])
def test_every_importer_round_trips_through_fmt(tmp_path, kind, name):
    target = tmp_path / "imported.lbspec"
    assert cli("import", kind, str(CONFIGS / kind / name), "-o", str(target)).code in (0, 1)
    assert cli("fmt", "--check", str(target)).code == 0


def test_the_command_module_loads_no_parser_library():
    """Every `lbspec` command builds its command line with this module: it loads no importer (a few ms each
    command) and no parser library."""
    code = ("import sys, lbspec.cli; lbspec.cli._build_parser(sys.stdout); "
            "print(sorted(m for m in ('crossplane', 'yaml', 'lbspec.importers.draft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
