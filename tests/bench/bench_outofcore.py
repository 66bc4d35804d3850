"""A training epoch on an out-of-core (memory-mapped) panel against the same panel held in memory.

A panel of N_SYMBOLS random-walk symbols x N_ROWS rows is written as a Parquet folder partitioned by symbol
(symbol=S00000/...), then prepared twice with the same config: in memory (`prepare` on the frame) and out of core
(`prepare` on the folder: converted once into a memory-mapped store, with every fold array a map). The store's
resident-page budget (qtnb.panelstore.RESIDENT.budget) is lowered to BUDGET, well below the arrays the epoch reads
(the scaled features and targets, about 7 MiB), as on a panel larger than memory. This panel's shuffled batches are
dense (several windows per 64 KiB), so qtnb reads them through the map, faulting pages in again after each hand-back;
on a panel of gigabytes it reads them with pread instead (the 4 GB test of tests/test_outofcore.py prints that epoch's
time). Each contestant trains a freshly seeded MLP for one epoch on the first fold's training windows (same seed,
batches, thread count); a measurement is that epoch's wall time. Contestants run side by side in rotating rounds
(tests/bench/_timing.py), a warm-up each first. Figures, defined before anything is measured:

  mmap_vs_ram_epoch   kind matched, goal >= 0.8: the in-memory epoch's median time over the out-of-core epoch's
                      median time (a speed ratio: 1.0 is as fast as in memory).
  ram_epoch_s, mmap_epoch_s, store_mib, trims   kind report: the medians, the store's size, the page hand-backs.
  mmap_vs_ram_epoch_one_core    kind report: the same ratio with the process pinned to one CPU.
  mmap_vs_ram_epoch_all_cores   kind report: the same ratio with torch using every core for both contestants, so the
                      in-memory epoch gets the second core too.

Run from the repo root with no arguments: python tests/bench/bench_outofcore.py (2-4 minutes on 2 cores).
"""
import os, shutil, sys, tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from _timing import Bench, emit, interleaved, ratio
from qtnb.data import DataConfig, prepare
from qtnb.datasets import random_walk
from qtnb.models.core import create_model
from qtnb.panelstore import RESIDENT
from qtnb.trainer import Trainer, seed_everything

N_SYMBOLS, N_ROWS, SEQ_LEN, BATCH, ROUNDS = 60, 2500, 16, 512, 7
BUDGET = 1 << 20
CONFIG = dict(features=["default"], seq_len=SEQ_LEN, validation="holdout", train_frac=0.8, val_frac=0.1, test_frac=0.1)


def write(folder: Path) -> pd.DataFrame:
    "The panel as a hive-partitioned folder, and the same rows as one frame (symbols in the folder's order)."
    parts = []
    for k in range(N_SYMBOLS):
        df = random_walk(N_ROWS, seed=k).rename_axis("date").reset_index()
        (folder / f"symbol=S{k:05d}").mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / f"symbol=S{k:05d}" / "part-0.parquet", compression="none")
        parts.append(df.assign(symbol=f"S{k:05d}"))
    return pd.concat(parts).set_index("date")


def epoch(train, n_features: int):
    "One epoch of a freshly seeded MLP on `train` (the wall time is what interleaved records)."
    seed_everything(0)
    m = create_model({"name": "mlp", "hidden_sizes": [32]}, n_features=n_features, seq_len=SEQ_LEN)
    Trainer(m, num_epochs=1, batch_size=BATCH, early_stopping_patience=0, importance=False, device="cpu", seed=0).fit(train)


def measure(tmp: Path):
    frame = write(tmp / "panel")
    ram = prepare(DataConfig(**CONFIG, cache=False), frame)
    mm = prepare(DataConfig(**CONFIG, data=str(tmp / "panel")), cache=tmp / "cache")
    assert len(ram.folds[0].train) == len(mm.folds[0].train)
    tr_ram, tr_mm, nf = ram.folds[0].train, mm.folds[0].train, len(ram.feature_names)
    store_mib = sum(f.stat().st_size for f in mm.store.folder.iterdir()) / 2**20
    RESIDENT.budget = BUDGET
    RESIDENT.trim()          # the budget counts from here: pages the conversion left resident are handed back first
    trims = RESIDENT.trims
    st = interleaved({"ram": lambda: epoch(tr_ram, nf), "mmap": lambda: epoch(tr_mm, nf)}, ROUNDS)
    for k, v in st.items(): emit(f"{k}_epoch_s", v.median, None, "report", quartiles=v.quartiles, rounds=ROUNDS)
    emit("store_mib", store_mib, None, "report", windows=len(tr_mm), budget_mib=BUDGET / 2**20)
    emit("trims", RESIDENT.trims - trims, None, "report")
    value, q = ratio(st["ram"], st["mmap"])
    emit("mmap_vs_ram_epoch", value, ">= 0.8", "matched", round_ratio_quartiles=q, threads=torch.get_num_threads())
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    for name, pin, n in (("one_core", {min(cpus)}, 1), ("all_cores", cpus, len(cpus))):
        os.sched_setaffinity(0, pin); torch.set_num_threads(n)
        try: st = interleaved({"ram": lambda: epoch(tr_ram, nf), "mmap": lambda: epoch(tr_mm, nf)}, ROUNDS)
        finally: os.sched_setaffinity(0, cpus); torch.set_num_threads(threads)
        value, q = ratio(st["ram"], st["mmap"])
        emit(f"mmap_vs_ram_epoch_{name}", value, None, "report", round_ratio_quartiles=q, cpus=len(pin), threads=n,
             ram_epoch_s=st["ram"].median, mmap_epoch_s=st["mmap"].median)


def main():
    torch.set_num_threads(int(os.environ.get("QTNB_BENCH_THREADS", "1")))
    tmp = Path(tempfile.mkdtemp(prefix="qtnb-bench-ooc-"))
    try:
        with Bench("bench_outofcore", symbols=N_SYMBOLS, rows_per_symbol=N_ROWS, seq_len=SEQ_LEN, batch_size=BATCH,
                   rounds=ROUNDS, budget_mib=BUDGET / 2**20, config=CONFIG):
            measure(tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
