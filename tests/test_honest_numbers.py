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


# ---- significance -------------------------------------------------------------------------------------------------
from scipy import stats as sps
from qtnb.datasets import planted, random_walk
from qtnb.metrics import probabilistic_sharpe
from qtnb.tuner import SearchSpace, Tuner, record_trading

def test_directional_accuracy_carries_n_its_standard_error_and_binomial_p_value():
    rng = np.random.default_rng(4)
    r = rng.normal(0, 0.01, 700); r[::50] = 0.0                       # some periods without a move are not counted
    sig = np.where(rng.random(700) < 0.56, np.sign(r), -np.sign(r))
    m = trading_metrics(sig, r)
    moving = r != 0
    hits = int((np.sign(sig[moving]) == np.sign(r[moving])).sum())
    eq(m["n"], 700)
    assert close(m["directional_accuracy"], hits / moving.sum())
    assert close(m["directional_accuracy_se"], math.sqrt(m["directional_accuracy"] * (1 - m["directional_accuracy"]) / moving.sum()))
    assert close(m["directional_accuracy_pvalue"], sps.binomtest(hits, int(moving.sum()), 0.5).pvalue)

def test_probabilistic_sharpe_follows_bailey_and_lopez_de_prado():
    s = np.random.default_rng(5).standard_t(4, 1000) * 0.01 + 0.0008   # fat tails, some edge
    m = trading_metrics(np.ones(1000), s, log_returns=False)
    sr, g3, g4 = s.mean() / s.std(ddof=1), sps.skew(s), sps.kurtosis(s, fisher=False)
    want = sps.norm.cdf(sr * math.sqrt(999) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr ** 2))
    assert close(m["psr"], want) and close(m["sharpe"], sr * math.sqrt(252))

def study_of(returns: np.ndarray, signal_of, space, tmp, name) -> dict:
    "A 50-trial study whose trials trade `signal_of(params)` on `returns`; its statistics file's deflated Sharpe."
    def strategy(params, trial):
        m = trading_metrics(signal_of(params), returns)
        record_trading(trial, m)                                       # what the Trainer objective records
        return m["sharpe"]
    t = Tuner(space, strategy, direction="maximize", sampler="random", pruner="none", seed=0,
              storage=f"sqlite:///{tmp}/{name}.db", runs_dir=tmp, study_name=name)
    t.optimize(50)
    import json
    return json.loads((t.study_dir / "statistics.json").read_text())["deflated_sharpe"]

def test_deflated_sharpe_of_a_50_trial_study_separates_luck_from_a_planted_signal(tmp_path):
    walk = np.log(random_walk(1000, seed=11)["Close"]).diff().to_numpy()[1:]
    lagged = np.r_[0.0, walk[:-1]]
    luck = study_of(walk, lambda p: np.sign(p["a"] * lagged + np.random.default_rng(p["seed"]).normal(0, 0.01, len(walk))),
                    SearchSpace().uniform("a", -1, 1).int("seed", 0, 10 ** 6), tmp_path, "walk")
    eq(luck["n_trials"], 50)
    assert luck["best_sharpe"] > 1.0, luck                             # the best raw Sharpe looks good ...
    assert luck["p_value"] > 0.05, luck                                # ... and is luck
    pl = np.log(planted(2000, seed=11)["Close"]).diff().to_numpy()[1:]
    half = len(pl) // 2
    def fitted_ar(p):                                                  # a linear model on the first half, traded on the second
        X = np.column_stack([np.r_[np.zeros(k), pl[:-k]] for k in range(1, p["lags"] + 1)])
        w = np.linalg.solve(X[:half].T @ X[:half] + p["ridge"] * np.eye(p["lags"]), X[:half].T @ pl[:half])
        return np.sign(X[half:] @ w)
    real = study_of(pl[half:], fitted_ar, SearchSpace().int("lags", 1, 5).uniform("ridge", 0.0, 0.01), tmp_path, "planted")
    eq(real["n_trials"], 50)
    assert real["p_value"] < 0.05, real                                # an AR signal survives 50 trials


