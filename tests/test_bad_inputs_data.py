"""The bad-input corpus: malformed frames and configs, each refused with its own one-line DataError or ConfigError."""
import numpy as np
import pandas as pd
import pytest
from fastcore.test import test_eq as eq

from qtnb.data import DataConfig, Split, prepare
from qtnb.datasets import multi_symbol, random_walk
from qtnb.errors import ConfigError, DataError, InsufficientData, QtnbError


def rw(n=300, **kw): return random_walk(n, seed=11, **kw)

def cfg(**kw): return DataConfig(seq_len=16, cache=False, **kw)

def with_value(row, col, value):
    df = rw(); df.iloc[row, df.columns.get_loc(col)] = value; return df

def text_close():
    df = rw(); df["Close"] = df["Close"].astype(object); df.iloc[7, 3] = "n/a (holiday)"; return df

def dup_symbol():
    ms = multi_symbol("random_walk", ("AAA", "BBB"), n=200)
    return pd.concat([ms, ms[ms.symbol == "BBB"].iloc[[40]]]).sort_index(kind="stable")

def short_symbol():
    ms = multi_symbol("random_walk", ("AAA", "BBB"), n=300)
    return ms[(ms.symbol == "AAA") | (ms.index < ms.index[30])]

def nan_symbol():
    ms = multi_symbol("random_walk", ("AAA", "BBB"), n=100)
    ms.iloc[5, 0] = None
    return ms

def nat_index():
    df = rw(); idx = df.index.to_series(); idx.iloc[3] = pd.NaT
    df.index = pd.DatetimeIndex(idx); return df

def bad_dates():
    df = rw().reset_index().rename(columns={"Date": "date"}); df["date"] = df["date"].astype(str)
    df.loc[12, "date"] = "yesterday"; return df

def nan_column():
    df = rw(); df["Volume"] = np.nan; return df

def swap_rows():
    df = rw(); order = np.arange(len(df)); order[[50, 51]] = [51, 50]; return df.iloc[order]

def peek(d): return d["Close"].shift(-2)
def short_feature(d): return d["Close"].iloc[:10]


