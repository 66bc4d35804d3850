"""`qtnb report RUN` for a train, a backtest and a tune run: one HTML file each, under 6 MB, with the figures the run's
data supports (counted by title), plotly.js once; opened offline in headless Chromium without console errors or requests.
Trading figures follow the run's trading convention: the rolling Sharpe against a direct computation and
empyrical-reloaded (one period, and horizon-long blocks annualised with periods/h), a blocks run's equity by hand, a panel
traded as the portfolio its metrics score with a per-symbol table and selector; a walk-forward run shows every fold's
learning curves; each report states its conventions once and names no URL to fetch."""
import json, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
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
@pytest.mark.parametrize("kind", ["backtest", "panel"])
def test_report_opens_offline_in_chromium_without_errors(more_runs, kind):
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    require(chromium is not None, "Chromium is not installed (apt-get install chromium)")
    try: from playwright.sync_api import sync_playwright
    except ImportError: require(False, "Python Playwright is not installed (pip install -e '.[dev]')")
    d, ids, _ = more_runs
    out = report(d, ids[kind])
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
            if kind == "panel":   # the symbol selector: choosing the second symbol shows its two traces and only those
                sel = page.locator("div[data-title='Equity by symbol']")
                sel.scroll_into_view_if_needed()
                sel.locator(".updatemenu-header-group").click()
                sel.locator(".updatemenu-dropdown-button").nth(1).click()
                shown = "Array.from(document.querySelector(\"div[data-title='Equity by symbol'] .js-plotly-plot\").data, t => t.visible)"
                page.wait_for_function(f"{shown}[2] === true", timeout=10_000)
                eq(page.evaluate(shown), [False, False, True, True, False, False])
        finally: b.close()
    eq(drawn, n); eq(errors, []); eq(requests, [])

# --- issue 18 leftovers: the trading convention, panels, every fold, conventions and no fetch at all -------------------

def figures(page: str) -> dict[str, dict]:
    "Each qtnb figure of `page` by its title: the data and layout of its `Plotly.newPlot` call."
    import json, re
    dec, out = json.JSONDecoder(), {}
    for m in re.finditer(r"<div class='qtnb-figure' data-title='([^']*)'>", page):
        at = page.index("Plotly.newPlot(", m.end()) + len("Plotly.newPlot(")
        ws = lambda i: len(page) - len(page[i:].lstrip(" \n\t,"))
        _, at = dec.raw_decode(page, ws(at))           # the div id
        data, at = dec.raw_decode(page, ws(at))
        layout, _ = dec.raw_decode(page, ws(at))
        out[m[1]] = {"data": data, "layout": layout}
    return out

def values(v) -> np.ndarray:
    "A trace's x or y as written in the page: a list, or plotly's typed array (base64 `bdata` of `dtype`)."
    import base64
    if isinstance(v, dict) and "bdata" in v: return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)

def fetched(page: str) -> list[str]:
    "What a browser would fetch for `page`, found without qtnb's own `external_resources`: any tag or CSS that names a URL."
    import re
    found = re.findall(r"<(?:script|img|iframe|source|embed|video|audio)\b[^>]*\bsrc\s*=", page, flags=re.I)
    found += re.findall(r"<link\b[^>]*>", page, flags=re.I)
    for css in re.findall(r"<style\b[^>]*>(.*?)</style>", page, flags=re.I | re.S) + re.findall(r"\bstyle='([^']*)'", page):
        found += re.findall(r"url\(|@import", css, flags=re.I)
    return found

_PAGES: dict = {}

def page_of(d, run_id) -> str:
    "The text of `qtnb report RUN` for `run_id`, written once per test module (each call is a process that imports qtnb)."
    if run_id not in _PAGES: _PAGES[run_id] = report(d, run_id).read_text()
    return _PAGES[run_id]

def direct_rolling_sharpe(r: np.ndarray, rows: int, ppy: float) -> np.ndarray:
    "The Sharpe ratio of each trailing window of `rows` returns, one window at a time (ddof 1), times sqrt(ppy)."
    out = np.full(len(r), np.nan)
    for i in range(rows - 1, len(r)):
        w = r[i - rows + 1: i + 1]
        out[i] = w.mean() / w.std(ddof=1) * np.sqrt(ppy)
    return out

@pytest.mark.parametrize("horizon,hold,rows,ppy", [(1, "next", 63, 252), (5, "next", 63, 252), (5, "blocks", 13, 252 / 5),
                                                   (20, "blocks", 3, 252 / 20)])
