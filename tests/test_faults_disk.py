"""Fault injection (see test_faults.py): a full disk during each kind of write, and damaged run files."""
from faults import CASES, fault_tests

SELECTED = [c for c in CASES if c.startswith(("full-disk-", "damaged-"))]

outcomes, test_fault = fault_tests(SELECTED)
