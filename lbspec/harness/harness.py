"""The harness: traces from the spec, played by a driver, judged by the monitor, shrunk by hypothesis.

:class:`Harness` binds a spec (and optionally the services and properties
that count) to search settings and an artifacts directory:

* :meth:`Harness.run` plays one trace and returns the monitor's
  :class:`~lbspec.harness.judge.Judgement`;
* :meth:`Harness.verify` does the same and raises :class:`Failure` on a
  violation;
* :meth:`Harness.check` searches with hypothesis (``lbspec.strategies.traffic``
  unless told otherwise) and :meth:`Harness.check_stateful` with the state
  machine; on a violation hypothesis shrinks the trace, the minimal one is
  written as captures with the ``lbspec monitor`` command that judges them,
  the command is run to confirm it reproduces the verdict, and
  :class:`Failure` says all of it.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbspec.diagnostics import did_you_mean
from lbspec.harness.adapter import Driver
from lbspec.harness.artifacts import Artifacts, replay, write_recording, write_summary
from lbspec.harness.inprocess import InProcess, LoadBalancerError
from lbspec.harness.judge import Judgement, judge
from lbspec.harness.reduce import reduce_trace
from lbspec.harness.trace import Trace
from lbspec.semantics.model import Spec

__all__ = ["Harness", "SearchSettings", "Failure", "Violation", "Search", "PerTrace", "as_driver", "check_names",
           "safe_name"]

FAST_EXAMPLES = 100
SHRINK_BUDGET = 200  # traces hypothesis may play shrinking a failure (lbspec's reduction has its own)


@dataclass(frozen=True)
class SearchSettings:
    """How hard to search: examples (traces tried before shrinking), the seed, and trace sizes."""

    examples: int = FAST_EXAMPLES
    seed: int | None = None  # None: a fresh seed per search, printed on failure
    max_steps: int = 20  # steps of one generated trace (lbspec.strategies.traffic)
    stateful_steps: int = 20  # rules of one state machine run
    shrink_budget: int = SHRINK_BUDGET  # traces played shrinking a failure, then the smallest so far stands

    def __post_init__(self) -> None:
        if self.examples < 1:
            raise ValueError(f"examples must be at least 1, not {self.examples}")
        if self.shrink_budget < 0:
            raise ValueError(f"shrink_budget must be at least 0, not {self.shrink_budget}")

    def hypothesis(self, seed: int):
        """The hypothesis settings of a search (no database: the seed and the captures replay it)."""
        from hypothesis import HealthCheck, Phase, Verbosity, settings

        return settings(max_examples=self.examples, deadline=None, database=None, derandomize=False,
                        report_multiple_bugs=False, print_blob=False, verbosity=Verbosity.quiet,
                        stateful_step_count=self.stateful_steps,
                        phases=(Phase.explicit, Phase.generate, Phase.target, Phase.shrink),
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                               HealthCheck.filter_too_much])


class ShrinkBudgetSpent(BaseException):
    """Raised inside a search when shrinking has played its budget of traces.

    A ``BaseException``, as ``KeyboardInterrupt`` is: hypothesis takes any
    ``Exception`` for a failure to shrink, and lets this one end the search.
    """


class Violation(Exception):
    """Raised inside a search when a trace breaks the spec (hypothesis shrinks on it)."""

    def __init__(self, trace: Trace, judgement: Judgement):
        super().__init__(f"{', '.join(judgement.codes)} on a trace of {len(trace)} events")
        self.trace = trace
        self.judgement = judgement


@dataclass
class Search:
    """What a search did: the seed, the traces run, and the sizes of the first and the minimal failing trace.

    Every trace is played once: one met again (hypothesis reaches the same
    trace from other choices, and replays the failure it reports) gets the
    verdict it got.  Once ``shrink_budget`` traces have been played after the
    first failure, the next trace not played yet stops the search, and the
    smallest failure so far is the one reported.
    """

    seed: int
    shrink_budget: int = SHRINK_BUDGET
    runs: int = 0  # traces judged, played or remembered
    first_failure: int | None = None  # the run that first failed
    first_size: int | None = None  # events in the first failing trace
    shrunk_size: int | None = None  # events in the trace hypothesis shrank it to (before trace reduction)
    shrink_stopped: bool = False  # the budget ran out before hypothesis had shrunk the failure all it could
    smallest: Violation | None = None  # the shortest failing trace played so far
    minimal: Violation | None = None
    played: dict[Trace, Violation | None] = field(default_factory=dict, repr=False)  # each trace played
    played_to_failure: int | None = None  # traces played up to the first failure

    def record(self, trace: Trace, violation: Violation | None) -> None:
        self.runs += 1
        self.played[trace] = violation
        if violation is None:
            return
        if self.first_failure is None:
            self.first_failure, self.first_size, self.played_to_failure = self.runs, len(trace), len(self.played)
        if self.smallest is None or _size(trace) < _size(self.smallest.trace):
            self.smallest = violation

    @property
    def spent(self) -> bool:
        """Has shrinking played all the traces it may?"""
        return self.played_to_failure is not None and len(self.played) - self.played_to_failure >= self.shrink_budget


class Failure(AssertionError):
    """A load balancer broke the spec: the verdicts, the minimal trace, its captures and the replay command."""

    def __init__(self, message: str, trace: Trace, judgement: Judgement, artifacts: Artifacts,
                 replayed: tuple[int, list[str], str], search: Search | None):
        super().__init__(message)
        self.trace, self.judgement, self.artifacts = trace, judgement, artifacts
        self.replayed, self.search = replayed, search

    @property
    def codes(self) -> list[str]:
        return self.judgement.codes

    @property
    def reproduced(self) -> bool:
        code, found, _err = self.replayed
        return code == 1 and set(found) == {v.code for v in self.judgement.report.violations}


def _is_driver(thing: Any) -> bool:
    return hasattr(thing, "run") and not hasattr(thing, "handle") and not isinstance(thing, type)


class PerTrace:
    """A driver that makes what it drives anew for every trace: ``factory()`` returns a load balancer
    (driven in process) or a driver."""

    def __init__(self, factory: Callable[[], Any]):
        self.factory = factory

    def run(self, spec: Spec, trace: Trace, services: tuple[str, ...] | None = None):
        made = self.factory()
        return (made if _is_driver(made) else InProcess(made)).run(spec, trace, services)


def as_driver(lb: Any) -> Driver:
    """A driver for ``lb``: a driver as is, a load balancer in process, a factory of either anew per trace."""
    if _is_driver(lb):
        return lb
    if hasattr(lb, "handle") and not isinstance(lb, type):
        return InProcess(lb)
    if callable(lb):
        return PerTrace(lb)
    raise TypeError(f"expected a load balancer (with handle(packet, time)), a driver (with run(spec, trace, "
                    f"services)) or a callable making one, not {lb!r}")


def _fresh(lb: Any) -> Driver:
    """A driver that makes a fresh LB for each trace (a search must not share state between traces)."""
    if hasattr(lb, "handle") and not isinstance(lb, type):
        raise TypeError(f"a search plays many traces, each against a fresh load balancer: pass a class or a "
                        f"callable that makes one (e.g. `lambda: {type(lb).__name__}(...)`), not the instance {lb!r}")
    return as_driver(lb)


@dataclass
class Harness:
    """Drives load balancers with traffic from ``spec`` and judges them; see the module docstring."""

    spec: Spec
    path: str | os.PathLike | None = None  # the spec file, for the replay command
    services: tuple[str, ...] | None = None
    properties: tuple[str, ...] | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    artifacts: str | os.PathLike | None = None  # default: a new temporary directory per failure

    def __repr__(self) -> str:
        where = f"{os.fspath(self.path)!r}" if self.path is not None else f"{len(self.spec.services)} services"
        return (f"Harness({where}, services={self.services}, properties={self.properties}, "
                f"examples={self.search.examples}, seed={self.search.seed})")

    def __post_init__(self) -> None:
        if isinstance(self.spec, (str, os.PathLike)):
            import lbspec

            self.path, self.spec = self.spec, lbspec.load(self.spec)
        self.services = tuple(self.services) if self.services else None
        self.properties = tuple(self.properties) if self.properties else None
        check_names(self.spec, self.services, self.properties)

    # ----------------------------------------------------------------- runs --

    def run(self, lb: Any, trace: Trace) -> Judgement:
        """Play ``trace`` against ``lb`` (an LB, a factory of LBs, or a driver) and judge what crossed it."""
        __tracebackhide__ = True
        return self._judgement(as_driver(lb), trace)

    def _judgement(self, driver: Driver, trace: Trace) -> Judgement:
        """Play ``trace`` with ``driver`` and judge it; a load balancer's misbehaviour is shown from the test."""
        __tracebackhide__ = True
        try:
            recording = driver.run(self.spec, trace, self.services)
        except LoadBalancerError as error:
            raise error.with_traceback(None) from error.__cause__  # lbspec's frames say nothing about the LB
        return judge(self.spec, recording, self.services, self.properties)

    def verify(self, lb: Any, trace: Trace) -> Judgement:
        """:meth:`run`, raising :class:`Failure` (with captures and the replay command) on a violation."""
        __tracebackhide__ = True
        judgement = self.run(lb, trace)
        if judgement.failed:
            raise self.failure(Violation(trace, judgement), None)
        return judgement

    # ------------------------------------------------------------- searches --

    def check(self, lb: Any, traffic=None) -> Search:
        """Search for a trace ``lb`` fails on (default strategy: ``lbspec.strategies.traffic``)."""
        __tracebackhide__ = True
        from hypothesis import given, seed

        from lbspec.strategies import traffic as default_traffic

        driver = _fresh(lb)
        strategy = traffic if traffic is not None else default_traffic(
            self.spec, service=self.services, max_steps=self.search.max_steps)
        search = self._search()

        @seed(search.seed)
        @self.search.hypothesis(search.seed)
        @given(strategy)
        def play(trace: Trace) -> None:
            __tracebackhide__ = True
            self._judged(driver, trace, search)

        return self._searching(play, search, driver)

    def check_stateful(self, lb: Any) -> Search:
        """Search with the state machine of ``lbspec.strategies.lb_machine``."""
        __tracebackhide__ = True
        from hypothesis import seed
        from hypothesis.stateful import run_state_machine_as_test

        from lbspec.strategies import lb_machine

        driver = _fresh(lb)
        search = self._search()
        machine = lb_machine(self.spec, lambda trace: self._judged(driver, trace, search), service=self.services)
        seeded = seed(search.seed)(machine)
        return self._searching(lambda: run_state_machine_as_test(
            seeded, settings=self.search.hypothesis(search.seed)), search, driver)

    def _search(self) -> Search:
        seed = self.search.seed if self.search.seed is not None else random.SystemRandom().randrange(1 << 32)
        return Search(seed, self.search.shrink_budget)

    def _judged(self, driver: Driver, trace: Trace, search: Search) -> None:
        __tracebackhide__ = True
        if trace in search.played:
            violation = search.played[trace]
        elif search.spent:
            raise ShrinkBudgetSpent()
        else:
            judgement = self._judgement(driver, trace)
            violation = Violation(trace, judgement) if judgement.failed else None
        search.record(trace, violation)
        if violation is not None:
            raise violation

    def _searching(self, run: Callable[[], None], search: Search, driver: Driver) -> Search:
        __tracebackhide__ = True
        from hypothesis.errors import HypothesisWarning

        try:
            with warnings.catch_warnings():  # hypothesis writes the failing trace out for a report this one replaces
                warnings.filterwarnings("ignore", "Generating overly large repr", HypothesisWarning)
                run()
        except Violation as violation:
            found = violation
        except ShrinkBudgetSpent:
            search.shrink_stopped, found = True, search.smallest
        else:
            return search
        search.shrunk_size = len(found.trace)
        search.minimal = self._readable(driver, self._reduced(driver, found))
        raise self.failure(search.minimal, search) from None

    def _reduced(self, driver: Driver, found: Violation) -> Violation:
        """Drop flows, faults and packets from the shrunk trace while its first verdict stays the same."""
        best = found

        def fails(trace: Trace) -> bool:
            nonlocal best
            violation = self._same_failure(driver, trace, found)
            best = violation or best
            return violation is not None

        reduce_trace(found.trace, fails)
        return best

    def _readable(self, driver: Driver, found: Violation) -> Violation:
        """The minimal trace with its flows numbered from 1 and its first event at t=0, if it fails the same
        way so (a load balancer's timers may see the time moved: then only its flows are renumbered)."""
        from lbspec.strategies import renumbered

        flows = renumbered(found.trace)
        for candidate in dict.fromkeys((flows.starting_at(0.0), flows)):
            if candidate == found.trace:
                return found
            violation = self._same_failure(driver, candidate, found)
            if violation is not None:
                return violation
        return found

    def _same_failure(self, driver: Driver, trace: Trace, found: Violation) -> Violation | None:
        """``trace``'s violation, if its first verdict has the code and property of ``found``'s."""
        judgement = self._judgement(driver, trace)
        if judgement.failed and _identity(judgement) == _identity(found.judgement):
            return Violation(trace, judgement)
        return None

    # -------------------------------------------------------------- failure --

    def failure(self, violation: Violation, search: Search | None) -> Failure:
        """Write the trace's captures, replay them, and build the :class:`Failure` that says it all."""
        directory = Path(self.artifacts) if self.artifacts is not None else Path(tempfile.mkdtemp(prefix="lbspec-"))
        artifacts = write_recording(directory, self._spec_file(directory), violation.judgement.recording,
                                    self.services or ())
        replayed = replay(artifacts)
        from lbspec.harness.report import failure_message

        message = failure_message(self.spec, violation.trace, violation.judgement, artifacts, replayed, search)
        (directory / "trace.txt").write_text(message + "\n", encoding="utf-8")
        write_summary(directory / "verdict.json", violation.trace, violation.judgement, artifacts, replayed, search)
        return Failure(message, violation.trace, violation.judgement, artifacts, replayed, search)

    def _spec_file(self, directory: Path) -> Path:
        if self.path is not None:
            return Path(self.path)
        main = next(iter(self.spec.sources), None)
        if main is not None and Path(main).is_file():
            return Path(main)
        copy = directory / "spec.lbspec"
        copy.write_text(self.spec.sources.get(main, ""), encoding="utf-8")
        return copy


