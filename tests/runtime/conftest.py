"""Fixtures for the runtime monitor's tests: synthetic scenarios and the CLI on capture files."""

from __future__ import annotations

import pytest

from .scenario import Scenario


@pytest.fixture
def nat():
    return Scenario("nat")


@pytest.fixture
def spec_file(tmp_path):
    def write(text: str, name: str = "spec.lbspec") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write
