"""The data layer across modules. Nothing evaluated reaches training, through prepare (frames, features, splits,
scalers, windows): purge and embargo for every validation scheme, single symbols and panels with gaps; scalers blind to
evaluation rows and prices; the embargo covering the features (every price on an evaluation block's dates multiplied by
1e6 leaves that fold's training inputs, targets and scaler statistics bit-identical). The packaged data loads offline.
The units are tested in nbs/02_data.*."""
import socket, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails

from qtnb.data import DataConfig, FEATURES, Prepared, feature_specs, prepare, validate_frame
from qtnb.datasets import load_sp500, multi_symbol, random_walk


def _spans(frame, w, L, hmax):
    "End, label-end and window-start positions on the frame's date axis for each window, computed from the frame alone."
    axis = frame.index.unique().sort_values()
    ends, syms = w.end_dates, w.symbols
    out = np.zeros((len(ends), 3), dtype=np.int64)
    groups = {None: frame} if syms is None else {s: g for s, g in frame.groupby("symbol")}
    keys = [None] * len(ends) if syms is None else list(syms)
    for s, g in groups.items():
        sel = np.array([k == s for k in keys])
        if not sel.any(): continue
        r = g.index.get_indexer(ends[sel])
        assert (r >= 0).all()
        out[sel, 0] = axis.get_indexer(g.index[r])
        out[sel, 1] = axis.get_indexer(g.index[r + hmax])
        out[sel, 2] = axis.get_indexer(g.index[r - L + 1])
    return out


def _blocks(pos):
    "Runs of consecutive positions."
    pos = np.unique(pos)
    brk = np.flatnonzero(np.diff(pos) != 1) + 1
    return [(int(a[0]), int(a[-1])) for a in np.split(pos, brk)]


def assert_no_leak(pr: Prepared, frame: pd.DataFrame, folds=None):
    c = pr.config
    L, hmax, emb = c.seq_len, max(c.all_horizons), c.embargo
    frame = validate_frame(frame)
    for f in folds or pr.folds:
        tr = _spans(frame, f.train, L, hmax)
        evals = [w for w in (f.val, f.test) if w is not None]
        assert evals, f"{f.name} has nothing to evaluate on"
        ev = np.concatenate([_spans(frame, w, L, hmax) for w in evals])
        for a, b in _blocks(ev[:, 0]):
            inside = (ev[:, 0] >= a) & (ev[:, 0] <= b)
            LE = ev[inside, 1].max()
            assert not ((tr[:, 0] >= a) & (tr[:, 0] <= b)).any(), f"{f.name}: a training window ends inside an evaluation range"
            before = tr[:, 0] < a
            # no training target horizon reaches into the evaluation range
            assert (tr[before, 1] < a).all(), f"{f.name}: a training target reaches the evaluation range at {a}"
            after = tr[:, 0] > b
            # no training window starts before the evaluation targets end plus the embargo
            assert (tr[after, 2] > LE + emb).all(), f"{f.name}: a training window starts within the embargo after {b}"
        if f.val is not None and f.test is not None:
            va, te = _spans(frame, f.val, L, hmax), _spans(frame, f.test, L, hmax)
            assert va[:, 1].max() < te[:, 0].min(), f"{f.name}: a validation target reaches the test range"


SCHEMES = [
    dict(validation="holdout"),
    dict(validation="holdout", horizons=[1, 5, 10], embargo=100),
    dict(validation="walk_forward", n_folds=4),
    dict(validation="walk_forward", n_folds=4, train_window="sliding", max_train_size=150, horizon=5),
    dict(validation="purged_kfold", n_folds=5, embargo=100),
    dict(validation="purged_kfold", n_folds=4, horizon=3, purge=7),
    dict(validation="stratified_kfold", n_folds=3, target="direction", features=["returns"], embargo=25),
    dict(validation="stratified_kfold", n_folds=3, horizons=[1, 2]),
]