# ---- one definition everywhere: metrics.json, the backtest, the report --------------------------------------------
def test_pipeline_metrics_trade_one_period_returns_at_horizon_5(tmp_path):
    import json
    from qtnb.pipeline import backtest
    rep = backtest(data="sp500", model="linear", horizon=5, seq_len=8, n_folds=2, cost_bps=0, runs_dir=tmp_path, verbose=False)
    m = json.loads((rep.run_dir / "metrics.json").read_text())
    pred = pd.read_csv(rep.run_dir / "predictions.csv", parse_dates=["date"])
    sp = load_sp500()
    p, t = sp["Close"].to_numpy(), sp.index.get_indexer(pred["date"])
    one = np.log(p[t + 1] / p[t])
    np.testing.assert_allclose(pred["forward_return"], one, rtol=0, atol=1e-12)
    want = empyrical_figures(pred["signal"].to_numpy() * np.expm1(one), 252)
    for k in ("sharpe", "sortino", "max_drawdown", "total_return"):
        assert close(m["test"][k], want[k]), k                               # metrics.json
        assert close(m["backtest"]["strategy"][k], want[k]), k               # the backtest's table
    hold = empyrical_figures(np.expm1(one), 252)
    assert close(m["backtest"]["buy_hold"]["sharpe"], hold["sharpe"])
    eq(m["trading"]["hold"], "next")
    assert "t to t+1" in rep.summary()
    for k in ("n", "directional_accuracy_se", "directional_accuracy_pvalue", "psr", "dm_stat", "dm_pvalue"):
        assert math.isfinite(m["test"][k]), k
    eq(m["test"]["n"], len(pred))
    reg = m["by_regime"]                                                     # broken down by regime, every row once
    for kind in ("trend", "volatility", "hmm"):
        eq(sum(r["rows"] for r in reg[kind].values()), len(pred))
    # volatility terciles fitted on each fold's own training dates, never on what it predicts; the calm periods by hand
    from qtnb.data import volatility_regime
    v = np.full(len(pred), np.nan)
    for f in m["folds"]:
        a, b = pd.Timestamp(f["train_dates"][0]), pd.Timestamp(f["train_dates"][1])
        here = (pred["fold"] == f["fold"]).to_numpy()
        v[here] = volatility_regime(sp["Close"], (sp.index >= a) & (sp.index <= b)).reindex(pred["date"][here]).to_numpy()
    calm = v == 0
    assert calm.sum() > 50
    assert close(reg["volatility"]["0"]["total_return"], float(np.prod(1 + pred["signal"].to_numpy()[calm] * np.expm1(one[calm])) - 1))
    eq(reg["volatility"]["0"]["rows"], int(calm.sum()))


def test_tune_pipeline_reports_the_deflated_sharpe_of_its_best_trial(tmp_path):
    import json
    from qtnb.pipeline import tune
    rep = tune(data="synthetic:planted", model="linear", n_trials=3, sampler="random", pruner="none", seq_len=8, epochs=2,
               objective="val_sharpe", runs_dir=tmp_path, verbose=False)
    ds = rep.metrics["study"]["deflated_sharpe"]
    eq(ds["n_trials"], 3); eq(ds["trial"], rep.metrics["study"]["best_trial"])
    stats = json.loads((rep.extra["tuner"].study_dir / "statistics.json").read_text())
    eq(stats["deflated_sharpe"], json.loads(json.dumps(ds)))
    trials = rep.extra["tuner"].study.trials
    assert close(ds["best_sharpe"], max(t.user_attrs["trading"]["sharpe"] for t in trials))


def test_the_tuner_panel_shows_the_deflated_sharpe_of_the_best_trial():
    import optuna
    from qtnb.widgets import TunerPanel
    walk = np.random.default_rng(7).normal(0, 0.01, 300)
    def coin(trial):
        m = trading_metrics(np.sign(np.random.default_rng(trial.suggest_int("s", 0, 10 ** 6)).normal(size=300)), walk)
        record_trading(trial, m)
        return m["sharpe"]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(coin, n_trials=12)
    panel = TunerPanel(study); panel.refresh()
    assert "deflated Sharpe p = " in panel.best.value and "over 12 trials" in panel.best.value
