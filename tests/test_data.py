"""Leak tests for every validation scheme, scaler isolation, and the Windows contract other modules rely on."""
import numpy as np
import pandas as pd
import pytest
import torch
from fastcore.test import test_eq as eq, test_close as close

from qtnb.data import DataConfig, Prepared, Windows, compute_features, prepare, validate_frame
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


def test_targets_align_with_prices():
    df = load_sp500()
    pr = prepare(DataConfig(horizons=[1, 5], seq_len=32, cache=False), df)
    w = pr.folds[0].test
    y = pr.folds[0].inverse_target(w.targets()).numpy()
    r = df.index.get_indexer(w.end_dates)
    p = df["Close"].to_numpy()
    close(y[:, 0], np.log(p[r + 1] / p[r]), eps=1e-5)
    close(y[:, 1], np.log(p[r + 5] / p[r]), eps=1e-5)
    close(w.forward_returns, np.log(p[r + 1] / p[r]), eps=1e-6)


def test_classification_labels():
    df = load_sp500()
    f = prepare(DataConfig(target="direction", seq_len=32, cache=False), df).folds[0]
    w = f.train
    eq((w.task, w.n_outputs, w.y.dtype, w.targets().shape), ("classification", 1, torch.int64, (len(w),)))
    eq(w.targets().numpy(), (w.forward_returns > 0).astype(np.int64))
    eq(f.inverse_target(w.targets()) is not None, True)


