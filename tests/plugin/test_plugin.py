"""The plugin's options, ini settings, marker, fixtures and error messages, run through pytester."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

import lbspec.runtime.session  # noqa: F401  (numpy loaded once; pytester's in-process runs unload modules)
from lbspec.harness import SearchSettings
from lbspec.harness.harness import SHRINK_BUDGET

from conftest import EXAMPLES, MINIMAL

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR

SHOW_SETTINGS = """
import json

def test_show(lb_harness, lbspec_spec):
    search = lb_harness.search
    print("SETTINGS" + json.dumps({"service": lbspec_spec.services[0].name, "examples": search.examples,
          "steps": search.max_steps, "seed": search.seed, "artifacts": str(lb_harness.artifacts),
          "shrink_budget": search.shrink_budget,
          "properties": lb_harness.properties, "services": lb_harness.services}))
"""


@pytest.fixture
def spec_file(pytester):
    pytester.makefile(".lbspec", service=MINIMAL)
    return pytester.path / "service.lbspec"


def shown(result) -> dict:
    return json.loads(re.search(r"SETTINGS(\{.*\})", result.stdout.str()).group(1))


# ----------------------------------------------------------------- options --

def test_the_options_are_in_an_lbspec_group(pytester):
    result = pytester.runpytest("--help")
    text = result.stdout.str()
    assert "lbspec:" in text
    for option in ("--lbspec=SPEC", "--lbspec-examples=N", "--lbspec-seed=N", "--lbspec-artifacts=DIR",
                   "--lbspec-shrink-budget=N"):
        assert option in text
    for ini in ("lbspec_spec", "lbspec_examples", "lbspec_seed", "lbspec_artifacts", "lbspec_shrink_budget"):
        assert ini in text
    assert f"default: {SHRINK_BUDGET};" in text  # the help says the harness's default


def test_the_marker_is_registered(pytester):
    result = pytester.runpytest("--markers")
    assert any(line.startswith("@pytest.mark.lbspec(") for line in result.outlines)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("service.lbspec")
        def test_marked():
            pass
    """)
    pytester.makefile(".lbspec", service=MINIMAL)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_the_fast_profile_by_default(pytester, spec_file):
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    result = pytester.runpytest("-s", "--lbspec", str(spec_file))
    result.assert_outcomes(passed=1)
    found = shown(result)
    assert (found["service"], found["examples"], found["steps"], found["seed"]) == (
        "s", SearchSettings().examples, SearchSettings().max_steps, None)
    assert found["artifacts"].endswith("/lbspec") and "test_show" in found["artifacts"]  # the test's tmp_path
    assert (found["properties"], found["services"]) == (None, None)
    assert found["shrink_budget"] == SHRINK_BUDGET


def test_options_choose_the_thorough_profile_a_seed_and_an_artifacts_directory(pytester, spec_file):
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    out = pytester.path / "out"
    found = shown(pytester.runpytest("-s", "--lbspec", str(spec_file), "--lbspec-examples", "500",
                                     "--lbspec-seed", "7", "--lbspec-artifacts", str(out),
                                     "--lbspec-shrink-budget", "0"))
    assert (found["examples"], found["seed"], found["shrink_budget"]) == (500, 7, 0)
    assert found["steps"] > SearchSettings().max_steps  # thorough: longer traces too
    assert found["artifacts"] == str(out.resolve() / "test_show.py-test_show")


def test_ini_settings_mean_what_the_options_mean(pytester, spec_file):
    pytester.makeini("""
        [pytest]
        lbspec_spec = service.lbspec
        lbspec_examples = 321
        lbspec_seed = 11
        lbspec_artifacts = failures
        lbspec_shrink_budget = 25
    """)
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    found = shown(pytester.runpytest("-s"))
    assert (found["service"], found["examples"], found["seed"], found["shrink_budget"]) == ("s", 321, 11, 25)
    assert found["artifacts"] == str((pytester.path / "failures").resolve() / "test_show.py-test_show")


def test_options_win_over_ini_settings(pytester, spec_file):
    pytester.makeini("""
        [pytest]
        lbspec_examples = 321
        lbspec_seed = 11
    """)
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    found = shown(pytester.runpytest("-s", "--lbspec", str(spec_file), "--lbspec-seed", "12"))
    assert (found["examples"], found["seed"]) == (321, 12)


