"""The plugin on the reference load balancers (examples/pylb), run by pytester as a user would run it.

The correct balancer passes; every buggy variant fails with the verdict code
its bug earns, on a trace shrunk to a handful of events, and the captures
written for it make ``lbspec monitor`` report that verdict again.
"""

from __future__ import annotations

import io
import json
import shutil
import struct

import pytest

import lbspec.runtime.session  # noqa: F401  (numpy and the monitor, loaded once: pytester's in-process runs
from lbspec.cli import main          # unload what they import, and numpy cannot be loaded twice)
from lbspec.harness.harness import safe_name

from conftest import EXAMPLES, example_pylb

_REFERENCE = example_pylb("reference_pylb")
EXPECTED, VARIANTS = _REFERENCE.EXPECTED, _REFERENCE.VARIANTS

# The longest minimal trace each variant may fail on (events): one flow and the faults that expose the bug;
# for table-full, one flow more than the spec's capacity (8), or a full table and a failure that makes a flow
# look for a new backend.
LONGEST = {"no-tracking": 5, "modulo-hash": 5, "stale-flows": 3, "table-full": 10, "ipv6-replies": 1,
           "source-port": 1}
SEED = "1"

VARIANT_TESTS = """
import pytest
from pylb import VARIANTS

@pytest.mark.lbspec("pylb/service.lbspec")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant(lb_harness, lbspec_spec, name):
    lb_harness.check(lambda: VARIANTS[name](lbspec_spec.service("pylb")))
"""


@pytest.fixture
def project(pytester):
    shutil.copytree(EXAMPLES / "pylb", pytester.path / "pylb", ignore=shutil.ignore_patterns("__pycache__"))
    return pytester


def test_the_correct_balancer_passes_both_searches(project):
    result = project.runpytest("pylb", "--lbspec-seed", SEED, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def _verdict(artifacts, name: str) -> dict:
    folder = artifacts / safe_name(f"test_variants.py::test_variant[{name}]")
    return json.loads((folder / "verdict.json").read_text())


def _replayed(verdict: dict) -> tuple[int, set[str]]:
    """What `lbspec monitor` says about the captures of a failure (run through lbspec.cli.main)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([*verdict["argv"], "--format", "json"], out, err)
    return code, {d["code"] for d in json.loads(out.getvalue())["diagnostics"] if d["severity"] == "error"}


def _is_pcap(path: str) -> bool:
    with open(path, "rb") as capture:
        return struct.unpack("<I", capture.read(4))[0] == 0xA1B2C3D4


def test_every_variant_fails_with_its_verdict_on_a_short_trace_that_replays(project):
    project.makepyfile(test_variants=VARIANT_TESTS)
    artifacts = project.path / "artifacts"
    result = project.runpytest("test_variants.py", "-p", "no:cacheprovider", "--lbspec-seed", SEED,
                               "--lbspec-artifacts", str(artifacts))
    result.assert_outcomes(failed=len(VARIANTS))
    output = result.stdout.str()
    for name in sorted(VARIANTS):
        verdict = _verdict(artifacts, name)
        assert verdict["code"] == EXPECTED[name], (name, verdict["codes"], verdict["trace"]["lines"])
        assert verdict["trace"]["events"] <= LONGEST[name], (name, verdict["trace"]["lines"])
        assert f"[{EXPECTED[name]}]" in output  # the report shows the verdict as `error[LB2xx]`
        assert _is_pcap(verdict["captures"]["client"]) and _is_pcap(verdict["captures"]["backend"])
        assert verdict["command"].startswith("lbspec monitor ")
        code, codes = _replayed(verdict)
        assert code == 1 and EXPECTED[name] in codes, (name, code, codes)
        assert codes == set(verdict["replay"]["codes"]) == set(verdict["codes"]), name


STATEFUL_TEST = """
import pytest
from pylb import VARIANTS

@pytest.mark.lbspec("pylb/service.lbspec")
def test_no_tracking(lb_harness, lbspec_spec):
    lb_harness.check_stateful(lambda: VARIANTS["no-tracking"](lbspec_spec.service("pylb")))
"""


def test_the_state_machine_catches_flows_that_move_when_their_backend_comes_back(project):
    """The bug needs a flow to talk while its backend is down and after it is back, each change noticed."""
    project.makepyfile(test_stateful=STATEFUL_TEST)
    artifacts = project.path / "artifacts"
    result = project.runpytest("test_stateful.py", "-p", "no:cacheprovider", "--lbspec-seed", SEED,
                               "--lbspec-artifacts", str(artifacts))
    result.assert_outcomes(failed=1)
    verdict = json.loads((artifacts / "test_stateful.py-test_no_tracking" / "verdict.json").read_text())
    assert verdict["code"] == EXPECTED["no-tracking"]
    assert verdict["trace"]["events"] <= LONGEST["no-tracking"], verdict["trace"]["lines"]
    assert verdict["replay"]["exit_code"] == 1 and EXPECTED["no-tracking"] in verdict["replay"]["codes"]
