"""A panel prepared and windowed: peak memory over the raw float32 panel, and time against plain pandas.

500 symbols x 2,500 days x 10 features (QTNB_BENCH_SYMBOLS / QTNB_BENCH_DAYS scale it down for a quick look).
- `panel_memory_ratio` (goal <= 1.3): peak bytes allocated (tracemalloc, which sees numpy's and pandas' buffers)
  while `prepare` validates, featurises, targets, splits and scales the panel and builds the training windows, over
  the bytes of the raw panel as float32 (symbols x days x 10 features x 4).
- `panel_prepare_vs_pandas` (goal >= 3): seconds of a plain pandas groupby-rolling of the same 10 features over
  seconds of `prepare` (features, targets, split, scalers, windows), timed side by side by tests/bench/_timing.py
  (each warmed up once, then rotating rounds), medians.
Prints a settings line and one JSON line per figure. Run from the repo root: no arguments.
"""
import gc, os, time, tracemalloc

import numpy as np
import pandas as pd

from _timing import Bench, emit, interleaved, ratio
from qtnb.data import DataConfig, prepare
from qtnb.datasets import random_walk

SYMBOLS = int(os.environ.get("QTNB_BENCH_SYMBOLS", "500"))
DAYS = int(os.environ.get("QTNB_BENCH_DAYS", "2500"))
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", "3"))
FEATURES = ["logret_1", "logret_2", "logret_5", "logret_10", "logret_20", "vol_20", "mom_20", "ma_gap_20", "range", "volume_z_20"]
CONFIG = DataConfig(features=FEATURES, seq_len=64, validation="holdout", cache=False)


def pandas_features(df: pd.DataFrame) -> pd.DataFrame:
    "The same 10 features with a plain pandas groupby and rolling, as one would write them by hand."
    sym = df["symbol"]
    lc = np.log(df["Close"])
    g = lc.groupby(sym)
    out = {f"logret_{n}": g.diff(n) for n in (1, 2, 5, 10, 20)}
    r1 = out["logret_1"]
    vol = r1.groupby(sym).rolling(20).std().reset_index(level=0, drop=True)
    out["vol_20"] = vol
    out["mom_20"] = out["logret_20"] / (vol * np.sqrt(20))
    ma = df["Close"].groupby(sym).rolling(20).mean().reset_index(level=0, drop=True)
    out["ma_gap_20"] = df["Close"] / ma - 1
    out["range"] = (df["High"] - df["Low"]) / df["Close"]
    lv = np.log1p(df["Volume"].clip(lower=0))
    gv = lv.groupby(sym).rolling(20)
    out["volume_z_20"] = (lv - gv.mean().reset_index(level=0, drop=True)) / gv.std().reset_index(level=0, drop=True)
    return pd.DataFrame(out)


def prepared(df: pd.DataFrame):
    "prepare and the training windows: what a fit needs."
    p = prepare(CONFIG, df)
    w = p.folds[0].train
    return p, w


def main():
    panel = random_walk(DAYS, n_symbols=SYMBOLS, seed=0)
    raw = SYMBOLS * DAYS * len(FEATURES) * 4
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    p, w = prepared(panel)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    emit("panel_memory_ratio", peak / raw, "<= 1.3", None, raw_mib=round(raw / 2**20, 1), peak_mib=round(peak / 2**20, 1),
         windows=len(w), symbols=SYMBOLS, days=DAYS)
    del p, w

    def timed(fn):
        def run():
            gc.collect()                                       # the previous contestant's garbage is not charged here
            t0 = time.perf_counter(); out = fn(panel); dt = time.perf_counter() - t0
            del out
            return dt
        return run
    got = interleaved({"pandas": timed(pandas_features), "qtnb": timed(prepared)}, ROUNDS)
    r, q = ratio(got["pandas"], got["qtnb"])
    emit("panel_prepare_vs_pandas", r, ">= 3", "default", quartiles=q, pandas_s=got["pandas"].summary(),
         prepare_s=got["qtnb"].summary(), rounds=ROUNDS)


if __name__ == "__main__":
    with Bench("panel", symbols=SYMBOLS, days=DAYS, rounds=ROUNDS, features=FEATURES): main()