def _size(trace: Trace) -> tuple[int, float]:
    return len(trace), trace.duration


def _identity(judgement: Judgement) -> tuple[str, str | None]:
    first = judgement.first
    return first.code, (first.data or {}).get("property")


def check_names(spec: Spec, services: Iterable[str] | None, properties: Iterable[str] | None) -> None:
    """Unknown services or properties are errors that name the bad value and what exists."""
    names = [s.name for s in spec.services]
    for name in services or ():
        if name not in names:
            raise ValueError(f"no service named {name!r} in the spec" + _hint(name, names))
    chosen = [s for s in spec.services if not services or s.name in services]
    checks = sorted({c.name for s in chosen for c in s.checks})
    for name in properties or ():
        if name not in checks:
            raise ValueError(f"no property {name!r} applies to {', '.join(s.name for s in chosen)}"
                             + _hint(name, checks) + f" (properties that apply: {', '.join(checks)})")


def _hint(name: str, candidates: list[str]) -> str:
    hint = did_you_mean(name, candidates)
    return f"; {hint}" if hint else ""


def safe_name(text: str, longest: int = 120) -> str:
    """A file name from a whole test id: ``tests/test_x.py::test_y[a]`` -> ``tests-test_x.py-test_y-a``.

    Tests of the same name in other directories, or with a ``/`` in their
    parameters, get names of their own; a name too long for a file system
    is cut and ends with a digest of the id.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "lbspec"
    if len(name) <= longest:
        return name
    return f"{name[:longest - 13]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
