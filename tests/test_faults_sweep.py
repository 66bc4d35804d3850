"""Fault injection (see test_faults.py): signals to `qtnb sweep` with one and two workers."""
from faults import CASES, fault_tests

SELECTED = [c for c in CASES if c.startswith("sweep-")]

outcomes, test_fault = fault_tests(SELECTED)
