"""Regime labels are causal: changing any value after t never changes a label at or before t (the fitted ones fitted
on training rows that end before t), for the trend, volatility and HMM regimes; and metrics break down by regime: the
breakdown equals a pandas groupby of the strategy's own returns (one series and a panel), a signal planted in one regime
shows in that regime, and `qtnb run backtest` shows it in its notebook and writes it to metrics.json as `by_regime`."""
import numpy as np
import pandas as pd
import pytest

from fastcore.test import test_eq as eq
from qtnb.data import hmm_regime, trend_regime, volatility_regime
from qtnb.datasets import regimes
from qtnb.metrics import metrics_by_regime

pytest.importorskip("hmmlearn")

N, TRAIN = 900, 500
LABELS = {"trend": lambda c, tr: trend_regime(c, 50),
          "volatility": lambda c, tr: volatility_regime(c, tr, window=20),
          "hmm": lambda c, tr: hmm_regime(c, tr, n_states=2, seed=0)}

@pytest.mark.parametrize("kind", list(LABELS))
def test_changing_the_future_never_changes_a_label_at_or_before_t(kind):
    close = regimes(N, seed=6)["Close"]
    train = np.arange(N) < TRAIN
    base = LABELS[kind](close, train).to_numpy()
    assert np.isfinite(base[TRAIN:]).all() and len(np.unique(base[TRAIN:])) > 1   # labels that vary
    rng = np.random.default_rng(0)
    for _ in range(6):
        t = int(rng.integers(TRAIN, N - 1))
        moved = close.copy()
        after = np.arange(N) > t
        moved[after] = moved[after] * np.exp(rng.normal(0, 0.3, after.sum()).cumsum())   # any path after t
        got = LABELS[kind](moved, train).to_numpy()
        np.testing.assert_array_equal(got[:t + 1], base[:t + 1])
        assert not np.array_equal(got, base) or kind == "trend"                          # the future did change

def test_the_test_can_see_a_look_ahead_label():
    close = regimes(N, seed=6)["Close"]
    centred = lambda c: (c > c.rolling(51, center=True).mean()).astype(float)          # peeks 25 rows ahead
    moved = close.copy(); moved.iloc[700:] *= 3
    assert not np.array_equal(centred(moved).to_numpy()[:700], centred(close).to_numpy()[:700])

def test_metrics_break_down_by_regime():
    rg = regimes(3000, seed=4)
    r = np.log(rg["Close"]).diff().fillna(0).to_numpy()
    by = metrics_by_regime(np.ones(3000), r, rg["regime"].to_numpy())
    eq(list(by.index), [0, 1])
    assert by.loc[1, "max_drawdown"] > by.loc[0, "max_drawdown"]                       # the volatile, falling regime
    np.testing.assert_allclose(by["share"].sum(), 1.0)


# ---- the breakdown's numbers: a hand computation, a planted signal, the report --------------------------------------
def hand_figures(s: pd.Series, pos: np.ndarray, simple: np.ndarray) -> dict:
    "Sharpe, annual return and directional accuracy of per-period strategy returns `s`, written out with pandas."
    moving = simple != 0
    return dict(n=len(s), sharpe=s.mean() / s.std(ddof=1) * np.sqrt(252), annual_return=np.prod(1 + s) ** (252 / len(s)) - 1,
                directional_accuracy=np.mean(np.sign(pos[moving]) == np.sign(simple[moving])))

