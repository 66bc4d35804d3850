"""Windows against materialised window copies and against a per-sample Dataset through a DataLoader.

200,000 steps x 16 features, seq_len 64, batch 256, shuffled. Each method yields batches (xb, yb) of float32 windows
in a fresh shuffled order every epoch; a measurement is the batches per second over the next N_BATCHES batches (the
last value of each batch is read, so nothing stays lazy). Methods are measured side by side by
tests/bench/_timing.py (a warm-up each, then ROUNDS rotating rounds); medians are compared. One intra-op thread for
every method (QTNB_BENCH_THREADS overrides): the per-sample DataLoader with num_workers=0 is single-threaded anyway.
Figures, defined before anything is measured:

  windows_speedup_vs_copies      kind matched, goal >= 1.5: Windows.batches over the same batches gathered from a
                                 tensor of every window materialised once (n x L x F, ~64x the memory), with the same
                                 shuffled index per batch, dtype, batch size and thread count.
  windows_speedup_vs_dataloader  kind default, report only: over torch's DataLoader(shuffle=True, num_workers=0) on the
                                 usual per-sample Dataset (window i sliced from the series, default collate).
  windows_memory_ratio           goal <= 1.05: Windows' bytes over the raw series' bytes.

Run from the repo root with no arguments: python tests/bench/bench_windows.py (about a minute on 2 cores).
"""
import os, sys, time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from _timing import Bench, emit, interleaved, ratio
from qtnb.data import Windows

T, F, L, B = 200_000, 16, 64, 256
ROUNDS, N_BATCHES = 45, 40  # many short interleaved rounds: robust to other load on a shared machine


class PerSample(Dataset):
    "The usual per-sample Dataset: window i is x[i : i + L], its target y[i + L - 1]."
    def __init__(self, x, y): self.x, self.y = x, y
    def __len__(self): return len(self.x) - L + 1
    def __getitem__(self, i): return self.x[i:i + L], self.y[i + L - 1]


def rate(it) -> float:
    "Batches per second over the next N_BATCHES of a (restarting) batch stream; the data is touched so nothing is lazy."
    t0 = time.perf_counter()
    s = 0.0
    for _ in range(N_BATCHES):
        xb, yb = next(it)
        s += float(xb[-1, -1, -1])
    return N_BATCHES / (time.perf_counter() - t0)


def forever(make):
    "Epoch after epoch of `make()`, so every round draws fresh shuffled batches."
    while True: yield from make()


def measure():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, F, generator=g)
    y = torch.randn(T, 1, generator=g)
    w = Windows(x, y, ends=np.arange(L - 1, T), seq_len=L)
    n = len(w)
    raw = x.nbytes + y.nbytes
    emit("windows_memory_ratio", w.nbytes / raw, "<= 1.05", "report", windows=n, raw_mib=round(raw / 2**20, 2))

    t0 = time.perf_counter()
    copy_x = w.view().contiguous()                     # every window materialised: n x L x F
    copy_y = w.targets().clone()
    copy_s = time.perf_counter() - t0
    emit("copy_memory_ratio", (copy_x.nbytes + copy_y.nbytes) / raw, None, "report", materialise_s=round(copy_s, 2))

    loader = DataLoader(PerSample(x, y), batch_size=B, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(1))

    def copies():
        order = torch.randperm(n, generator=torch.Generator().manual_seed(2))
        for s in range(0, n, B):
            i = order[s:s + B]
            yield copy_x[i], copy_y[i]

    methods = {"windows": lambda: w.batches(B, shuffle=True, generator=torch.Generator().manual_seed(3)),
               "dataloader": lambda: loader, "copies": copies}
    streams = {k: forever(m) for k, m in methods.items()}
    st = interleaved({k: (lambda it=it: rate(it)) for k, it in streams.items()}, ROUNDS)
    for k, v in st.items(): emit(f"{k}_batches_per_s", v.median, None, "report", quartiles=v.quartiles, rounds=ROUNDS)
    value, q = ratio(st["windows"], st["copies"])
    emit("windows_speedup_vs_copies", value, ">= 1.5", "matched", round_ratio_quartiles=q, threads=torch.get_num_threads())
    value, q = ratio(st["windows"], st["dataloader"])
    emit("windows_speedup_vs_dataloader", value, None, "default", round_ratio_quartiles=q, threads=torch.get_num_threads())


def main():
    torch.set_num_threads(int(os.environ.get("QTNB_BENCH_THREADS", "1")))
    with Bench("bench_windows", steps=T, features=F, seq_len=L, batch_size=B, rounds=ROUNDS, batches_per_round=N_BATCHES):
        measure()


if __name__ == "__main__":
    sys.exit(main())
