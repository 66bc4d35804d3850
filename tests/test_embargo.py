"""The embargo covers the features: multiplying every price on one evaluation block's dates by 1e6 leaves that fold's
training inputs, targets and scaler statistics bit-identical, for every split scheme and every built-in feature."""
import numpy as np
import pytest
import torch

from fastcore.test import test_eq as eq, test_fail as fails
from qtnb.data import DataConfig, FEATURES, feature_specs, prepare
from qtnb.datasets import multi_symbol, random_walk
from qtnb.errors import ConfigError

EVERY_FEATURE = ["ret_3", "logret_2", "vol_5", "mom_5", "rsi_6", "ma_gap_5", "range", "volume_z_5", "dow", "month", "dom", "trend_10"]
PRICES = ["Open", "High", "Low", "Close", "Adj Close"]
SCHEMES = [dict(validation="holdout"), dict(validation="walk_forward", n_folds=3), dict(validation="purged_kfold", n_folds=3),
           dict(validation="stratified_kfold", n_folds=2), dict(validation="leave_one_out")]

def test_every_builtin_feature_is_covered():
    eq(sorted({s.base for s in feature_specs(EVERY_FEATURE)}), sorted(FEATURES))
    assert all(s.lookback is not None for s in feature_specs(EVERY_FEATURE))

def blown_up(frame, dates):
    out = frame.copy()
    out.loc[out.index.isin(dates), [c for c in PRICES if c in out]] *= 1e6
    return out

def leaks(c: DataConfig, frame, folds) -> list[str]:
    "What changed in each fold's training data when its evaluation dates' prices are multiplied by 1e6."
    base = prepare(c, frame)
    found = []
    for i in folds:
        f = base.folds[i]
        dates = np.unique(np.concatenate([w.end_dates for w in (f.val, f.test) if w is not None]))
        g = prepare(c, blown_up(frame, dates), plan=base.plan).folds[i]     # the same plan (stratified deals by returns)
        (x0, y0), (x1, y1) = f.train[:], g.train[:]
        eq(f.train.ends.tolist(), g.train.ends.tolist())
        if not torch.equal(x0, x1): found.append(f"{f.name}: inputs")
        if not torch.equal(y0, y1): found.append(f"{f.name}: targets")
        if not (np.array_equal(f.scaler.center, g.scaler.center) and np.array_equal(f.scaler.scale, g.scaler.scale)):
            found.append(f"{f.name}: scaler")
        for sym, sc in f.symbol_scalers.items():                       # a panel's per-symbol scalers
            if not (np.array_equal(sc.center, g.symbol_scalers[sym].center) and np.array_equal(sc.scale, g.symbol_scalers[sym].scale)):
                found.append(f"{f.name}: scaler of {sym}")
        if f.target_scaler is not None and not np.array_equal(f.target_scaler.center, g.target_scaler.center):
            found.append(f"{f.name}: target scaler")
    return found

@pytest.mark.parametrize("kw", SCHEMES, ids=lambda k: k["validation"])
def test_evaluation_prices_never_reach_training_data(kw):
    loo = kw["validation"] == "leave_one_out"
    frame = random_walk(260 if loo else 700, seed=2)
    c = DataConfig(seq_len=6, horizon=2, features=EVERY_FEATURE, cache=False, **kw)
    n = len(prepare(c, frame).folds)
    eq(leaks(c, frame, range(0, n, max(1, n // 4))), [])
    # the default embargo is what protects: an embargo shorter than the longest lookback is refused, naming the feature
    fails(lambda: prepare(c.model_copy(update={"embargo": 5}), frame), contains="lookback of feature 'rsi_6'")

def test_a_panel_split_by_date_keeps_every_symbol_clean():
    panel = multi_symbol("random_walk", ("AAA", "BBB", "CCC"), n=500, seed=4)
    c = DataConfig(seq_len=6, horizon=3, features=EVERY_FEATURE, validation="purged_kfold", n_folds=3, cache=False)
    eq(leaks(c, panel, range(3)), [])
    eq(len(prepare(c, panel).folds[0].symbol_scalers), 3)

def test_without_the_embargo_the_leak_is_there():
    frame = random_walk(700, seed=2)
    c = DataConfig(seq_len=6, horizon=2, features=EVERY_FEATURE, validation="purged_kfold", n_folds=3, embargo=0,
                   allow_feature_overlap=True, cache=False)
    assert "fold 0: inputs" in leaks(c, frame, [0])                   # the test sees a leak when there is one

def test_a_callable_feature_declares_its_lookback():
    frame = random_walk(400, seed=1)
    def spread(df): return df["Close"].rolling(10).mean() / df["Close"] - 1
    fails(lambda: prepare(DataConfig(seq_len=6, validation="purged_kfold", n_folds=3, cache=False), frame,
                          features=["logret_1", spread]), contains="feature 'spread' does not declare its lookback")
    spread.lookback = 10
    p = prepare(DataConfig(seq_len=6, validation="purged_kfold", n_folds=3, cache=False), frame, features=["logret_1", spread])
    eq(p.config.embargo, 10)