def test_breakdown_equals_a_pandas_groupby_of_the_strategy_returns():
    rng = np.random.default_rng(2)
    n = 1500
    pos, r = np.clip(rng.normal(0, 0.7, n), -1, 1), rng.normal(0.0003, 0.01, n)
    lab = np.repeat(rng.integers(0, 3, n // 50), 50).astype(float); lab[:40] = np.nan      # persistent labels, a warm-up
    by = metrics_by_regime(pos, r, lab, cost_bps=5)
    df = pd.DataFrame(dict(pos=pos, simple=np.expm1(r), lab=lab))
    df["s"] = df["pos"] * df["simple"] - 5e-4 * np.abs(np.diff(pos, prepend=0.0))   # costs of the real trades, in order
    for k, g in df.dropna().groupby("lab"):
        want = hand_figures(g["s"], g["pos"].to_numpy(), g["simple"].to_numpy())
        for f, v in want.items(): np.testing.assert_allclose(by.loc[int(k), f], v, rtol=1e-10, err_msg=f)
    np.testing.assert_allclose(by["share"].sum(), 1 - 40 / n)

def test_panel_breakdown_equals_a_groupby_by_regime_and_date():
    rng = np.random.default_rng(3)
    dates, syms = pd.bdate_range("2015-01-01", periods=400), ["A", "B", "C", "D"]
    d = pd.DataFrame([(t, s) for t in dates for s in syms], columns=["date", "symbol"])
    d["pos"], d["r"] = np.sign(rng.normal(size=len(d))), rng.normal(0, 0.01, len(d))
    d["lab"] = d.groupby("symbol")["pos"].transform(lambda x: np.repeat(rng.integers(0, 2, len(x) // 40 + 1), 40)[:len(x)])
    by = metrics_by_regime(d["pos"], d["r"], d["lab"], dates=d["date"], symbols=d["symbol"], cost_bps=10)
    d["simple"] = np.expm1(d["r"])
    d["u"] = d["pos"] * d["simple"] - 1e-3 * d.groupby("symbol")["pos"].diff().fillna(d["pos"]).abs()  # each symbol's own trades
    for k, g in d.groupby("lab"):
        s = g.groupby("date")["u"].mean()                   # equal weight over the symbols in regime k that date
        want = hand_figures(s, g["pos"].to_numpy(), g["simple"].to_numpy())
        for f, v in want.items(): np.testing.assert_allclose(by.loc[int(k), f], v, rtol=1e-10, err_msg=f)
        eq(by.loc[int(k), "rows"], len(g))

def test_a_signal_planted_in_one_regime_shows_in_that_regime_only():
    from qtnb.data import prepare
    from qtnb.metrics import by_regime
    rg = regimes(3000, seed=11)
    P = prepare(dict(seq_len=8, features=["logret_1"], validation="walk_forward", n_folds=3, cache=False), rg)
    pred = pd.concat([pd.DataFrame({"date": f.test.end_dates, "fold": f.index, "forward_return": f.test.forward_returns})
                      for f in P.folds], ignore_index=True)
    rng = np.random.default_rng(0)
    knows = (rg["regime"].reindex(pred["date"]).to_numpy() == 1) & (rng.random(len(pred)) < 0.3)   # in the volatile regime
    pred["signal"] = np.where(knows, np.sign(pred["forward_return"]), rng.choice([-1.0, 1.0], len(pred)))
    br = by_regime(P, pred, trend_window=50, cost_bps=1)
    calm, wild = br["hmm"][0], br["hmm"][1]
    assert wild["directional_accuracy"] > 0.6 and wild["directional_accuracy_pvalue"] < 1e-6, wild
    assert wild["directional_accuracy"] > calm["directional_accuracy"] + 0.07 and wild["sharpe"] > calm["sharpe"] + 2, (wild, calm)
    true = metrics_by_regime(pred["signal"], pred["forward_return"], rg["regime"].reindex(pred["date"]))   # the true regimes
    assert true.loc[0, "directional_accuracy_pvalue"] > 0.05 and true.loc[1, "directional_accuracy_pvalue"] < 1e-9, true
    vol = br["volatility"]
    assert vol[2]["directional_accuracy"] > vol[0]["directional_accuracy"] + 0.05     # turbulent terciles carry it too

def test_qtnb_run_backtest_reports_the_breakdown_in_its_notebook_and_metrics(tmp_path):
    import json, os, subprocess, sys
    from pathlib import Path
    import nbformat
    repo = Path(__file__).resolve().parents[1]
    data = regimes(1200, seed=2)
    data.to_csv(tmp_path / "regimes.csv")
    r = subprocess.run([str(Path(sys.executable).parent / "qtnb"), "run", "backtest", "-p", "data", tmp_path / "regimes.csv",
                        "-p", "model", "linear", "-p", "n_folds", "3", "-p", "seq_len", "8", "-p", "features", '["logret_1"]',
                        "-p", "cost_bps", "2", "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600,
                       cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "runs").iterdir() if (p / "status.json").exists()]
    by = json.loads((run / "metrics.json").read_text())["by_regime"]
    eq(set(by), {"trend", "volatility", "hmm"})
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"])
    for kind, table in by.items():
        assert "error" not in table, table
        eq(sum(v["rows"] for v in table.values()), len(pred))                            # every prediction once
    # the trend regime by hand: nothing fitted, so the labels come from the prices alone
    close = data["Close"]
    lab = trend_regime(close, 200).reindex(pred["date"]).to_numpy()
    pos, simple = pred["signal"].to_numpy(), np.expm1(pred["forward_return"].to_numpy())
    s = pd.Series(pos * simple - 2e-4 * np.abs(np.diff(pos, prepend=0.0)))
    for k in (0, 1):
        want = hand_figures(s[lab == k], pos[lab == k], simple[lab == k])
        for f, v in want.items(): np.testing.assert_allclose(by["trend"][str(k)][f], v, rtol=1e-9, err_msg=f)
    # the saved notebook shows the section, one table per kind, with the figures of metrics.json
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    i = next(j for j, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## By market regime"))
    shown = [o["data"]["text/plain"] for o in nb.cells[i + 1].outputs if "text/plain" in o.get("data", {})]
    eq(len(shown), 3)
    for text, kind in zip(shown, ("trend", "volatility", "hmm")):
        assert text.split("\n")[1].startswith(kind) and "sharpe" in text, text                     # the index is named by kind
        assert f"{by[kind]['0']['sharpe']:.6f}" in text, (text, by[kind]["0"]["sharpe"])


# ---- the labels' cost: a process pool, and no rows after the last one needed ------------------------------------------
def test_labels_are_the_same_in_a_process_pool_and_equal_each_fold_fitted_by_hand():
    "regime_labels (in-process and in 2 processes) equals each kind fitted on the whole series of each fold and symbol."
    from qtnb.data import prepare
    from qtnb.datasets import multi_symbol
    from qtnb.metrics import regime_labels
    panel = multi_symbol("regimes", ("A", "B"), seed=5, n=1200)
    P = prepare(dict(seq_len=8, features=["logret_1"], validation="walk_forward", n_folds=3, symbol_col="symbol",
                     cache=False), panel)
    pred = pd.concat([pd.DataFrame({"date": f.test.end_dates, "symbol": f.test.symbols, "fold": f.index}) for f in P.folds],
                     ignore_index=True)
    want = pd.DataFrame(np.nan, index=pred.index, columns=list(LABELS))
    for k, f in enumerate(P.folds):
        tr = f._masks()["train"]
        for s, g in panel.groupby("symbol"):
            rows = ((pred["fold"] == k) & (pred["symbol"] == s)).to_numpy()
            fit = g.index.isin(P._dates[tr][P._symbols[tr] == s])
            for kind, fn in LABELS.items():
                want.loc[rows, kind] = fn(g["Close"], fit).reindex(pred.loc[rows, "date"]).to_numpy()   # all rows, after too
    assert want.notna().all().all() and want["hmm"].nunique() == 2
    opts = dict(trend_window=50, vol_window=20)
    pd.testing.assert_frame_equal(regime_labels(P, pred, n_jobs=1, **opts), want)
    pd.testing.assert_frame_equal(regime_labels(P, pred, n_jobs=2, **opts), want)