def test_windows_contract():
    df = random_walk(700, seed=2)
    f = prepare(DataConfig(seq_len=30, cache=False), df).folds[0]
    w = f.train
    n, L, F = len(w), w.seq_len, w.n_features
    v = w.view()
    eq(v.shape, (n, L, F))
    assert v.untyped_storage().data_ptr() == w.x.untyped_storage().data_ptr()  # a view, not a copy
    idx = torch.tensor([0, 5, n - 1])
    xb, yb = w[idx]
    e = w.ends[idx]
    for k in range(3):
        eq(xb[k], w.x[e[k] - L + 1: e[k] + 1])
        eq(yb[k], w.y[e[k]])
    eq(w[np.array([1, 2])][0], w[1:3][0])
    last = int(w.ends[-1])
    eq(w[-1][0], w.x[last - L + 1: last + 1])
    batches = list(w.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0)))
    eq(sum(len(b[0]) for b in batches), n)
    eq(len(list(w.batches(64, drop_last=True))), n // 64)
    eq(w.flat(3).shape, (n, 3 * F))
    eq(w.flat(3)[:, -F:], w.x[w.ends].numpy())
    x_np, y_np = w.numpy()
    eq((x_np.shape, x_np.dtype), ((n, L, F), np.float32))
    # memory: the series and targets, plus a run table, never n x seq_len copies
    assert w.nbytes <= 1.05 * (w.x.nbytes + w.y.nbytes)
    # train, val and test of a fold share one scaled array
    assert f.train.x.data_ptr() == f.val.x.data_ptr() == f.test.x.data_ptr()


def test_features_match_hand_computation():
    df = random_walk(200, seed=4)
    f = compute_features(df, ["logret_5", "vol_10", "ma_gap_10", "range", "rsi_14"])
    c = df["Close"].to_numpy()
    close(f["logret_5"].iloc[50], np.log(c[50] / c[45]))
    close(f["vol_10"].iloc[50], np.std(np.diff(np.log(c[40:51])), ddof=1))
    close(f["ma_gap_10"].iloc[50], c[50] / c[41:51].mean() - 1)
    close(f["range"].iloc[50], (df.High.iloc[50] - df.Low.iloc[50]) / c[50])
    assert ((f["rsi_14"].dropna() >= 0) & (f["rsi_14"].dropna() <= 100)).all()


def test_fingerprint_tracks_data_and_config():
    df = random_walk(300)
    a = prepare(DataConfig(seq_len=16, cache=False), df).fingerprint
    eq(prepare(DataConfig(seq_len=16, cache=False), df.copy()).fingerprint, a)
    df2 = df.copy(); df2.iloc[100, 3] += 1e-6  # Close
    assert prepare(DataConfig(seq_len=16, cache=False), df2).fingerprint != a
    assert prepare(DataConfig(seq_len=17, cache=False), df).fingerprint != a


def test_feature_cache_never_stale(tmp_path):
    df = random_walk(400)
    a = compute_features(df, ["default"], cache=tmp_path)
    eq(len(list(tmp_path.glob("*.npz"))), 1)
    b = compute_features(df, ["default"], cache=tmp_path)      # a hit
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    df2 = df.copy(); df2.iloc[200, 3] *= 1.05                   # changed input
    c = compute_features(df2, ["default"], cache=tmp_path)
    assert not np.allclose(c.iloc[200:221].to_numpy(), a.iloc[200:221].to_numpy())
    d = compute_features(df, ["default", "calendar"], cache=tmp_path)  # changed config
    eq(d.shape[1], a.shape[1] + 3)
    eq(len(list(tmp_path.glob("*.npz"))), 3)
    # a corrupt entry is recomputed, not trusted
    for p in tmp_path.glob("*.npz"): p.write_bytes(b"garbage")
    np.testing.assert_array_equal(compute_features(df, ["default"], cache=tmp_path).to_numpy(), a.to_numpy())


def test_stats_and_plot():
    df = random_walk(900)
    pr = prepare(DataConfig(seq_len=16, validation="walk_forward", n_folds=3, cache=False), df)
    st = pr.stats()
    eq(len(st), 9)
    eq(set(st.split), {"train", "val", "test"})
    eq(st.windows.tolist(), [len(getattr(f, s)) for f in pr.folds for s in ("train", "val", "test")])
    fig = pr.plot_splits()
    eq(len({t.name for t in fig.data}), 3)
    cl = prepare(DataConfig(seq_len=16, target="direction", cache=False), df).stats()
    close((cl.class_0 + cl.class_1).to_numpy(), np.ones(3))


def test_augmentation_training_only_and_off_by_default():
    df = random_walk(600)
    f = prepare(DataConfig(seq_len=16, augment=["jitter", "mixup"], cache=False), df).folds[0]
    plain = next(f.train.batches(32))
    again = next(f.train.batches(32))
    eq(plain[0], again[0])
    aug = next(f.train.batches(32, augment=True, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(aug[0], plain[0]) and not torch.equal(aug[1], plain[1])
    eq(aug[0].shape, plain[0].shape)
    f0 = prepare(DataConfig(seq_len=16, cache=False), df).folds[0]
    eq(next(f0.train.batches(32, augment=True))[0], plain[0])  # nothing configured: nothing applied


@pytest.mark.cuda
def test_windows_on_cuda():
    df = load_sp500()
    w = prepare(DataConfig(seq_len=64, cache=False), df).folds[0].train
    g = w.to("cuda")
    xb, yb = next(g.batches(256, shuffle=True))
    eq((xb.device.type, xb.shape), ("cuda", (256, 64, w.n_features)))
    eq(g[:8][0].cpu(), w[:8][0])
    eq(g.targets().cpu(), w.targets())


def test_a_prepared_panel_pickles_for_tuner_workers():
    "Tuner worker processes receive the Prepared data by pickle: a panel's per-row symbols and returns travel with it."
    import pickle
    from qtnb.data import DataConfig, prepare
    from qtnb.datasets import random_walk
    p = prepare(DataConfig(seq_len=8, cache=False), random_walk(300, n_symbols=3, seed=0))
    q = pickle.loads(pickle.dumps(p))
    rows = np.array([0, 299, 300, 899])
    assert list(q._symbols[rows]) == list(p._symbols[rows]) == ["S00", "S00", "S01", "S02"]
    np.testing.assert_array_equal(q._R1[rows], p._R1[rows])
    np.testing.assert_array_equal(q.folds[0].train.numpy()[0], p.folds[0].train.numpy()[0])
