"Panel features, and prepare's rows kept, date positions, targets and scaling, run for all symbols at once: they must equal the per-symbol computation."
import numpy as np
import pandas as pd
import pytest
from fastcore.test import test_close as close, test_eq as eq

from qtnb.data import FEATURES, DataConfig, compute_features, feature_specs, prepare, validate_frame
from qtnb.data.features import _one_symbol
from qtnb.datasets import random_walk


def _panel(seed=3):
    "Four symbols of different lengths (one starts late, one ends early), one with constant volume stretches."
    df = random_walk(400, n_symbols=4, seed=seed)
    k = np.arange(len(df)) % 400
    df = df[~(((df.symbol == "S01") & (k < 90)) | ((df.symbol == "S02") & (k > 250)))].copy()
    j = df.groupby("symbol").cumcount().to_numpy()
    df.loc[(df.symbol == "S03").to_numpy() & (j % 50 < 25), "Volume"] = 1e6   # runs of equal values: a std of exactly 0
    return df


def _every(window):
    return [f"{k}_{window}" if w else k for k, (_, w, _) in FEATURES.items()]


def _per_symbol(df, names):
    "The reference: each symbol's frame through the per-symbol feature functions (the pre-panel path), in float64."
    specs = feature_specs(names)
    return pd.concat([_one_symbol(g, specs, "Close") for _, g in df.groupby("symbol", sort=True)])


@pytest.mark.parametrize("window", [1, 2, 7, 20])
def test_every_builtin_feature_equals_the_per_symbol_computation(window):
    df = _panel()
    names = _every(window)
    fast, slow = compute_features(df, names), _per_symbol(df, names)
    eq(list(fast.columns), list(slow.columns))
    assert (fast.dtypes == np.float32).all()
    for c in fast.columns:   # same NaN pattern (warm-ups per symbol, no window across symbols), values within float32
        a, b = fast[c].to_numpy(dtype="float64"), slow[c].to_numpy()
        eq((c, np.isnan(a).tolist()), (c, np.isnan(b).tolist()))
        np.testing.assert_allclose(a, b, rtol=3e-6, atol=1e-6, err_msg=c)


def test_unsorted_panel_through_prepare_equals_the_per_symbol_computation():
    df = _panel(seed=8)
    shuffled = df.reset_index().sort_values(["Date", "symbol"], ascending=[True, False]).set_index("Date")  # interleaved
    names = ["default", "calendar", "mom_5", "ret_3", "trend_30"]
    p = prepare(DataConfig(features=names, seq_len=8, validation="holdout", cache=False), shuffled)
    raw = p.features                                  # read before any fold scales the matrix
    slow = _per_symbol(df, names)
    eq(list(p.frame.symbol.unique()), ["S00", "S01", "S02", "S03"])
    np.testing.assert_allclose(raw.to_numpy(dtype="float64"), slow.to_numpy(), rtol=3e-6, atol=1e-6)
    assert np.shares_memory(p.folds[0].train.x.numpy(), p._F)      # one fold: scaled in place, windows are views
    np.testing.assert_allclose(p.features.to_numpy(), raw.to_numpy(), rtol=1e-5, atol=1e-6)   # raw values come back


def test_folds_of_a_multi_fold_plan_do_not_share_their_scaling():
    df = random_walk(600, n_symbols=3, seed=1)
    c = DataConfig(seq_len=8, validation="walk_forward", n_folds=3, cache=False)
    a, b = prepare(c, df), prepare(c, df)
    xa = [f.train.x.numpy().copy() for f in a.folds]                  # built in order
    xb = [f.train.x.numpy().copy() for f in reversed(b.folds)][::-1]  # built in reverse order
    for u, v in zip(xa, xb): np.testing.assert_array_equal(u, v)
    assert not np.array_equal(xa[0], xa[1], equal_nan=True)


