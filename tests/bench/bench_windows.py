"""Windows vs a per-sample Dataset through DataLoader vs materialised window copies.

200,000 steps x 16 features, seq_len 64, batch 256. Methods are timed side by side in one run (A B C, A B C, ...),
several rounds; the medians are reported. Prints one JSON line per figure. Run from the repo root: no arguments.

Every method runs with one intra-op thread (QTNB_BENCH_THREADS overrides): the per-sample DataLoader with
num_workers=0 is single-threaded anyway, and on a small shared machine OpenMP threads that wait on a descheduled
sibling make a 1 MiB gather 10x slower at random, which measures the neighbours rather than the data path.
"""
import json, os, statistics, sys, time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qtnb.data import Windows

T, F, L, B = 200_000, 16, 64, 256
ROUNDS, N_BATCHES = 25, 40  # many short interleaved rounds: robust to other load on a shared machine


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


def emit(figure, value, goal=None, **extra):
    print(json.dumps({"figure": figure, "value": round(float(value), 4), **({"goal": goal} if goal else {}), **extra}), flush=True)


def main():
    torch.set_num_threads(int(os.environ.get("QTNB_BENCH_THREADS", "1")))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, F, generator=g)
    y = torch.randn(T, 1, generator=g)
    w = Windows(x, y, ends=np.arange(L - 1, T), seq_len=L)
    n = len(w)
    raw = x.nbytes + y.nbytes
    emit("windows_memory_ratio", w.nbytes / raw, "<= 1.05", windows=n, raw_mib=round(raw / 2**20, 2))

    t0 = time.perf_counter()
    copy_x = w.view().contiguous()                     # every window materialised: n x L x F
    copy_y = w.targets().clone()
    copy_s = time.perf_counter() - t0
    emit("copy_memory_ratio", (copy_x.nbytes + copy_y.nbytes) / raw, None, materialise_s=round(copy_s, 2))

    loader = DataLoader(PerSample(x, y), batch_size=B, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(1))

    def copies():
        order = torch.randperm(n, generator=torch.Generator().manual_seed(2))
        for s in range(0, n, B):
            i = order[s:s + B]
            yield copy_x[i], copy_y[i]

    methods = {"windows": lambda: w.batches(B, shuffle=True, generator=torch.Generator().manual_seed(3)),
               "dataloader": lambda: loader, "copy": copies}
    streams = {k: forever(m) for k, m in methods.items()}
    rates = {k: [] for k in methods}
    for it in streams.values(): rate(it)  # warm-up
    keys = list(methods)
    for r in range(ROUNDS):  # A B C, B C A, C A B, ...: side by side, no method always first
        for k in keys[r % 3:] + keys[:r % 3]: rates[k].append(rate(streams[k]))
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k, v in med.items(): emit(f"{k}_batches_per_s", v, None, rounds=len(rates[k]), min=round(min(rates[k]), 1), max=round(max(rates[k]), 1))
    emit("windows_speedup_vs_dataloader", med["windows"] / med["dataloader"], ">= 3",
         threads=torch.get_num_threads())
    emit("windows_speedup_vs_copy", med["windows"] / med["copy"], None)


if __name__ == "__main__":
    sys.exit(main())
