"""Shared test plumbing.

Tests that need a program that may be missing (Chromium, PostgreSQL, a Jupyter server) call `require(...)`: it skips
with the reason on a developer's machine, and fails instead under CI, so CI can never pass by skipping. CI counts as
set when QTNB_NO_SKIP=1 or CI holds any truthy value (1, true, yes, on; any case). Under CI every skip fails: a test's
own, a skip marker's, and a whole module's (`pytest.skip(..., allow_module_level=True)`, `pytest.importorskip`).
xfail is strict everywhere (`xfail_strict` in pyproject.toml): an xfail test that passes fails the run.
Tests that need hardware CI cannot have (a CUDA GPU, TensorRT) carry the `cuda`/`trt` markers and are deselected
unless asked for (`pytest -m cuda`); deselected tests are not skips.
"""
import os
import pytest

TRUTHY = ("1", "true", "yes", "on")

def strict_env(env=os.environ) -> bool:
    "True when skips must fail: QTNB_NO_SKIP=1, or CI set to any truthy value."
    return env.get("QTNB_NO_SKIP", "").strip() == "1" or env.get("CI", "").strip().lower() in TRUTHY

STRICT = strict_env()

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

@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    "A module skipped as a whole (at import) is a failure under CI, like any other skip."
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped:
        why = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else rep.longrepr
        rep.outcome = "failed"
        rep.longrepr = f"module skipped under CI: {why}"