def test_the_marker_chooses_spec_properties_services_examples_and_seed(pytester):
    (pytester.path / "specs").mkdir()
    (pytester.path / "specs" / "web.lbspec").write_text(MINIMAL)
    marker = ('@pytest.mark.lbspec("specs/web.lbspec", properties=["no_drop", "flow_affinity"], service="s", '
              'examples=40, seed=3, shrink_budget=9)\n')
    pytester.makepyfile("import pytest\n" + SHOW_SETTINGS.replace("def test_show", marker + "def test_show"))
    result = pytester.runpytest("-s", "--lbspec-shrink-budget", "50")  # the marker wins over the option
    result.assert_outcomes(passed=1)
    found = shown(result)
    assert (found["service"], found["examples"], found["seed"], found["shrink_budget"]) == ("s", 40, 3, 9)
    assert (found["properties"], found["services"]) == (["no_drop", "flow_affinity"], ["s"])


def test_a_marker_path_is_relative_to_the_test_file(pytester):
    sub = pytester.mkpydir("suite")
    (sub / "here.lbspec").write_text(MINIMAL)
    (sub / "test_here.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.lbspec("here.lbspec")
        def test_here(lbspec_spec):
            assert lbspec_spec.services[0].name == "s"
    """))
    pytester.runpytest().assert_outcomes(passed=1)


DROPPING_TESTS = """
import pytest
from ipaddress import ip_address
from lbspec.harness import Segment, Send, Trace

class Drop:
    def handle(self, packet, time):
        return []

SYN = Trace((Send(0.0, Segment("tcp", ip_address("198.51.100.1"), ip_address("192.0.2.1"), 1024, 80,
                              frozenset({"syn"}))),))

@pytest.mark.parametrize("where", ["east/a", "west/a"])
def test_drop(lb_harness, where):
    lb_harness.verify(Drop(), SYN)
"""


def test_every_failing_test_keeps_its_own_artifacts(pytester, spec_file):
    for folder in ("one", "two"):
        pytester.mkpydir(folder).joinpath("test_same.py").write_text(DROPPING_TESTS)
    out = pytester.path / "out"
    result = pytester.runpytest("--lbspec", str(spec_file), "--lbspec-artifacts", str(out), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    verdicts = [json.loads(path.read_text()) for path in out.glob("*/verdict.json")]
    assert [v["code"] for v in verdicts] == ["LB200"] * 4



def test_a_long_test_id_gives_a_short_artifacts_name_of_its_own():
    from lbspec.harness.harness import safe_name

    ids = [f"tests/test_x.py::test_y[{'a' * 300}{n}]" for n in range(2)]
    names = {safe_name(i) for i in ids}
    assert len(names) == 2 and all(len(n) <= 120 for n in names)


def test_hypothesis_can_load_the_lbspec_profiles_by_name(pytester):
    pytester.makepyfile("""
        from hypothesis import given, settings, strategies as st

        @given(st.integers())
        def test_profile(n):
            assert settings().max_examples == 7
    """)
    result = pytester.runpytest_subprocess("--hypothesis-profile", "lbspec-thorough", "--lbspec-examples", "7",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)

# ------------------------------------------------------------------ errors --

def assert_usage_error(result, *expected: str) -> None:
    assert result.ret == USAGE_ERROR
    text = result.stderr.str() + result.stdout.str()
    assert "Traceback" not in text
    for item in expected:
        assert item in text, text


def test_a_missing_spec_file_is_a_usage_error_naming_LB000(pytester):
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest("--lbspec", "nowhere.lbspec"), "LB000", "nowhere.lbspec")


def test_a_spec_with_a_syntax_error_is_a_usage_error_naming_its_code_and_line(pytester):
    pytester.makefile(".lbspec", broken=MINIMAL.replace("listen tcp 80", "listen tcp 80 ;"))
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest("--lbspec", "broken.lbspec"), "LB002", "broken.lbspec:3:")


def test_a_spec_without_a_service_is_a_usage_error_naming_LB026(pytester):
    pytester.makefile(".lbspec", properties='property p "t" {\n    never forward twice\n}\n')
    pytester.makepyfile("def test_a(lb_harness): pass")
    assert_usage_error(pytester.runpytest("--lbspec", "properties.lbspec"), "LB026", "properties.lbspec")


def test_a_marker_naming_a_bad_spec_is_a_usage_error_at_collection(pytester):
    pytester.makefile(".lbspec", unresolved=MINIMAL.replace("to p", "to q"))
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("unresolved.lbspec")
        def test_a(lbspec_spec):
            pass
    """)
    assert_usage_error(pytester.runpytest(), "LB020", "test_a")


