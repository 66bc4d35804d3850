"""Shared test plumbing.

Tests that need a program that may be missing (Chromium, PostgreSQL, a Jupyter server) call `require(...)`: it skips
with the reason on a developer's machine, and fails instead when QTNB_NO_SKIP=1 or CI is set, so CI can never pass
by skipping. Tests that need hardware CI cannot have (a CUDA GPU, TensorRT) carry the `cuda`/`trt` markers and are
deselected unless asked for (`pytest -m cuda`).
"""
import os
import pytest

STRICT = os.environ.get("QTNB_NO_SKIP") == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")

def require(ok: bool, why: str):
    "Skip (or, under CI, fail) the calling test with `why` unless `ok`."
    if ok: return
    if STRICT: pytest.fail(f"{why} (QTNB_NO_SKIP/CI is set, so a missing prerequisite is a failure)")
    pytest.skip(why)

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped and call.excinfo is not None and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI: {call.excinfo.value}"
