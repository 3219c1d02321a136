"""Fixtures for end-to-end tests: labs in network namespaces (skipped only where they cannot be made)."""

from lbspec.lab.fixtures import lab, lab_factory  # noqa: F401
