"""Z3 lives here and nowhere else: the encoding of a service and the questions asked of it."""

from lbspec.smt.queries import Answer, ServiceQueries
from lbspec.smt.solver import DEFAULT_RLIMIT, SolverSettings

__all__ = ["Answer", "ServiceQueries", "SolverSettings", "DEFAULT_RLIMIT"]
