"""The pytest plugin: test a load balancer against a spec with generated traffic and faults.

Registered through the ``pytest11`` entry point.  It imports nothing heavy
(no z3, scapy, numpy or hypothesis) until a test asks for one of its
fixtures, so a pytest run that does not use it pays nothing.

Options (group ``lbspec``), each with an ini setting of the same meaning:

============================  ========================  ============================================
option                        ini                       meaning
============================  ========================  ============================================
``--lbspec SPEC``             ``lbspec_spec``           the spec for tests whose marker names none
``--lbspec-examples N``       ``lbspec_examples``       the thorough profile: N traces per search
``--lbspec-seed N``           ``lbspec_seed``           a fixed seed (default: a fresh one, printed)
``--lbspec-artifacts DIR``    ``lbspec_artifacts``      where failing traces go (default: tmp_path)
``--lbspec-shrink-budget N``  ``lbspec_shrink_budget``  traces shrinking a failure may play (200)
============================  ========================  ============================================

Marker: ``@pytest.mark.lbspec("spec.lbspec", properties=[...], service=...)``.
Fixtures: ``lbspec_spec`` (the loaded spec), ``lb_harness`` (a
:class:`lbspec.harness.Harness` bound to it).  docs/plugin.md has the rest.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_sessionstart", "pytest_collection_modifyitems",
           "lbspec_spec", "lb_harness", "MARKER_ARGUMENTS"]

MARKER_ARGUMENTS = ("spec", "properties", "service", "examples", "seed", "shrink_budget")
FAST = {"examples": 100, "max_steps": 20, "stateful_steps": 20}
THOROUGH = {"max_steps": 30, "stateful_steps": 50}
PROFILE_PREFIX = "lbspec-"  # of the hypothesis profiles: lbspec-fast, lbspec-thorough
_LOADED = pytest.StashKey[dict]()
_SETTINGS = pytest.StashKey["_Options"]()


# ------------------------------------------------------------------ options --

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lbspec", "lbspec: test load balancers against a spec")
    group.addoption("--lbspec", dest="lbspec_spec", metavar="SPEC",
                    help="spec for tests whose @pytest.mark.lbspec names none (ini: lbspec_spec)")
    group.addoption("--lbspec-examples", dest="lbspec_examples", metavar="N",
                    help=f"search thoroughly: N traces per test and longer traces (default: the fast profile, "
                         f"{FAST['examples']} traces; ini: lbspec_examples)")
    group.addoption("--lbspec-seed", dest="lbspec_seed", metavar="N",
                    help="seed every search with N, to repeat a run (default: a fresh seed, printed on failure; "
                         "ini: lbspec_seed)")
    group.addoption("--lbspec-artifacts", dest="lbspec_artifacts", metavar="DIR",
                    help="write failing traces (pcaps, events, replay command) under DIR/<test> "
                         "(default: the test's tmp_path; ini: lbspec_artifacts)")
    group.addoption("--lbspec-shrink-budget", dest="lbspec_shrink_budget", metavar="N",
                    help="play at most N traces shrinking a failure, then report the smallest so far "
                         "(default: 200; 0 reports the first failure as found; ini: lbspec_shrink_budget)")
    parser.addini("lbspec_spec", "spec for tests whose @pytest.mark.lbspec names none (relative to the ini file)")
    parser.addini("lbspec_examples", "traces per search: set it to search thoroughly")
    parser.addini("lbspec_seed", "seed of every search")
    parser.addini("lbspec_artifacts", "directory for failing traces (relative to the ini file)")
    parser.addini("lbspec_shrink_budget", "traces shrinking a failure may play")


@dataclass(frozen=True)
class _Options:
    spec: Path | None
    examples: int | None
    seed: int | None
    artifacts: Path | None
    shrink_budget: int | None


def _value(config: pytest.Config, name: str) -> tuple[str | None, Path]:
    """An option's value and the directory a relative path in it is relative to."""
    given = config.getoption(f"lbspec_{name}")
    if given is not None:
        return str(given), Path(config.invocation_params.dir)
    ini = config.getini(f"lbspec_{name}")
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return (str(ini).strip() or None) if ini else None, base


def _named(name: str) -> str:
    """How a usage error names an option: ``--lbspec-shrink-budget (ini lbspec_shrink_budget)``."""
    return f"--lbspec-{name.replace('_', '-')} (ini lbspec_{name})"


