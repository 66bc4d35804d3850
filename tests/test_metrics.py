"""qtnb.metrics against scikit-learn and against hand-computed references on tiny series."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails
from sklearn import metrics as skm

from qtnb.errors import ConfigError, DataError, QtnbError
from qtnb.metrics import (RATIO_CAP, METRIC_NAMES, MetricTracker, backtest, classification_metrics, compute_metrics, equity_curve,
                          metric_direction, regression_metrics, trading_metrics)


# ---------------------------------------------------------------- regression vs scikit-learn

@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=200)
    p = 0.5 * t + rng.normal(scale=0.7, size=200)
    m = regression_metrics(t, p)
    close(m["mse"], skm.mean_squared_error(t, p), eps=1e-12)
    close(m["rmse"], skm.root_mean_squared_error(t, p), eps=1e-12)
    close(m["mae"], skm.mean_absolute_error(t, p), eps=1e-12)
    close(m["r2"], skm.r2_score(t, p), eps=1e-12)
    close(m["corr"], np.corrcoef(t, p)[0, 1], eps=1e-12)
    close(m["snr_db"], 10 * np.log10(np.sum(t ** 2) / np.sum((t - p) ** 2)), eps=1e-10)


def test_multi_horizon_is_the_uniform_average_sklearn_reports():
    rng = np.random.default_rng(7)
    t = rng.normal(size=(100, 3)) * [1.0, 2.0, 3.0]
    p = t + rng.normal(size=(100, 3)) * [0.1, 1.0, 5.0]
    m = regression_metrics(t, p, per_horizon=True)
    close(m["mse"], skm.mean_squared_error(t, p), eps=1e-12)
    close(m["rmse"], skm.root_mean_squared_error(t, p), eps=1e-12)         # mean of per-horizon RMSEs
    close(m["r2"], skm.r2_score(t, p), eps=1e-12)
    close(m["corr"], np.mean([np.corrcoef(t[:, k], p[:, k])[0, 1] for k in range(3)]), eps=1e-12)
    for k in range(3): close(m[f"r2_h{k + 1}"], skm.r2_score(t[:, k], p[:, k]), eps=1e-12)
    eq(regression_metrics(t[:, :1], p[:, :1]), regression_metrics(t[:, 0], p[:, 0]))   # (n, 1) is (n,)


def test_regression_edge_cases():
    m = regression_metrics([0.01, -0.02, 0.03, 0.0], np.full(4, 0.004))         # constant forecast: corr is nan
    assert math.isnan(m["corr"])
    close(m["r2"], skm.r2_score([0.01, -0.02, 0.03, 0.0], np.full(4, 0.004)), eps=1e-12)
    eq(regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["r2"], skm.r2_score([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))
    eq(regression_metrics([1.0, 2.0], [1.0, 2.0])["snr_db"], math.inf)
    m = regression_metrics(torch.tensor([1.0, 2.0, 3.0]), pd.Series([1.0, 2.0, 4.0]))  # tensors and Series accepted
    close(m["mse"], 1 / 3)


# ---------------------------------------------------------------- classification vs scikit-learn

@pytest.mark.parametrize("seed", range(5))
def test_binary_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    logits = 0.8 * (2 * y - 1) + rng.normal(size=300)
    logits[:20] = np.round(logits[:20])                                        # some ties for the AUC
    m = classification_metrics(y, logits, from_logits=True)
    pred = (logits >= 0).astype(int)
    eq(m["confusion_matrix"], skm.confusion_matrix(y, pred, labels=[0, 1]).tolist())
    close(m["accuracy"], skm.accuracy_score(y, pred), eps=1e-12)
    close(m["precision"], skm.precision_score(y, pred, average="binary", zero_division=0), eps=1e-12)
    close(m["recall"], skm.recall_score(y, pred, average="binary", zero_division=0), eps=1e-12)
    close(m["f1"], skm.f1_score(y, pred, average="binary", zero_division=0), eps=1e-12)
    close(m["roc_auc"], skm.roc_auc_score(y, logits), eps=1e-12)
    p = 1 / (1 + np.exp(-logits))                                              # the same as probabilities, (n, 1)
    m2 = classification_metrics(y, p[:, None])
    for k in ("accuracy", "precision", "recall", "f1", "roc_auc"): close(m2[k], m[k], eps=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_three_classes_match_sklearn_macro_and_ovr(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), y] += 1.0
    m = classification_metrics(y, torch.tensor(logits), n_classes=3)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = logits.argmax(1)
    eq(m["confusion_matrix"], skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist())
    close(m["accuracy"], skm.accuracy_score(y, pred), eps=1e-12)
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        close(m[name], fn(y, pred, average="macro", zero_division=0), eps=1e-12)
    close(m["roc_auc"], skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), eps=1e-12)
    eq(classification_metrics(y, probs, n_classes=3)["confusion_matrix"], m["confusion_matrix"])  # probabilities too


def test_classification_edge_cases():
    m = classification_metrics([1, 1, 1, 1], [0.9, 0.2, 0.7, 0.6])              # one class: no AUC, no crash
    assert math.isnan(m["roc_auc"])
    eq(m["accuracy"], 0.75)
    m = classification_metrics([0, 0, 1], [-1.0, -2.0, -3.0])                   # nothing predicted up: precision 0
    eq((m["precision"], m["recall"], m["f1"]), (0.0, 0.0, 0.0))
    eq(skm.precision_score([0, 0, 1], [0, 0, 0], zero_division=0), 0.0)
    m = classification_metrics([0, 0, 2, 2], np.eye(3)[[0, 0, 2, 1]], n_classes=3)  # class 1 absent from y_true
    close(m["roc_auc"], np.mean([skm.roc_auc_score([1, 1, 0, 0], [1, 1, 0, 0]), skm.roc_auc_score([0, 0, 1, 1], [0, 0, 1, 0])]))
    eq(all(isinstance(v, int) for row in m["confusion_matrix"] for v in row), True)
    fails(lambda: classification_metrics([0, 1, -1], [0.1, 0.2, 0.3]), contains="y_true[2] = -1 is not a class label")
    fails(lambda: classification_metrics([0.5, 1], [0.1, 0.2]), contains="y_true[0] = 0.5")
    fails(lambda: classification_metrics([0, 1], [0.1, 0.2], n_classes=1), contains="n_classes=1 is invalid")


# ---------------------------------------------------------------- trading: hand-computed references

def test_trading_hand_computed_with_costs():
    # positions 1, 1, -1, -1, 0 over simple returns +2%, -1%, -3%, +1%, +5%; 10 bp per unit traded
    pos, r = [1, 1, -1, -1, 0], [0.02, -0.01, -0.03, 0.01, 0.05]
    cost = [0.001, 0.0, 0.002, 0.0, 0.001]                                     # |Δpos| = 1, 0, 2, 0, 1
    s = np.array([0.02 - 0.001, -0.01, 0.03 - 0.002, -0.01, -0.001])
    eq_ = np.cumprod(1 + s)                                                    # 1.019, 1.00881, 1.036..., 1.0259..., 1.0249...
    m = trading_metrics(pos, r, cost_bps=10, periods_per_year=252, log_returns=False)
    close(equity_curve(pos, r, cost_bps=10, log_returns=False), eq_, eps=1e-12)
    close(m["total_return"], eq_[-1] - 1, eps=1e-12)
    mean, sd = s.mean(), s.std(ddof=1)
    close(m["sharpe"], mean / sd * math.sqrt(252), eps=1e-10)
    close(m["annual_volatility"], sd * math.sqrt(252), eps=1e-12)
    dd = math.sqrt((0.01 ** 2 + 0.01 ** 2 + 0.001 ** 2) / 5)
    close(m["sortino"], mean / dd * math.sqrt(252), eps=1e-10)
    e = [1.019, 1.019 * 0.99, 1.019 * 0.99 * 1.028, 1.019 * 0.99 * 1.028 * 0.99, 1.019 * 0.99 * 1.028 * 0.99 * 0.999]
    close(eq_, e, eps=1e-12)
    mdd = max(1 - e[1] / e[0], 1 - e[4] / e[2])                                 # two drawdowns; the second is deeper
    close(m["max_drawdown"], mdd, eps=1e-12)
    close(mdd, 1 - 0.99 * 0.999, eps=1e-12)
    annual = e[-1] ** (252 / 5) - 1
    close(m["annual_return"], annual, eps=1e-9)
    close(m["calmar"], annual / mdd, eps=1e-6)
    close(m["turnover"], (1 + 0 + 2 + 0 + 1) / 5, eps=1e-12)
    close(m["hit_rate"], 2 / 4, eps=1e-12)                                     # in the market 4 periods; 2 gained
    close(m["directional_accuracy"], 2 / 5, eps=1e-12)                          # the flat last period is a miss
    close(m["exposure"], 0.8, eps=1e-12)


def test_drawdown_counts_from_the_starting_equity():
    m = trading_metrics([1, 1, 1], [-0.10, -0.10, 0.50], log_returns=False)
    close(m["max_drawdown"], 1 - 0.9 * 0.9, eps=1e-12)                          # peak is the initial 1
    close(m["total_return"], 0.81 * 1.5 - 1, eps=1e-12)
    close(m["calmar"], min(RATIO_CAP, ((0.81 * 1.5) ** (252 / 3) - 1) / 0.19), eps=1e-6)   # 3 periods annualised: capped


def test_quarterly_annualisation_and_log_returns():
    r_simple = np.array([0.05, -0.02, 0.03, 0.01])
    m_log = trading_metrics(np.ones(4), np.log1p(r_simple), periods_per_year=4)
    m_simple = trading_metrics(np.ones(4), r_simple, periods_per_year=4, log_returns=False)
    for k in m_log: close(m_log[k], m_simple[k], eps=1e-12)
    close(m_simple["annual_return"], np.prod(1 + r_simple) - 1, eps=1e-12)      # 4 quarters = one year
    close(m_simple["sharpe"], r_simple.mean() / r_simple.std(ddof=1) * 2, eps=1e-12)
    close(m_simple["turnover"], 0.25, eps=1e-12)                                 # one entry over 4 periods


def test_zero_volatility_and_flat_strategies():
    z = trading_metrics(np.zeros(10), np.linspace(-0.01, 0.01, 10))
    eq((z["sharpe"], z["sortino"], z["calmar"], z["max_drawdown"], z["turnover"], z["total_return"]), (0.0,) * 6)
    assert math.isnan(z["hit_rate"])
    c = trading_metrics(np.ones(5), np.full(5, 0.001), log_returns=False)      # constant gain: no volatility, no losses
    eq((c["sharpe"], c["sortino"], c["calmar"]), (RATIO_CAP, RATIO_CAP, RATIO_CAP))  # the documented cap: ranked best
    assert all(math.isfinite(v) for k, v in c.items() if k != "hit_rate")


def test_short_positions_and_fractions():
    m = trading_metrics([-0.5, -0.5], [-0.10, 0.10], log_returns=False)
    close(m["total_return"], 1.05 * 0.95 - 1, eps=1e-12)
    close(m["turnover"], 0.25, eps=1e-12)


def test_backtest_table():
    dates = pd.date_range("2022-01-03", periods=5, freq="B")
    r = pd.Series([0.02, -0.01, -0.03, 0.01, 0.05], index=dates)
    bt = backtest([1, 1, -1, -1, 0], r, cost_bps=10, log_returns=False)
    eq(list(bt.columns), ["position", "asset_return", "cost", "strategy_return", "equity", "drawdown", "buy_hold"])
    eq(bt.index, dates)
    close(bt["cost"].to_numpy(), [0.001, 0, 0.002, 0, 0.001], eps=1e-12)
    close(bt["buy_hold"].to_numpy(), np.cumprod(1 + r.to_numpy()), eps=1e-12)
    close(bt["drawdown"].max(), bt.attrs["metrics"]["max_drawdown"], eps=1e-12)
    close(bt["equity"].iloc[-1] - 1, bt.attrs["metrics"]["total_return"], eps=1e-12)
    bench = backtest([1, 1, -1, -1, 0], r, cost_bps=10, log_returns=False, benchmark=np.full(5, 0.01))
    close(bench["buy_hold"].iloc[-1], 1.01 ** 5, eps=1e-12)


# ---------------------------------------------------------------- compute_metrics and signals

def test_compute_metrics_signals():
    r = np.array([0.01, -0.02, 0.015, -0.005, 0.0])
    # regression: the sign of the predicted return is the position
    m = compute_metrics("regression", r, [0.3, 0.1, -0.2, -0.1, 0.2], forward_returns=r, log_returns=False)
    ref = trading_metrics([1, 1, -1, -1, 1], r, log_returns=False)
    for k in ref: close(m[k], ref[k], eps=1e-12)
    close(m["mse"], skm.mean_squared_error(r, [0.3, 0.1, -0.2, -0.1, 0.2]))
    # binary: 2p - 1
    logits = np.array([2.0, -1.0, 0.0, 0.5, -3.0])
    p = 1 / (1 + np.exp(-logits))
    m = compute_metrics("classification", (r > 0).astype(int), logits, forward_returns=r, cost_bps=5, from_logits=True)
    ref = trading_metrics(2 * p - 1, r, cost_bps=5)
    for k in ref: close(m[k], ref[k], eps=1e-12)
    # three classes: p(up) - p(down)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])
    m = compute_metrics("classification", [0, 2, 1, 2, 1], probs, forward_returns=r, n_classes=3)
    ref = trading_metrics(probs[:, 2] - probs[:, 0], r)
    for k in ref: close(m[k], ref[k], eps=1e-12)
    close(m["accuracy"], 0.8)                                                    # argmax: 0, 2, 1, 2, 0 (a tie goes to the first)
    assert set(m) <= set(METRIC_NAMES), set(m) - set(METRIC_NAMES)


def test_empty_and_bad_inputs_are_one_line_data_errors():
    calls = [lambda: regression_metrics([], []), lambda: classification_metrics([], []),
             lambda: trading_metrics([], []), lambda: equity_curve([], []), lambda: backtest([], []),
             lambda: compute_metrics("regression", np.array([]), np.array([])),
             lambda: regression_metrics([1.0, np.nan], [1.0, 2.0]), lambda: trading_metrics([1, 1], [0.1, np.inf]),
             lambda: regression_metrics(["a", "b"], [1, 2])]
    for f in calls:
        with pytest.raises(DataError) as e: f()
        assert "\n" not in str(e.value) and len(str(e.value)) < 200, str(e.value)
    with pytest.raises(ConfigError): compute_metrics("ranking", [1.0], [1.0])
    with pytest.raises(ConfigError): trading_metrics([1], [0.1], periods_per_year=0)


# ---------------------------------------------------------------- direction and tracker

def test_metric_direction():
    for n in ("loss", "train_loss", "val_loss", "val_mse", "test_rmse", "mae", "val_max_drawdown", "max_drawdown",
              "turnover", "val_turnover"):
        eq(metric_direction(n), "minimize")
    for n in ("val_sharpe", "test_sortino", "r2", "corr", "snr_db", "val_accuracy", "roc_auc", "f1", "calmar",
              "hit_rate", "total_return", "directional_accuracy"):
        eq(metric_direction(n), "maximize")


def test_tracker_follows_a_fit():
    t = MetricTracker("val_sharpe")
    eq(t.mode, "maximize")
    vals = [0.1, 0.5, 0.4, 0.6, 0.6, 0.2]
    improved = [t.update(e, {"train_loss": 1.0 / (e + 1), "val_sharpe": v, "val_cm": [[1, 0], [0, 1]]})
                for e, v in enumerate(vals, 1)]
    eq(improved, [True, True, False, True, False, False])                       # ties do not improve
    eq((t.best, t.best_epoch, t.epochs_since_improvement), (0.6, 4, 2))
    eq(t.best_metrics["train_loss"], 0.2)
    close(t.running_mean("val_sharpe", 3), (0.6 + 0.6 + 0.2) / 3)
    close(t.running_mean("val_sharpe", 100), np.mean(vals))
    df = t.to_frame()
    eq(len(df), 6); eq(list(df.index), list(range(1, 7))); assert "val_cm" not in df
    s = t.summary()
    eq((s["best"], s["best_epoch"], s["epochs"], s["mode"]), (0.6, 4, 6, "maximize"))
    close(s["best_by_metric"]["train_loss"], 1 / 7)
    eq(s["latest"]["val_sharpe"], 0.2)
    t2 = MetricTracker("val_loss", mode="max")
    eq(t2.mode, "maximize")
    t3 = MetricTracker("val_loss", min_delta=0.05)
    eq([t3.update(e, {"val_loss": v}) for e, v in enumerate([1.0, 0.97, 0.9, torch.tensor(0.8), np.float32(0.7)])],
       [True, False, True, True, True])
    assert isinstance(t3.latest["val_loss"], float)


def test_tracker_names_a_misspelt_monitor():
    t = MetricTracker("val_loss")
    with pytest.raises(ConfigError, match="did you mean val_loss_total"): t.update(0, {"val_loss_total": 1.0})
    eq(len(t.history), 0)
    eq(t.update(1, {"train_loss": 1.0}), False)                                 # no validation this epoch
    eq(t.best, None)


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