CASES = [
    # (id, thunk, error type, distinctive part of the message)
    ("not-a-frame", lambda: prepare(cfg(), [[1, 2], [3, 4]]), DataError, "expected a DataFrame"),
    ("empty-frame", lambda: prepare(cfg(), pd.DataFrame()), DataError, "is empty (0 rows"),
    ("empty-with-index", lambda: prepare(cfg(), rw().iloc[:0]), DataError, "is empty (0 rows, 6 columns)"),
    ("no-datetime-index", lambda: prepare(cfg(), rw().reset_index(drop=True)), DataError, "no DatetimeIndex and no time column"),
    ("unparseable-date", lambda: prepare(cfg(), bad_dates()), DataError, "'yesterday' at row 12"),
    ("nat-in-index", lambda: prepare(cfg(), nat_index()), DataError, "missing timestamp (NaT) at row 3"),
    ("unsorted", lambda: prepare(cfg(), swap_rows()), DataError, "are not sorted"),
    ("reversed", lambda: prepare(cfg(), rw().iloc[::-1]), DataError, "sort with df.sort_index()"),
    ("duplicate-in-symbol", lambda: prepare(cfg(), dup_symbol()), DataError, "symbol 'BBB' has duplicate timestamp"),
    ("nan-value", lambda: prepare(cfg(), with_value(20, "Close", np.nan)), DataError, "column 'Close' has 1 NaN value(s)"),
    ("inf-value", lambda: prepare(cfg(), with_value(30, "High", np.inf)), DataError, "column 'High' has 1 infinite value(s)"),
    ("all-nan-column-ffill", lambda: prepare(cfg(fill="ffill"), nan_column()), DataError, "no row is left after fill='ffill'"),
    ("non-numeric", lambda: prepare(cfg(), text_close()), DataError, "column 'Close' is not numeric"),
    ("missing-feature-column", lambda: prepare(cfg(), rw().drop(columns="Volume")), DataError, "column 'Volume' is missing"),
    ("missing-price-column", lambda: prepare(cfg(price_col="Last"), rw()), DataError, "column 'Last' is missing"),
    ("non-positive-price", lambda: prepare(cfg(features=["range"]), with_value(40, "Close", 0.0)), DataError, "non-positive price"),
    ("missing-symbol-column", lambda: prepare(cfg(symbol_col="ticker"), rw()), DataError, "symbol column 'ticker' is not in the frame"),
    ("empty-symbol", lambda: prepare(cfg(), nan_symbol()), DataError, "symbol column 'symbol' is empty at row"),
    ("too-short", lambda: prepare(DataConfig(seq_len=64, cache=False), rw(70)), InsufficientData, "seq_len + horizon = 64 + 1 = 65"),
    ("one-symbol-too-short", lambda: prepare(cfg(), short_symbol()), InsufficientData, "symbol 'BBB' has 30 rows"),
    ("holdout-val-eaten-by-purge", lambda: prepare(cfg(horizon=20, val_frac=0.05, train_frac=0.8, test_frac=0.15), rw()),
     InsufficientData, "the validation range is empty after a purge of 20"),
    ("too-many-folds", lambda: prepare(cfg(validation="walk_forward", n_folds=60, horizon=5), rw()), InsufficientData, "no more than the purge"),
    ("leaky-custom-plan", lambda: prepare(cfg(horizon=5), rw(), plan=[Split([(0, 150)], [(152, 250)])]), DataError, "less than the purge of 5"),
    ("overlapping-custom-plan", lambda: prepare(cfg(), rw(), plan=[Split([(0, 200)], [(150, 250)])]), DataError, "overlaps evaluation range"),
    ("unknown-feature", lambda: prepare(cfg(features=["logret_1", "volatilty_20"]), rw()), ConfigError, "unknown feature 'volatilty_20'"),
    ("feature-takes-no-window", lambda: prepare(cfg(features=["range_5"]), rw()), ConfigError, "takes no window"),
    ("empty-feature-list", lambda: prepare(cfg(features=[]), rw()), ConfigError, "features is empty"),
    ("look-ahead-feature", lambda: prepare(cfg(), rw(), features=["logret_1", peek]), DataError, "feature 'peek' is not causal"),
    ("wrong-length-feature", lambda: prepare(cfg(), rw(), features=[short_feature]), DataError, "returned Series with 10 rows for 300"),
    ("purge-below-horizon", lambda: DataConfig(horizon=5, purge=2), ConfigError, "purge=2 is shorter than the longest horizon 5"),
    ("purge-below-longest-horizon", lambda: DataConfig(horizons=[1, 10], purge=5), ConfigError, "shorter than the longest horizon 10"),
    ("seq-len-zero", lambda: DataConfig(seq_len=0), ConfigError, "seq_len=0 is invalid"),
    ("fractions-over-one", lambda: DataConfig(train_frac=0.8, val_frac=0.3), ConfigError, "exceeds 1"),
    ("direction-several-horizons", lambda: DataConfig(target="direction", horizons=[1, 5]), ConfigError, "takes one horizon"),
    ("mixup-on-direction", lambda: DataConfig(target="direction", augment=["mixup"]), ConfigError, "mixup blends labels"),
    ("unknown-augmentation", lambda: DataConfig(augment=["flip"]), ConfigError, "augment.0='flip' is invalid"),
    ("misspelt-field", lambda: DataConfig(seqlen=32), ConfigError, "did you mean 'seq_len'"),
    ("unknown-dataset", lambda: prepare(cfg(data="sp5000")), DataError, "unknown dataset 'sp5000'"),
    ("missing-file", lambda: prepare(cfg(data="no/such/prices.csv")), DataError, "does not exist"),
    ("augment-on-validation", lambda: next(prepare(cfg(augment=["jitter"]), rw()).folds[0].val.batches(8, augment=True)),
     ConfigError, "training windows only"),
]


@pytest.mark.parametrize("make,etype,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(make, etype, fragment):
    with pytest.raises(QtnbError) as info:
        make()
    e = info.value
    assert type(e) is etype, f"expected {etype.__name__}, got {type(e).__name__}: {e}"
    assert fragment in str(e), str(e)
    assert "\n" not in str(e) and len(str(e)) < 600   # one line; an unknown field lists the valid ones
    assert e.__cause__ is None or isinstance(e.__cause__, QtnbError)  # no pandas/torch traceback chained behind it


def test_each_bad_input_gets_its_own_message():
    "The messages qtnb gives are all different: no two bad inputs fall through to one generic refusal."
    said = {}
    for name, make, _, _ in CASES:
        try: make()
        except QtnbError as e: said.setdefault(str(e), []).append(name)
    same = {m: names for m, names in said.items() if len(names) > 1}
    assert not same, same
    eq(sum(len(v) for v in said.values()), len(CASES))          # every case was refused


# --- date options and files (issue 13); the timestamp parses themselves are examples in nbs/02_data.frames ----


@pytest.mark.parametrize("over,fragment", [(dict(tz="Mars/Olympus"), "tz='Mars/Olympus' is not a time zone"),
                                           (dict(date_format="dd/mm/yyyy"), "has no % directive"),
                                           (dict(date_unit="days"), "date_unit='days' is invalid")])
def test_bad_date_options(over, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace("%", "%")):
        cfg(**over)


def test_unreadable_file(tmp_path):
    "A file that exists but cannot be read: no permission (as a user), or an I/O error (as root, who may read anything)."
    import os
    p = tmp_path / "locked.csv"
    if os.geteuid() != 0:
        rw().to_csv(p); p.chmod(0)
        fragment = "locked.csv cannot be read (Permission denied)"
    else:
        p.symlink_to("/proc/self/mem")     # opens, but reading offset 0 fails with EIO
        fragment = "locked.csv cannot be read (Input/output error)"
    with pytest.raises(DataError) as info:
        prepare(cfg(data=str(p)))
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
