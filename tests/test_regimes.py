"""Regime labels are causal: changing any value after t never changes a label at or before t (the fitted ones fitted
on training rows that end before t), for the trend, volatility and HMM regimes; and metrics break down by regime."""
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
