"""`lbspec check`: what a valid spec fails to guarantee.

For every service, every property it is held to is asked of the Z3 encoding
(lbspec.smt); every "may violate" answer comes with a witness that the
concrete evaluator replays before it becomes a finding.  Services are
independent, so they are checked in parallel.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from lbspec.check.findings import FinderOptions, ServiceFinder
from lbspec.check.witness import Witness
from lbspec.diagnostics import Diagnostic
from lbspec.semantics.model import Service, Spec
from lbspec.smt import DEFAULT_RLIMIT, SolverSettings

__all__ = ["CheckOptions", "check_spec", "check_service", "Witness"]


@dataclass(frozen=True)
class CheckOptions:
    timeout: float = 10.0  # seconds per solver query
    seed: int = 0
    explain: bool = False
    jobs: int = 0  # 0: one per CPU
    rlimit: int = DEFAULT_RLIMIT  # solver resource units per question

    def finder(self, spec: Spec) -> FinderOptions:
        return FinderOptions(SolverSettings(max(1, int(self.timeout * 1000)), self.seed, self.rlimit), self.explain,
                             frozenset(p.name for p in spec.properties if p.library))


def check_service(service: Service, options: FinderOptions = FinderOptions(),
                  done: Callable[[float], None] | None = None) -> list[Diagnostic]:
    return ServiceFinder(service, options).run(done)


_WORK: tuple[Spec, FinderOptions] | None = None


def _check_one(index: int) -> tuple[int, list[Diagnostic]]:
    spec, options = _WORK
    return index, check_service(spec.services[index], options)


def check_spec(spec: Spec, options: CheckOptions = CheckOptions(),
               progress: Callable[[int, int], None] | None = None) -> list[Diagnostic]:
    """Findings for every service of ``spec``, in service order."""
    global _WORK
    finder = options.finder(spec)
    count = len(spec.services)
    jobs = min(options.jobs or os.cpu_count() or 1, count)
    results: dict[int, list[Diagnostic]] = {}
    if jobs <= 1 or count < 4:
        for index, service in enumerate(spec.services):  # here, progress is told within a service too
            step = (lambda fraction, index=index: progress(index + fraction, count)) if progress else None
            results[index] = check_service(service, finder, step)
    else:
        _WORK = (spec, finder)
        try:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(jobs, mp_context=context) as pool:
                chunk = max(1, min(32, count // (jobs * 8)))
                for done, (index, found) in enumerate(pool.map(_check_one, range(count), chunksize=chunk), 1):
                    results[index] = found
                    if progress:
                        progress(done, count)
        finally:
            _WORK = None
    return [x for index in range(count) for x in results[index]]