@pytest.mark.parametrize("kw", SCHEMES, ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_no_leak_single_symbol(kw):
    df = random_walk(1200, seed=3)
    pr = prepare(DataConfig(seq_len=24, cache=False, **kw), df)
    assert_no_leak(pr, df)


@pytest.mark.parametrize("kw", SCHEMES[::2], ids=lambda k: "-".join(f"{v}" for v in k.values()))
def test_no_leak_multi_symbol_with_gaps(kw):
    df = multi_symbol("random_walk", ("AAA", "BBB", "CCC"), n=700)
    # BBB misses every 7th date and CCC starts late: rows are no longer date positions
    bbb = (df.symbol == "BBB") & (np.arange(len(df)) % 7 == 3)
    ccc = (df.symbol == "CCC") & (df.index < df.index[150])
    df = df[~(bbb | ccc)]
    pr = prepare(DataConfig(seq_len=16, cache=False, **kw), df)
    assert_no_leak(pr, df)
    for f in pr.folds:  # windows never cross symbols
        w = f.train
        e = w.ends.numpy()
        assert (w._symbols[e - w.seq_len + 1] == w._symbols[e]).all()


def test_no_leak_leave_one_out():
    df = random_walk(160, seed=1)
    pr = prepare(DataConfig(seq_len=8, validation="leave_one_out", embargo=6, features=["logret_1", "vol_5"], cache=False), df)
    assert len(pr.folds) > 100
    assert_no_leak(pr, df, folds=pr.folds[::9])
    eq(len(pr.folds[50].val), 1)


@pytest.mark.parametrize("kw", [dict(validation="walk_forward", n_folds=5),
                                dict(validation="walk_forward", n_folds=3, train_window="sliding")])
def test_walk_forward_never_trains_after_evaluation(kw):
    df = multi_symbol("random_walk", ("AAA", "BBB"), n=900)
    pr = prepare(DataConfig(seq_len=20, horizon=5, cache=False, **kw), df)
    for f in pr.folds:
        first_eval = min(w.end_dates.min() for w in (f.val, f.test) if w is not None)
        # the last date a training sample uses, its target included, precedes every evaluation date
        tr = _spans(validate_frame(df), f.train, 20, 5)
        axis = df.index.unique().sort_values()
        assert axis[tr[:, 1].max()] < first_eval
        assert f.train.end_dates.max() < f.val.end_dates.min() <= f.val.end_dates.max() < f.test.end_dates.min()
    if kw.get("train_window") == "sliding":  # sliding: equal-length training spans that move forward
        starts = [f.train.end_dates.min() for f in pr.folds]
        assert starts == sorted(starts) and starts[0] < starts[-1]


@pytest.mark.parametrize("validation", ["holdout", "walk_forward", "purged_kfold", "stratified_kfold"])
@pytest.mark.parametrize("scaler", ["standard", "robust", "minmax"])
def test_scaler_ignores_evaluation_rows(validation, scaler):
    df = random_walk(900, seed=5)
    c = DataConfig(seq_len=16, validation=validation, n_folds=3, scaler=scaler, cache=False)
    base = prepare(c, df)
    feats = base.features.copy()
    for i, f in enumerate(base.folds):
        huge = feats.copy()
        for w in (f.val, f.test):
            if w is not None: huge.loc[w.end_dates] = 1e12   # every evaluation row of every feature
        other = Prepared(c, validate_frame(df), huge).folds[i]
        close(other.scaler.center, f.scaler.center, eps=1e-12)
        close(other.scaler.scale, f.scaler.scale, eps=1e-12)


@pytest.mark.parametrize("validation", ["holdout", "walk_forward"])
def test_scaler_ignores_evaluation_prices(validation):
    "In temporal schemes no training row looks at an evaluation price, so even raw prices can be replaced."
    df = random_walk(900, seed=6)
    c = DataConfig(seq_len=16, validation=validation, n_folds=3, cache=False)
    base = prepare(c, df)
    for i, f in enumerate(base.folds):
        cut = min(w.end_dates.min() for w in (f.val, f.test) if w is not None)
        bad = df.copy()
        bad.loc[bad.index >= cut, ["Open", "High", "Low", "Close", "Adj Close", "Volume"]] *= 1e9
        other = prepare(c, bad).folds[i]
        close(other.scaler.center, f.scaler.center, eps=1e-9)
        close(other.target_scaler.center, f.target_scaler.center, eps=1e-12)
        close(other.target_scaler.scale, f.target_scaler.scale, eps=1e-12)


@pytest.mark.cuda
def test_windows_on_cuda():
    df = load_sp500()
    w = prepare(DataConfig(seq_len=64, cache=False), df).folds[0].train
    g = w.to("cuda")
    xb, yb = next(g.batches(256, shuffle=True))
    eq((xb.device.type, xb.shape), ("cuda", (256, 64, w.n_features)))
    eq(g[:8][0].cpu(), w[:8][0])
    eq(g.targets().cpu(), w.targets())


# ---------------------------------------------------------------- the embargo covers the features
EVERY_FEATURE = ["ret_3", "logret_2", "vol_5", "mom_5", "rsi_6", "ma_gap_5", "range", "volume_z_5", "dow", "month", "dom", "trend_10"]
PRICES = ["Open", "High", "Low", "Close", "Adj Close"]
EMBARGO_SCHEMES = [dict(validation="holdout"), dict(validation="walk_forward", n_folds=3), dict(validation="purged_kfold", n_folds=3),
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

@pytest.mark.parametrize("kw", EMBARGO_SCHEMES, ids=lambda k: k["validation"])
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


# ----------------------------------------------------------------------------------------------------
# Project-level checks of the foundation: packaged data and offline loading (settings discovery is shown in nbs/00_config.ipynb).
def test_sp500_loads_without_network(monkeypatch):
    def no_net(*a, **k): raise AssertionError("network touched")
    monkeypatch.setattr(socket, "socket", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)
    df = load_sp500()
    eq(df.shape, (5031, 6))
    eq(list(df.columns), ["Open", "High", "Low", "Close", "Adj Close", "Volume"])

def test_data_ships_in_the_package():
    # the CSVs travel as package data, so an installed qtnb (not only a checkout) has them
    out = subprocess.run([sys.executable, "-c", "import qtnb.datasets as d; print(d.DATA_DIR)"],
                         capture_output=True, text=True, cwd="/", check=True).stdout.strip()
    assert (Path(out) / "sp500.csv.gz").is_file() and (Path(out) / "README.md").is_file()
