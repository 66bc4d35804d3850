"""Fault injection (see test_faults.py): signals to `qtnb sweep` with one and two workers."""
import pytest

from faults import CASES, run_cases

SELECTED = [c for c in CASES if c.startswith("sweep-")]

@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict:
    return run_cases(request, tmp_path_factory)

@pytest.mark.timeout(3600)
@pytest.mark.parametrize("case", SELECTED)
def test_fault(case, outcomes):
    e = outcomes[case]
    if e is not None: raise e