def test_a_marker_naming_a_missing_spec_is_a_usage_error(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("missing.lbspec")
        def test_a():
            pass
    """)
    assert_usage_error(pytester.runpytest(), "LB000", "missing.lbspec")


def test_an_unknown_property_is_a_usage_error_with_a_suggestion(pytester, spec_file):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("service.lbspec", properties=["flow_afinity"])
        def test_a():
            pass
    """)
    assert_usage_error(pytester.runpytest(), "flow_afinity", "flow_affinity")


def test_an_unknown_marker_argument_is_a_usage_error(pytester, spec_file):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("service.lbspec", propertys=["no_drop"])
        def test_a():
            pass
    """)
    assert_usage_error(pytester.runpytest(), "propertys", "properties")


def test_an_unknown_service_is_a_usage_error(pytester, spec_file):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("service.lbspec", service="web")
        def test_a():
            pass
    """)
    assert_usage_error(pytester.runpytest(), "'web'")


@pytest.mark.parametrize("argument", ["properties", "service"])
def test_an_empty_list_of_names_is_a_usage_error_not_all_of_them(pytester, spec_file, argument):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.lbspec("service.lbspec", {argument}=[])
        def test_a():
            pass
    """)
    assert_usage_error(pytester.runpytest(), argument)


@pytest.mark.parametrize("value", ["many", "0"])
def test_a_bad_example_count_is_a_usage_error(pytester, value):
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest("--lbspec-examples", value), "--lbspec-examples", value)


@pytest.mark.parametrize("value", ["some", "-1"])
def test_a_bad_shrink_budget_is_a_usage_error(pytester, value):
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest("--lbspec-shrink-budget", value), "--lbspec-shrink-budget", value)


def test_a_bad_shrink_budget_in_a_marker_is_a_usage_error(pytester, spec_file):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lbspec("service.lbspec", shrink_budget=-5)
        def test_a(lb_harness):
            pass
    """)
    assert_usage_error(pytester.runpytest(), "shrink_budget", "-5")


def test_a_bad_seed_in_the_ini_file_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nlbspec_seed = soon\n")
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest(), "lbspec_seed", "soon")


def test_an_artifacts_directory_that_cannot_be_made_is_a_usage_error(pytester):
    (pytester.path / "taken").write_text("a file, not a directory")
    pytester.makepyfile("def test_a(): pass")
    assert_usage_error(pytester.runpytest("--lbspec-artifacts", "taken"), "--lbspec-artifacts", "taken")


def test_a_fixture_without_any_spec_fails_the_test_saying_how_to_give_one(pytester):
    pytester.makepyfile("def test_a(lb_harness): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    text = result.stdout.str()
    assert "--lbspec" in text and "@pytest.mark.lbspec" in text
    assert "Traceback" not in text and "def _resolve" not in text


# ------------------------------------------------------------------- cost --

HEAVY = ("z3", "scapy", "numpy", "hypothesis", "lark")


def test_importing_the_plugin_imports_nothing_heavy():
    code = ("import sys, lbspec.pytest_plugin; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


def test_a_run_that_does_not_use_the_plugin_loads_no_z3_scapy_or_numpy(pytester):
    pytester.makepyfile("""
        import sys

        def test_light(request):
            assert request.config.pluginmanager.has_plugin("lbspec")  # registered through pytest11
            assert not {"z3", "scapy", "numpy"} & {m.split(".")[0] for m in sys.modules}
    """)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_example_spec_is_in_canonical_layout_and_checks_clean(cli):
    path = str(EXAMPLES / "pylb" / "service.lbspec")
    assert cli("fmt", "--check", path).code == 0
    assert cli("check", path).code == 0
