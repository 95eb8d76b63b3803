"""Shared set-up of the deployment-file tests: infra/check.py and infra/configure.py are
scripts, imported here as the modules `check` and `configure`."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "infra") not in sys.path:
    sys.path.insert(0, str(REPO / "infra"))


@pytest.fixture
def repo() -> Path:
    return REPO


def read_yaml(relpath: str):
    return yaml.safe_load((REPO / relpath).read_text())


@pytest.fixture
def mutated(tmp_path):
    """mutated(relpath, change) -> path of a copy of the YAML file with `change(data)` applied."""

    def make(relpath: str, change, name: str | None = None) -> Path:
        data = copy.deepcopy(read_yaml(relpath))
        change(data)
        out = tmp_path / (name or Path(relpath).name)
        out.write_text(yaml.safe_dump(data, sort_keys=False))
        return out

    return make
