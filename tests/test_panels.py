"""Panels end to end: 20 synthetic symbols through `qtnb run train` and `qtnb run backtest` (lstm and xgboost), every
symbol traded as one portfolio whose returns are the hand-computed mean of the symbols' returns after costs, and a
planted symbol among random walks found by the per-symbol table."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fastcore.test import test_eq as eq
from qtnb.datasets import planted, random_walk

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
FAST = ["-p", "seq_len", "4", "-p", "features", '["logret_1", "logret_2", "vol_5"]', "-p", "n_folds", "2"]

def qtnb(*args, runs):
    r = subprocess.run([str(BIN / "qtnb"), *map(str, args), "--runs-dir", str(runs)], capture_output=True, text=True,
                       timeout=900, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (run,) = [p for p in Path(runs).iterdir() if (p / "status.json").exists()]
    return run

@pytest.fixture(scope="module")
def panel_csv(tmp_path_factory):
    df = random_walk(260, n_symbols=20, seed=5).rename(columns={"symbol": "ticker"})
    path = tmp_path_factory.mktemp("data") / "panel.csv"
    df.to_csv(path)
    return path, df

def check_traded(run: Path, df: pd.DataFrame, cost_bps: float):
    m = json.loads((run / "metrics.json").read_text())
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"])
    eq(pred["symbol"].nunique(), 20)                                            # every symbol traded
    t = m["test"]
    eq(t["n_symbols"], 20)
    assert abs(t["directional_accuracy"] - 0.5) <= 3 * t["directional_accuracy_se"], t   # a random walk: a coin
    # the portfolio by hand: each date, the mean over symbols of position x simple return minus costs per turnover
    pos = pred.pivot(index="date", columns="symbol", values="signal")
    ret = np.expm1(pred.pivot(index="date", columns="symbol", values="forward_return"))
    assert pos.notna().all().all()
    w = pos / 20
    cost = cost_bps * 1e-4 * w.diff().abs().fillna(w.abs()).sum(1)
    daily = (w * ret).sum(1) - cost
    np.testing.assert_allclose(t["total_return"], np.prod(1 + daily) - 1, rtol=1e-9)
    # the one-period returns come from each symbol's own prices
    px = df.reset_index().pivot(index="Date", columns="ticker", values="Close")
    nxt = px.shift(-1)
    one = np.log(np.array([nxt.at[d, s] / px.at[d, s] for d, s in zip(pred["date"], pred["symbol"])]))
    np.testing.assert_allclose(pred["forward_return"], one, atol=1e-12)
    return m, daily

def check_regimes(run: Path, df: pd.DataFrame, cost_bps: float):
    "metrics.json's by_regime, per symbol: the trend regime (nothing fitted) by hand, a groupby over regime and date."
    from qtnb.data import trend_regime
    by = json.loads((run / "metrics.json").read_text())["by_regime"]
    eq(set(by), {"trend", "volatility", "hmm"})
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"]).sort_values(["symbol", "date"])
    for kind in ("volatility", "hmm"):                        # fitted per symbol on each fold's training rows
        assert "error" not in by[kind] and sum(v["rows"] for v in by[kind].values()) == len(pred), by[kind]
    lab = {s: trend_regime(g["Close"], 200) for s, g in df.groupby("ticker")}
    pred["lab"] = [lab[s].get(d, np.nan) for s, d in zip(pred["symbol"], pred["date"])]
    pred["u"] = pred["signal"] * np.expm1(pred["forward_return"]) - cost_bps * 1e-4 * pred.groupby("symbol")["signal"].diff().fillna(pred["signal"]).abs()
    assert pred["lab"].notna().any()
    for k, g in pred.dropna(subset=["lab"]).groupby("lab"):
        s = g.groupby("date")["u"].mean()                     # equal weight over the symbols in regime k that date
        got = by["trend"][str(int(k))]
        eq(got["rows"], len(g)); eq(got["n"], len(s))
        np.testing.assert_allclose(got["sharpe"], s.mean() / s.std(ddof=1) * np.sqrt(252), rtol=1e-9)
        np.testing.assert_allclose(got["total_return"], np.prod(1 + s) - 1, rtol=1e-9)

LSTM = ["-p", "model", "lstm", "-p", "model_params", '{"hidden_size": 8, "num_layers": 1}']
XGB = ["-p", "model", "xgboost", "-p", "model_params", '{"n_estimators": 20, "max_depth": 3}']

@pytest.mark.parametrize("command,model", [("train", LSTM), ("backtest", XGB)], ids=["train-lstm", "backtest-xgboost"])
def test_a_20_symbol_panel_through_the_command_line(panel_csv, tmp_path, command, model):
    path, df = panel_csv
    cost = 5.0 if command == "backtest" else 0.0
    extra = ["-p", "cost_bps", "5"] if command == "backtest" else ["-p", "validation", "walk_forward"]
    run = qtnb("run", command, "-p", "data", path, "-p", "symbol_col", "ticker", *model, "-p", "epochs", "2", *FAST, *extra,
               runs=tmp_path)
    m, daily = check_traded(run, df, cost)
    check_regimes(run, df, cost)
    eq(yaml.safe_load((run / "params.yaml").read_text())["data"]["symbol_col"], "ticker")
    assert "20 symbols traded as one equal-weight portfolio" in m["trading"]["definition"]
    if command == "backtest":
        table = pd.read_csv(run / "backtest.csv", index_col=0, parse_dates=True)
        np.testing.assert_allclose(table["strategy_return"], daily.to_numpy(), atol=1e-12)   # the backtest's portfolio
        eq(len(m["backtest"]["symbols"]), 20)

def test_the_symbol_table_finds_the_planted_symbol(tmp_path):
    from qtnb.pipeline import backtest
    mix = planted(400, n_symbols=8, n_planted=1, seed=9)                     # S00 remembers; seven random walks do not
    path = tmp_path / "mix.csv"
    mix.to_csv(path)
    rep = backtest(data=str(path), symbol_col="symbol", model="linear", seq_len=4, n_folds=2, features=["returns"],
                   runs_dir=tmp_path / "runs", verbose=False)
    table = pd.read_csv(rep.run_dir / "symbols.csv", index_col="symbol")
    eq(table.index[0], "S00")                                                # best Sharpe first
    assert table.loc["S00", "directional_accuracy_pvalue"] < 0.01
    assert (table.drop("S00")["directional_accuracy_pvalue"] > 0.01).all()
