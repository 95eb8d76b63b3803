"""`seem parity` on every reference fixture: the committed ones (tests/fixtures/reference, made
by running the reference implementation on CPU; see each folder's README) and, when present,
the shared tiny fixture. Every stored output must match (rtol 1e-4, atol 2e-4, exact integers)."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from model.parity import fixture_folders, run

from .conftest import TINY_FIXTURE

COMMITTED = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
FOLDERS = fixture_folders(COMMITTED) + ([TINY_FIXTURE] if (TINY_FIXTURE / "config.yaml").is_file() else [])


def test_the_committed_fixtures_are_found() -> None:
    assert len(fixture_folders(COMMITTED)) >= 2, f"reference fixtures missing under {COMMITTED}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_parity_with_the_reference(folder: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-offs cost more than the work
    try:
        out = io.StringIO()
        ok = run(folder, out=out)
    finally:
        torch.set_num_threads(before)
    failures = [line for line in out.getvalue().splitlines() if line.startswith("FAIL")]
    assert ok, f"{folder.name}: " + "\n".join(failures or out.getvalue().splitlines()[-3:])
