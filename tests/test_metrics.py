"""Properties of qtnb.metrics that hold on any input hypothesis draws (the scores against scikit-learn and the
hand-computed trading references are the examples in nbs/04_metrics.scores.ipynb and nbs/04b_metrics.trading.ipynb)."""
import math

import numpy as np
from fastcore.test import test_eq as eq, test_close as close
from sklearn import metrics as skm

from qtnb.metrics import backtest, classification_metrics, trading_metrics


# ---------------------------------------------------------------- properties

from hypothesis import given, settings, strategies as st

_ret = st.floats(-0.2, 0.2, allow_nan=False)
_pos = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_pos, _ret), min_size=1, max_size=40), st.floats(0, 50))
def test_trading_invariants(rows, cost):
    pos, r = np.array([p for p, _ in rows]), np.array([x for _, x in rows])
    m = trading_metrics(pos, r, cost_bps=cost, log_returns=False)
    free = trading_metrics(pos, r, log_returns=False)
    bt = backtest(pos, r, cost_bps=cost, log_returns=False)
    assert 0 <= m["max_drawdown"] <= 1
    close(m["max_drawdown"], bt["drawdown"].max(), eps=1e-12)
    close(m["total_return"], bt["equity"].iloc[-1] - 1, eps=1e-12)
    assert m["total_return"] <= free["total_return"] + 1e-12                   # costs never help
    assert all(math.isfinite(m[k]) for k in ("sharpe", "sortino", "calmar", "turnover", "annual_return"))
    perfect = trading_metrics(np.sign(r), r, log_returns=False)
    if (r != 0).any(): eq(perfect["directional_accuracy"], 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=60))
def test_auc_with_ties_matches_sklearn(rows):
    y, s = np.array([a for a, _ in rows]), np.array([b for _, b in rows], dtype=float)
    m = classification_metrics(y, s, from_logits=True)
    if len(set(y)) < 2: assert math.isnan(m["roc_auc"])
    else: close(m["roc_auc"], skm.roc_auc_score(y, s), eps=1e-12)
