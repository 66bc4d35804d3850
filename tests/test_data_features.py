"""Property test: changing any value after t never changes a feature at or before t."""
import numpy as np
import pandas as pd
from hypothesis import given, settings, strategies as st, HealthCheck

from qtnb.data import FEATURE_PRESETS, compute_features, feature_specs
from qtnb.datasets import ohlcv_from_returns

ALL = ["all", "ret_3", "logret_7", "mom_10", "rsi_5", "vol_3", "volume_z_5", "ma_gap_3"]
N = 120


def _frame(seed):
    r = np.random.default_rng(seed).normal(0, 0.02, N)
    return ohlcv_from_returns(r, seed=seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), t=st.integers(0, N - 2),
       col=st.sampled_from(["Open", "High", "Low", "Close", "Adj Close", "Volume"]),
       factor=st.floats(0.01, 100), which=st.integers(1, 50))
def test_features_are_causal(seed, t, col, factor, which):
    df = _frame(seed)
    base = compute_features(df, ALL)
    changed = df.copy()
    rows = np.arange(t + 1, N)
    hit = rows[np.random.default_rng(which).random(len(rows)) < 0.3] if which > 25 else rows[(which - 1) % len(rows):][:1]
    changed.iloc[hit, changed.columns.get_loc(col)] *= factor
    after = compute_features(changed, ALL)
    np.testing.assert_array_equal(base.iloc[: t + 1].to_numpy(), after.iloc[: t + 1].to_numpy())


def test_every_preset_feature_is_covered():
    names = {s.name for s in feature_specs(ALL)}
    for preset, feats in FEATURE_PRESETS.items():
        for f in feats:
            assert f in names or f.split("_")[0] in {n.split("_")[0] for n in names}, (preset, f)


def test_default_preset_is_a_good_daily_ohlcv_default():
    names = [s.name for s in feature_specs(["default"])]
    assert sum(n.startswith("logret_") for n in names) >= 3
    for want in ("vol_20", "rsi_14", "ma_gap_20", "range", "volume_z_20"):
        assert want in names


def test_user_callable_and_multi_output():
    df = _frame(0)
    def spread(d): return d["High"] - d["Low"]
    def two(d): return pd.DataFrame({"a": d["Close"].diff(), "b": d["Close"].rolling(3).mean()})
    f = compute_features(df, ["logret_1", spread, two])
    assert list(f.columns) == ["logret_1", "spread", "two.a", "two.b"]
    np.testing.assert_allclose(f["spread"], df["High"] - df["Low"])
