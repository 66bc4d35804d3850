"""Fault injection (see test_faults.py): signals to the kernel of `qtnb run train`, and to a Python-API `Trainer.fit`."""
from faults import CASES, fault_tests

SELECTED = [c for c in CASES if c.startswith("cli-") and "-kernel" in c or c.startswith("api-")]

outcomes, test_fault = fault_tests(SELECTED)