def test_rolling_sharpe_follows_the_trading_convention(horizon, hold, rows, ppy):
    from qtnb.metrics import backtest, trading_metrics
    from qtnb.report import rolling_sharpe, rolling_sharpe_figure
    rng = np.random.default_rng(3)
    days, r = pd.bdate_range("2019-01-01", periods=900), rng.normal(3e-4, 0.01, 900)
    bt = backtest(np.clip(rng.normal(0.2, 0.6, 900), -1, 1), r, days, cost_bps=2.0, horizon=horizon, hold=hold)
    got = rolling_sharpe(bt, 63)                                          # the convention from the frame itself
    want = direct_rolling_sharpe(bt["strategy_return"].to_numpy(), rows, ppy)
    np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-9, equal_nan=True)
    eq(int(got.notna().sum()), len(bt) - rows + 1)
    np.testing.assert_allclose(rolling_sharpe_figure(bt).data[0].y, want, rtol=1e-9, equal_nan=True)
    last = bt["strategy_return"].iloc[-rows:].to_numpy()                  # the last point is the trading metrics' Sharpe
    np.testing.assert_allclose(got.iloc[-1], trading_metrics(np.ones(rows), last, log_returns=False, periods_per_year=ppy)["sharpe"], rtol=1e-9)
    try: import empyrical
    except ImportError: require(False, "empyrical-reloaded is not installed (pip install -e '.[dev]')")
    ref = empyrical.roll_sharpe_ratio(bt["strategy_return"], rows, annualization=ppy)
    np.testing.assert_allclose(got.iloc[rows - 1:].to_numpy(), np.asarray(ref), rtol=1e-9)

@pytest.fixture(scope="module")
def more_runs(runs, tmp_path_factory):
    "A panel of 3 symbols (one planted) and a run traded in 5-day blocks (settings.ini's trade_hold), next to `runs`."
    from qtnb.datasets import planted
    from qtnb.pipeline import train
    d, ids = runs
    csv = tmp_path_factory.mktemp("data") / "panel.csv"
    planted(900, n_symbols=3, n_planted=1, seed=7).to_csv(csv)
    panel = train(runs_dir=str(d), **{**SMALL, "data": str(csv)}, symbol_col="symbol")
    ini = tmp_path_factory.mktemp("settings") / "settings.ini"
    ini.write_text((Path(__file__).parents[1] / "settings.ini").read_text().replace("[training_defaults]", "[training_defaults]\ntrade_hold = blocks"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QTNB_SETTINGS", str(ini))
        blocks = train(runs_dir=str(d), horizon=5, **SMALL)
    return d, {**ids, "panel": panel.run.id, "blocks": blocks.run.id}, {"panel": panel, "blocks": blocks}

@pytest.mark.slow
def test_panel_report_trades_the_portfolio_and_shows_each_symbol(more_runs):
    from qtnb.metrics import symbol_table
    d, ids, _ = more_runs
    run = d / ids["panel"]
    m, page = json.loads((run / "metrics.json").read_text()), page_of(d, ids["panel"])
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"])
    eq(m["test"]["n_symbols"], 3)
    f = figures(page)
    strat = next(t for t in f["Equity against buy-and-hold"]["data"] if t["name"] == "strategy")
    eq(len(values(strat["y"])), pred["date"].nunique())                                            # one point per date, every symbol in it
    np.testing.assert_allclose(values(strat["y"])[-1] - 1, m["test"]["total_return"], rtol=1e-9)   # the portfolio the metrics score
    assert "one equal-weight portfolio across symbols" in page
    tab = symbol_table(pred["signal"].to_numpy(), pred["forward_return"].to_numpy(), pd.DatetimeIndex(pred["date"]),
                       pred["symbol"].to_numpy(), cost_bps=float(yaml_train(run).get("cost_bps", 0.0)))
    eq(page.count("<div class='qtnb-table' data-title='Per-symbol results'>"), 1)
    for s in ("S00", "S01", "S02"): assert f"<th>{s}</th>" in page, s
    sel = f["Equity by symbol"]
    eq(sorted(b["label"] for b in sel["layout"]["updatemenus"][0]["buttons"]), ["S00", "S01", "S02"])
    first = sel["layout"]["updatemenus"][0]["buttons"][0]["label"]
    eq(first, tab.index[0])                                                                # best Sharpe first, and shown
    np.testing.assert_allclose(values(sel["data"][0]["y"])[-1] - 1, tab.loc[first, "total_return"], rtol=1e-9)
    eq([t.get("visible") for t in sel["data"]], [True, True] + [False] * 4)
    eq(sorted(b["label"] for b in f["Predictions against actual"]["layout"]["updatemenus"][0]["buttons"]), ["S00", "S01", "S02"])

@pytest.mark.slow
def test_walk_forward_report_shows_every_folds_learning_curves(more_runs):
    from qtnb.pipeline import fold_runs
    from qtnb.runs import open_run
    d, ids, _ = more_runs
    lc = figures(page_of(d, ids["backtest"]))["Learning curves"]["data"]
    folds = fold_runs(open_run(ids["backtest"], runs_dir=d))
    eq(sorted(folds), [0, 1])
    for k, sub in folds.items():
        h = pd.read_csv(Path(sub.path) / "history.csv")
        (tr,) = [t for t in lc if t["name"] == f"train_loss (fold {k})"]
        eq(values(tr["x"]).tolist(), h["epoch"].tolist()); np.testing.assert_allclose(values(tr["y"]), h["train_loss"], rtol=1e-12)

@pytest.mark.slow
def test_blocks_run_report_trades_and_annualises_in_blocks(more_runs):
    d, ids, _ = more_runs
    run = d / ids["blocks"]
    m, page = json.loads((run / "metrics.json").read_text()), page_of(d, ids["blocks"])
    eq((m["trading"]["hold"], m["trading"]["horizon"]), ("blocks", 5))
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"]).sort_values("date")
    nb = len(pred) // 5                                     # by hand: the signal at each block's start, held 5 days
    pos = pred["signal"].to_numpy()[: nb * 5: 5]
    ret = np.expm1(pred["forward_return"].to_numpy()[: nb * 5].reshape(nb, 5).sum(1))
    cost = float(yaml_train(run).get("cost_bps", 0.0)) * 1e-4 * np.abs(np.diff(pos, prepend=0.0))
    strat = pos * ret - cost
    f = figures(page)
    eq_y = values(next(t for t in f["Equity against buy-and-hold"]["data"] if t["name"] == "strategy")["y"])
    np.testing.assert_allclose(eq_y, np.cumprod(1 + strat), rtol=1e-9)
    np.testing.assert_allclose(eq_y[-1] - 1, m["test"]["total_return"], rtol=1e-9)      # the run's own test figure
    rs = values(f["Rolling Sharpe"]["data"][0]["y"])
    np.testing.assert_allclose(np.array(rs, dtype=float), direct_rolling_sharpe(strat, 13, 252 / 5), rtol=1e-9, equal_nan=True)
    assert "non-overlapping 5-period blocks" in page and "13 blocks of 5" in page

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["blocks", "panel"])
def test_pipeline_notebooks_draw_the_reports_rolling_sharpe(more_runs, kind):
    "The pipeline notebooks draw `rolling_sharpe_figure(report.backtest())`: the same convention and numbers as report.html."
    from qtnb.report import rolling_sharpe_figure
    d, ids, reps = more_runs
    page = page_of(d, ids[kind])
    bt = reps[kind].backtest()
    if kind == "blocks": eq((bt.attrs["trading"]["hold"], bt.attrs["trading"]["horizon"]), ("blocks", 5))
    fig = rolling_sharpe_figure(bt)
    np.testing.assert_allclose(np.asarray(fig.data[0].y, dtype=float), values(figures(page)["Rolling Sharpe"]["data"][0]["y"]),
                               rtol=1e-12, equal_nan=True)
    eq(fig.layout.title.text, figures(page)["Rolling Sharpe"]["layout"]["title"]["text"])

def yaml_train(run: Path) -> dict:
    import yaml
    return yaml.safe_load((run / "params.yaml").read_text()).get("train") or {}

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["train", "backtest", "tune", "panel", "blocks"])
def test_report_names_its_conventions_once_and_fetches_nothing(more_runs, kind):
    from qtnb.report import external_resources
    d, ids, _ = more_runs
    page = page_of(d, ids[kind])
    eq(page.count("<section class='qtnb-conventions'>"), 1)
    for says in ("Out of sample only", "Returns:", "Offline:", "fetches nothing from the network"): assert says in page, says
    if kind != "tune": assert "basis points of capital per unit of turnover" in page and "Not modelled" in page
    eq(fetched(page), []); eq(external_resources(page), [])
    eq(page.count("MathJax.js"), 0); assert "require.js" not in page and "cdnjs" not in page