def test_panel_rows_of_a_symbol_block_must_be_together():
    df = random_walk(50, n_symbols=2, seed=0)
    split = pd.concat([df.iloc[:20], df.iloc[50:], df.iloc[20:50]])   # S00 in two blocks
    with pytest.raises(Exception, match="must be together"): compute_features(split, ["logret_1"])
    eq(len(compute_features(validate_frame(split), ["logret_1"])), 100)


def _ragged_panel(seed=11):
    "30 symbols, 71,000 rows (several chunks of every chunked step): one starts late, one ends early, one misses a tenth of its dates, one a month."
    df = random_walk(2400, n_symbols=30, seed=seed)
    k, sym = np.arange(len(df)) % 2400, df.symbol.to_numpy()
    holes = np.random.default_rng(seed).random(len(df)) < 0.1
    drop = ((sym == "S01") & (k < 150)) | ((sym == "S02") & (k > 1400)) | ((sym == "S03") & holes) | ((sym == "S04") & (k >= 300) & (k < 330))
    return df[~drop]


@pytest.fixture(scope="module")
def ragged():
    df = _ragged_panel()
    return df, _per_symbol(df, ["default"]).to_numpy()


@pytest.mark.parametrize("horizons", [[1], [1, 3]])
def test_panel_prepare_equals_the_plain_per_symbol_computation(ragged, horizons):
    "Features, rows kept, date positions, targets and per-symbol scaling run over all symbols at once: the per-symbol loop's numbers."
    df, slow = ragged
    c = DataConfig(features=["default"], seq_len=8, horizons=horizons, validation="holdout", cache=False)
    p = prepare(c, df)
    raw = p.features.to_numpy()                       # read before the fold scales the matrix in place
    np.testing.assert_allclose(raw, slow, rtol=3e-6, atol=1e-6)
    f, H, L = p.folds[0], max(horizons), c.seq_len
    x, y, ts = f.train.x.numpy(), f.train.y.numpy(), f.target_scaler
    same = np.testing.assert_array_equal                # fastcore's test_eq walks long lists element by element: slow
    same(p._all_dates.asi8, np.unique(p.frame.index.asi8))
    sym = p.frame.symbol.to_numpy()
    eq(sorted({len(g) for _, g in p.frame.groupby("symbol")}), [1401, 2143, 2250, 2370, 2400])   # unequal lengths
    for k, name in enumerate(p._symbol_names):
        rows = np.flatnonzero(sym == name); a, b = rows[0], rows[-1] + 1
        same(rows, np.arange(a, b))
        g = p.frame.iloc[a:b]
        same(p._pos[a:b], p._all_dates.get_indexer(g.index))                            # each row's date on the panel's axis
        ok = np.isfinite(raw[a:b]).all(1)
        first = a + int(np.argmax(ok))                                                  # past this symbol's feature warm-up
        eq((p._first[k], p._last[k]), (first, b - H))
        same(np.flatnonzero(p._is_end[a:b]), np.arange(first + L - 1 - a, b - H - a))
        lp = np.log(g["Close"].to_numpy())
        for j, h in enumerate(horizons):                                                # h rows later in this symbol
            ref = np.full(b - a, np.nan, dtype=np.float32); ref[:-h] = lp[h:] - lp[:-h]
            same(y[a:b, j], ((ref.astype("float64") - ts.center[j]) / ts.scale[j]).astype(np.float32))
        s = f.symbol_scalers[name]                                                      # this symbol's own scaler
        same(x[a:b], ((raw[a:b].astype("float64") - s.center) / s.scale).astype(np.float32))
    ends, owner = f.train.ends.numpy(), f.train.symbols
    for name in p._symbol_names:                      # each scaler is fitted on its own symbol's training-window rows only
        rows = np.unique(np.concatenate([np.arange(e - L + 1, e + 1) for e in ends[owner == name]]))
        fit = raw[rows].astype("float64")
        close(f.symbol_scalers[name].center, fit.mean(0), eps=1e-9); close(f.symbol_scalers[name].scale, fit.std(0), eps=1e-9)