def _number(config: pytest.Config, name: str, least: int) -> int | None:
    text, _base = _value(config, name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"{_named(name)} takes a whole number, not {text!r}") from None
    if value < least:
        raise pytest.UsageError(f"{_named(name)} must be at least {least}, not {value}")
    return value


def _path(config: pytest.Config, name: str) -> Path | None:
    text, base = _value(config, name)
    return None if text is None else (base / os.path.expanduser(text)).resolve()


def _directory(config: pytest.Config, name: str) -> Path | None:
    """A directory option, made now: one that cannot be made would lose a failure's captures at its end."""
    path = _path(config, name)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise pytest.UsageError(f"{_named(name)}: cannot make directory {path}: "
                                    f"{error.strerror or error}") from None
    return path


@pytest.hookimpl(tryfirst=True)  # before hypothesis's plugin loads --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lbspec(spec=None, *, properties=None, service=None, examples=None, seed=None, "
        "shrink_budget=None): test a load balancer against this spec (path relative to the test file), "
        "judging only these properties and services")
    config.stash[_SETTINGS] = _Options(_path(config, "spec"), _number(config, "examples", 1),
                                       _number(config, "seed", 0), _directory(config, "artifacts"),
                                       _number(config, "shrink_budget", 0))
    config.stash[_LOADED] = {}
    if _profiles_wanted(config):
        _register_profiles(config.stash[_SETTINGS])


def pytest_sessionstart(session: pytest.Session) -> None:
    options = session.config.stash[_SETTINGS]
    if options.spec is not None:
        _load(session.config, options.spec, "--lbspec")


# ------------------------------------------------------------------ markers --

