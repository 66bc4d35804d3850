"""Fault injection (see test_faults.py): signals to the kernel of `qtnb run train`, and to a Python-API `Trainer.fit`."""
import pytest

from faults import CASES, run_cases

SELECTED = [c for c in CASES if c.startswith("cli-") and "-kernel" in c or c.startswith("api-")]

@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict:
    return run_cases(request, tmp_path_factory)

@pytest.mark.timeout(3600)
@pytest.mark.parametrize("case", SELECTED)
def test_fault(case, outcomes):
    e = outcomes[case]
    if e is not None: raise e
