"""The one place solvers are made: seeded, with a per-query timeout and a resource limit."""

from __future__ import annotations

from dataclasses import dataclass

import z3

__all__ = ["SolverSettings", "make_solver", "DEFAULT_RLIMIT"]

DEFAULT_RLIMIT = 50_000_000  # Z3 resource units: a bound that does not depend on machine speed


@dataclass(frozen=True, slots=True)
class SolverSettings:
    """How hard the solver may work on one query."""

    timeout_ms: int = 10_000
    seed: int = 0
    rlimit: int = DEFAULT_RLIMIT


def make_solver(context: z3.Context, settings: SolverSettings) -> z3.Solver:
    solver = z3.Solver(ctx=context)
    solver.set("timeout", settings.timeout_ms)
    solver.set("random_seed", settings.seed)
    solver.set("rlimit", settings.rlimit)
    solver.set("unsat_core", True)
    return solver