def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Check every lbspec marker now: a bad spec or argument is a usage error, not a failing test."""
    for item in items:
        marker = item.get_closest_marker("lbspec")
        if marker is not None:
            _target(item, marker)


@dataclass(frozen=True)
class _Target:
    spec: Any
    path: Path
    properties: tuple[str, ...] | None
    services: tuple[str, ...] | None
    examples: int | None
    seed: int | None
    shrink_budget: int | None


def _target(item: pytest.Item, marker) -> _Target:
    where = f"{item.nodeid}: @pytest.mark.lbspec"
    arguments = dict(zip(MARKER_ARGUMENTS, marker.args))
    if len(marker.args) > 1:
        raise pytest.UsageError(f"{where} takes one positional argument (the spec), not {len(marker.args)}")
    for key, value in marker.kwargs.items():
        if key not in MARKER_ARGUMENTS[1:]:
            from lbspec.diagnostics import did_you_mean

            hint = did_you_mean(key, MARKER_ARGUMENTS[1:])
            raise pytest.UsageError(f"{where} got an unknown argument {key!r}" + (f"; {hint}" if hint else "")
                                    + f" (it takes: {', '.join(MARKER_ARGUMENTS)})")
        arguments[key] = value
    path = _marker_spec(item, arguments.get("spec"), where)
    spec = _load(item.config, path, where)
    target = _Target(spec, path, _names(arguments.get("properties"), "properties", where),
                     _names(arguments.get("service"), "service", where),
                     _positive(arguments.get("examples"), "examples", where, 1),
                     _positive(arguments.get("seed"), "seed", where, 0),
                     _positive(arguments.get("shrink_budget"), "shrink_budget", where, 0))
    _check(target, where)
    return target


def _marker_spec(item: pytest.Item, given: Any, where: str) -> Path:
    if given is None:
        found = item.config.stash[_SETTINGS].spec
        if found is None:
            raise pytest.UsageError(f"{where} names no spec, and neither --lbspec nor the lbspec_spec ini setting "
                                    "gives one: write @pytest.mark.lbspec(\"path/to/service.lbspec\")")
        return found
    if not isinstance(given, (str, os.PathLike)):
        raise pytest.UsageError(f"{where}: the spec must be a path, not {given!r}")
    path = Path(os.path.expanduser(os.fspath(given)))
    if path.is_absolute():
        return path
    beside = Path(item.path).parent / path
    return beside if beside.exists() else Path(item.config.rootpath) / path


def _names(value: Any, what: str, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple, set)) else None
    if not names or not all(isinstance(n, str) for n in names):  # an empty list would quietly mean "all"
        raise pytest.UsageError(f"{where}: {what}= takes a name or a list of names, not {value!r}")
    return names


def _positive(value: Any, what: str, where: str, least: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise pytest.UsageError(f"{where}: {what}= takes a whole number of at least {least}, not {value!r}")
    return value


def _check(target: _Target, where: str) -> None:
    from lbspec.harness.harness import check_names

    try:
        check_names(target.spec, target.services, target.properties)
    except ValueError as error:
        raise pytest.UsageError(f"{where}: {error}") from None


def _load(config: pytest.Config, path: Path, where: str):
    """The loaded spec (once per path and session), or a usage error that names the LB0xx code."""
    cache = config.stash[_LOADED]
    key = Path(path).resolve()
    if key not in cache:
        import lbspec

        try:
            cache[key] = _with_services(lbspec.load(key), key)
        except lbspec.SpecError as error:
            raise pytest.UsageError(f"{where}: {path} is not a usable spec:\n{_problems(error)}") from None
    return cache[key]


def _with_services(spec, path: Path):
    """``spec``, if it declares a service to send traffic to (else LB026, as `lbspec check` says)."""
    if spec.services:
        return spec
    from lbspec.diagnostics import SpecError
    from lbspec.loader import no_service

    raise SpecError([no_service(path)])


def _problems(error) -> str:
    lines = []
    for d in error.diagnostics:
        if d.severity.value != "error":
            continue
        place = f"{d.span.file}:{d.span.line}:{d.span.column}: " if d.span is not None and d.span.line else ""
        lines.append(f"  {place}error[{d.code}]: {d.message}" + (f" ({d.help})" if d.help else ""))
    return "\n".join(lines) or "  (no diagnostics)"


# ----------------------------------------------------------------- fixtures --

def _resolve(request: pytest.FixtureRequest) -> _Target:
    marker = request.node.get_closest_marker("lbspec")
    if marker is not None:
        return _target(request.node, marker)
    options = request.config.stash[_SETTINGS]
    if options.spec is None:
        pytest.fail("lbspec: no spec for this test: mark it @pytest.mark.lbspec(\"service.lbspec\"), "
                    "or run pytest --lbspec service.lbspec (or set lbspec_spec in the ini file)", pytrace=False)
    spec = _load(request.config, options.spec, "--lbspec")
    return _Target(spec, options.spec, None, None, None, None, None)


@pytest.fixture
def lbspec_spec(request: pytest.FixtureRequest):
    """The loaded spec (:class:`lbspec.Spec`) of this test: its marker's, else --lbspec's."""
    return _resolve(request).spec


@pytest.fixture
def lb_harness(request: pytest.FixtureRequest):
    """A :class:`lbspec.harness.Harness` for this test's spec, properties, services and search settings."""
    from lbspec.harness import Harness, SearchSettings

    target = _resolve(request)
    options = request.config.stash[_SETTINGS]
    examples = target.examples or options.examples
    profile = {**FAST, **(THOROUGH if examples else {}), **({"examples": examples} if examples else {})}
    seed = target.seed if target.seed is not None else options.seed
    budget = target.shrink_budget if target.shrink_budget is not None else options.shrink_budget
    if budget is not None:
        profile["shrink_budget"] = budget
    _register_profiles(options)
    return Harness(target.spec, path=target.path, services=target.services, properties=target.properties,
                   search=SearchSettings(seed=seed, **profile), artifacts=_artifacts(request, options))


def _artifacts(request: pytest.FixtureRequest, options: _Options) -> Path:
    from lbspec.harness.harness import safe_name

    if options.artifacts is not None:
        return options.artifacts / safe_name(request.node.nodeid)
    return request.getfixturevalue("tmp_path") / "lbspec"


def _profiles_wanted(config: pytest.Config) -> bool:
    """Register the profiles at start only when that costs nothing, or --hypothesis-profile asks for one."""
    asked = config.getoption("--hypothesis-profile", None)
    return "hypothesis" in sys.modules or str(asked).startswith(PROFILE_PREFIX)


def _register_profiles(options: _Options) -> None:
    """Name the two search profiles in hypothesis, for tests that use lbspec.strategies with @given."""
    from hypothesis import HealthCheck, settings

    common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
    settings.register_profile(f"{PROFILE_PREFIX}fast", max_examples=FAST["examples"], **common)
    settings.register_profile(f"{PROFILE_PREFIX}thorough", max_examples=options.examples or 200, **common)