def test_a_wide_panels_report_stays_one_small_offline_file(tmp_path):
    "40 symbols x 1,000 days: every symbol in the table, the 10 best and 10 worst in the selector, under 6 MB, nothing fetched."
    from qtnb.report import external_resources, write_report
    from qtnb.runs import create_run
    rng, dates = np.random.default_rng(8), pd.bdate_range("2015-01-01", periods=1000)
    pred = pd.concat([pd.DataFrame({"date": dates, "symbol": f"T{i:02d}", "fold": 0, "y_true": rng.normal(0, .01, 1000),
                                    "y_pred": rng.normal(0, .01, 1000), "signal": np.sign(rng.normal(size=1000)),
                                    "forward_return": rng.normal(0, .01, 1000)}) for i in range(40)])
    r = create_run("wide", runs_dir=tmp_path, params={"pipeline": "train", "train": {"cost_bps": 1.0}})
    (Path(r.path) / "predictions.csv").write_text(pred.to_csv(index=False))
    r.write_metrics({"test": {"n_symbols": 40}, "trading": {"hold": "next", "horizon": 1, "periods_per_year": 252.0, "weighting": "equal",
                                                          "long_only": False, "definition": "one-period returns"}})
    r.set_status("completed")
    out = write_report(r.id, runs_dir=tmp_path)
    page = out.read_text()
    assert out.stat().st_size < 6 * 2**20, out.stat().st_size
    eq(sum(f"<th>T{i:02d}</th>" in page for i in range(40)), 40)
    eq(len(figures(page)["Equity by symbol"]["layout"]["updatemenus"][0]["buttons"]), 20)
    eq(fetched(page), []); eq(external_resources(page), [])
