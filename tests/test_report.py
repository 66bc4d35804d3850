"""`qtnb report RUN` for a train, a backtest and a tune run: one HTML file each, under 6 MB, with the figures the run's
data supports (counted by title), plotly.js once; one opened offline in headless Chromium without console errors."""
import shutil, subprocess, sys
from pathlib import Path

import pytest

from conftest import require
from fastcore.test import test_eq as eq

BIN = Path(sys.executable).parent
SMALL = dict(data="synthetic:planted", model="mlp", epochs=2, seq_len=8, verbose=False)
TRAIN = ["Learning curves", "Predictions against actual", "Confusion matrix", "ROC curve", "Calibration",
         "Equity against buy-and-hold", "Exposure and turnover", "Rolling Sharpe", "Monthly returns", "Cost sensitivity"]
BACKTEST = ["Learning curves", "Predictions against actual", "Equity against buy-and-hold", "Exposure and turnover",
            "Rolling Sharpe", "Monthly returns", "Cost sensitivity", "Sharpe per fold"]
TUNE = ["Optimization history", "Slice plots"]

def titles(page: str) -> list[str]:
    import re
    return re.findall(r"<div class='qtnb-figure' data-title='([^']*)'>", page)

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from qtnb.pipeline import backtest, train, tune
    d = tmp_path_factory.mktemp("runs")
    tr = train(runs_dir=str(d), target="direction", **SMALL)
    bt = backtest(runs_dir=str(d), validation="walk_forward", n_folds=2, **SMALL)
    tu = tune(runs_dir=str(d), n_trials=2, **SMALL)
    return d, {"train": tr.run.id, "backtest": bt.run.id, "tune": tu.run.id}

def report(d, run_id, *extra) -> Path:
    r = subprocess.run([str(BIN / "qtnb"), "report", run_id, "--runs-dir", str(d), *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return Path(r.stdout.split()[1])

@pytest.mark.slow
@pytest.mark.parametrize("kind,want", [("train", TRAIN), ("backtest", BACKTEST), ("tune", TUNE)])
def test_one_offline_file_per_run_with_its_figures(runs, kind, want):
    d, ids = runs
    out = report(d, ids[kind])
    eq(out, d / ids[kind] / "report.html")
    page = out.read_text()
    got = titles(page)
    assert set(want) <= set(got), (kind, sorted(set(want) - set(got)))
    eq(len(got), len(set(got)))                                   # each figure once
    assert out.stat().st_size < 6 * 2**20, out.stat().st_size
    eq(page.count("* plotly.js v"), 1)                            # plotly.js inlined exactly once
    assert 'src="https://cdn.plot.ly' not in page and "injected-parameters" not in page and "test_eq" not in page
    if kind == "train" and (d / ids[kind] / "feature_importance.csv").is_file(): assert "Permutation importance" in got

@pytest.mark.slow
def test_cdn_option_makes_a_small_file(runs, tmp_path):
    d, ids = runs
    out = report(d, ids["train"], "--cdn", "--out", str(tmp_path / "small.html"))
    page = out.read_text()
    assert out.stat().st_size < 1_000_000 and page.count('src="https://cdn.plot.ly') == 1
    eq(titles(page), titles((d / ids["train"] / "report.html").read_text() if (d / ids["train"] / "report.html").is_file()
                            else report(d, ids["train"]).read_text()))

@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_offline_in_chromium_without_errors(runs):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    require(chromium is not None, "Chromium is not installed (apt-get install chromium)")
    try: from playwright.sync_api import sync_playwright
    except ImportError: require(False, "Python Playwright is not installed (pip install -e '.[dev]')")
    d, ids = runs
    out = report(d, ids["backtest"])
    n = len(titles(out.read_text()))
    errors, requests = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            ctx = b.new_context(offline=True)
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
            page.goto(out.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.qtnb-figure .main-svg').length >= {n}", timeout=60_000)
            drawn = page.evaluate("document.querySelectorAll('.qtnb-figure .js-plotly-plot').length")
        finally: b.close()
    eq(drawn, n); eq(errors, []); eq(requests, [])
