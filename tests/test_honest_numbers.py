"""Honest trading numbers at any horizon: qtnb's trading metrics against empyrical-reloaded, computed from prices
independently of qtnb's own return arithmetic, on the bundled S&P 500 and a 5-symbol synthetic panel."""
import math

import numpy as np
import pandas as pd
import pytest

from fastcore.test import test_eq as eq
from qtnb.data import DataConfig, prepare
from qtnb.datasets import load_sp500, multi_symbol
from qtnb.metrics import RATIO_CAP, trading_metrics

empyrical = pytest.importorskip("empyrical")   # a dev dependency (pyproject's dev extra)

HORIZONS = (1, 5, 20)
COST = 5.0

def close(a, b, tol=1e-9) -> bool:
    "Equal within `tol`; where empyrical's ratio is infinite (no risk), qtnb's is the documented cap of that sign."
    if math.isinf(b): return a == math.copysign(RATIO_CAP, b)
    if math.isnan(b): return a == RATIO_CAP                      # empyrical's calmar without a drawdown (a gain)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)

def windows_at(frame, h):
    "The holdout test windows at horizon h, with each window's end date, symbol and the signal a toy model would trade."
    w = prepare(DataConfig(horizon=h, seq_len=16, validation="holdout"), frame, cache=False).folds[0].test
    x = w.view().numpy() if w.symbols is None else w[:][0].numpy()
    signal = np.tanh(x[:, -5:, 0].sum(1))                          # a fractional momentum position from the last 5 returns
    return w, signal

def empyrical_figures(strategy: np.ndarray, ann: float) -> dict:
    "empyrical's figures of a strategy's simple returns, in qtnb's names (max_drawdown positive)."
    return dict(sharpe=empyrical.sharpe_ratio(strategy, annualization=ann),
                sortino=empyrical.sortino_ratio(strategy, annualization=ann),
                max_drawdown=-empyrical.max_drawdown(strategy), calmar=empyrical.calmar_ratio(strategy, annualization=ann),
                annual_return=empyrical.annual_return(strategy, annualization=ann),
                annual_volatility=empyrical.annual_volatility(strategy, annualization=ann),
                total_return=empyrical.cum_returns_final(strategy))

def check_series(prices: pd.Series, dates, signal, h: int):
    "qtnb's figures of `signal` (one per date) equal empyrical's on returns computed here from `prices`, both conventions."
    t = prices.index.get_indexer(dates)
    assert (t >= 0).all()
    p = prices.to_numpy()
    one = np.log(p[t + 1] / p[t])                                   # the one-period return a signal at t earns
    # hold='next': every signal held one period; costs on every change of position
    strat = signal * np.expm1(one) - COST * 1e-4 * np.abs(np.diff(signal, prepend=0.0))
    q = trading_metrics(signal, one, cost_bps=COST, horizon=h)
    for k, v in empyrical_figures(strat, 252).items(): assert close(q[k], v), (h, "next", k, q[k], v)
    # hold='blocks': the signal every h periods, held h periods on the h-period return straight from the prices
    nb = len(t) // h
    starts = t[np.arange(nb) * h]
    pos = signal[np.arange(nb) * h]
    blk = pos * (p[starts + h] / p[starts] - 1) - COST * 1e-4 * np.abs(np.diff(pos, prepend=0.0))
    qb = trading_metrics(signal, one, cost_bps=COST, horizon=h, hold="blocks")
    for k, v in empyrical_figures(blk, 252 / h).items(): assert close(qb[k], v), (h, "blocks", k, qb[k], v)
    return one

def test_trading_metrics_equal_empyrical_on_sp500_at_every_horizon():
    sp = load_sp500()
    for h in HORIZONS:
        w, signal = windows_at(sp, h)
        one = check_series(sp["Close"], w.end_dates, signal, h)
        np.testing.assert_allclose(w.forward_returns, one, rtol=0, atol=1e-15)   # the windows carry one-period returns

def test_trading_metrics_equal_empyrical_on_a_synthetic_panel():
    panel = multi_symbol("random_walk", [f"S{i}" for i in range(5)], n=2000, seed=3)
    for h in HORIZONS:
        w, signal = windows_at(panel, h)
        syms = w.symbols
        eq(sorted(set(syms)), [f"S{i}" for i in range(5)])
        for s in sorted(set(syms)):
            m = syms == s
            prices = panel.loc[panel["symbol"] == s, "Close"]
            one = check_series(prices, w.end_dates[m], signal[m], h)
            np.testing.assert_allclose(w.forward_returns[m], one, rtol=0, atol=1e-15)

def test_buy_and_hold_sharpe_does_not_depend_on_the_horizon():
    sp = load_sp500()
    got = {}
    for h in HORIZONS:
        w, _ = windows_at(sp, h)
        got[h] = pd.Series(w.forward_returns, index=w.end_dates)
    common = got[1].index.intersection(got[5].index).intersection(got[20].index)
    assert len(common) > 500
    sharpes = {h: trading_metrics(np.ones(len(common)), r.loc[common].to_numpy())["sharpe"] for h, r in got.items()}
    eq(sharpes[1], sharpes[5]); eq(sharpes[1], sharpes[20])
    p, t = sp["Close"].to_numpy(), sp.index.get_indexer(common)
    assert close(sharpes[1], empyrical.sharpe_ratio(p[t + 1] / p[t] - 1))

def test_edge_cases_are_documented_values():
    one = trading_metrics([1], [-0.02], log_returns=False)
    eq((one["sharpe"], one["sortino"]), (0.0, 0.0))                  # fewer than 2 periods: no risk estimate
    never = trading_metrics([1, 1, 1], [0.01, 0.02, 0.01], log_returns=False)
    eq((never["sortino"], never["calmar"]), (RATIO_CAP, RATIO_CAP))   # a maximiser ranks a gain without risk best
    assert math.isinf(empyrical.sortino_ratio(np.array([0.01, 0.02, 0.01])))   # where empyrical says +inf
    flat = trading_metrics([0, 0, 0], [0.01, -0.02, 0.03])
    eq((flat["sharpe"], flat["sortino"], flat["calmar"]), (0.0, 0.0, 0.0))
