"""qtnb's Trainer vs a minimal hand-written PyTorch loop vs PyTorch Lightning's Trainer: training throughput.

Small LSTM (hidden 32, 1 layer) and MLP (hidden 64, 32) from qtnb's registry, seq_len 64, 16 features, batch 256,
regression on synthetic data (20,000 windows). Every contestant trains the same model (same initial weights) with
Adam, no clipping, no validation, for EPOCHS epochs per measurement; throughput is windows per second of the whole
`fit` call (set-up included) or of the raw loop. Contestants run side by side, interleaved (A B C, A B C, ...), for
ROUNDS rounds; the medians are compared. Printed as JSON lines:

  trainer_vs_raw_loop(_mlp)   qtnb samples/s over the raw loop's (goal >= 0.95)
  trainer_vs_lightning(_mlp)  qtnb samples/s over Lightning's (goal >= 1.2)
  ..._cuda                    the same on the GPU, where CUDA exists (qtnb and the raw loop on device-resident
                              windows, Lightning's DataLoader pinned and copied per batch, as its users run it)
  lstm_cuda_amp_samples_per_s qtnb, default LSTM, fp16 AMP, windows resident on the GPU (only where CUDA exists)

The raw loop gathers batches the way a careful hand-written loop does: a shuffled index per epoch and one indexing
operation on the zero-copy strided window view. Lightning gets what its users write: a standard DataLoader
(num_workers=0, shuffle=True) over a TensorDataset of materialised windows (per-sample indexing + default collate);
the ratio against a per-sample Dataset that slices each window from the series is printed beside it,
with its progress bar, logger, checkpointing and model summary off.

Runs with one intra-op thread (QTNB_BENCH_THREADS overrides) so neighbours on a shared machine disturb it less.
Run from the repo root, no arguments: python tests/bench/bench_trainer.py
"""
import json, logging, os, statistics, sys, time, warnings

import numpy as np
import torch
from torch import nn

from qtnb.data import Windows
from qtnb.models.core import create_model
from qtnb.trainer import Trainer

N, L, F, B = 20_000, 64, 16, 256
EPOCHS = int(os.environ.get("QTNB_BENCH_EPOCHS", 2))
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", 7))
MODELS = {"lstm": {"name": "lstm", "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
          "mlp": {"name": "mlp", "hidden_sizes": [64, 32], "dropout": 0.0}}


def data(device="cpu", n=N):
    g = torch.Generator().manual_seed(0)
    T = n + L - 1
    x = torch.randn(T, F, generator=g)
    y = (0.3 * x[:, :1] + torch.randn(T, 1, generator=g))
    return Windows(x.to(device), y.to(device), np.arange(L - 1, T), L)


def fresh(cfg, device="cpu"):
    torch.manual_seed(0)
    return create_model(cfg, n_features=F, seq_len=L).to(device)


def run_qtnb(cfg, w, device="cpu", **kw):
    m = fresh(cfg, device)
    tr = Trainer(m, num_epochs=EPOCHS, batch_size=B, learning_rate=1e-3, optimizer="adam", gradient_clip_norm=0.0,
                 early_stopping_patience=0, scheduler="constant", importance=False, device=device, **kw)
    t0 = time.perf_counter()
    tr.fit(w)
    if device != "cpu": torch.cuda.synchronize()
    return EPOCHS * len(w) / (time.perf_counter() - t0)


def run_raw(cfg, w, device="cpu"):
    m = fresh(cfg, device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    lossf = nn.MSELoss()
    t0 = time.perf_counter()
    xs, ys = w.view(), w.targets()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(w), generator=torch.Generator().manual_seed(epoch)).to(device)
        m.train()
        for s in range(0, len(w), B):
            idx = perm[s:s + B]
            loss = lossf(m(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    float(loss.detach())                            # waits for the device
    return EPOCHS * len(w) / (time.perf_counter() - t0)


def lightning_setup(w, device="cpu"):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    w = w.to("cpu")                                 # a DataLoader's tensors live on the host; Lightning moves each batch
    xs, ys = w[:]                                   # materialised windows (n, L, F): what a Dataset of windows holds
    ds = TensorDataset(xs.contiguous(), ys)
    cuda = device != "cpu"

    class Module(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model, self.lossf = model, nn.MSELoss()
        def training_step(self, batch, i):
            xb, yb = batch
            return self.lossf(self.model(xb), yb)
        def configure_optimizers(self): return torch.optim.Adam(self.model.parameters(), lr=1e-3)

    class PerSample(torch.utils.data.Dataset):
        "The other usual Dataset: window i sliced from the series, its target at the window's last row."
        def __len__(self): return len(w)
        def __getitem__(self, i): return w.x[i:i + L], w.y[i + L - 1]

    def run(cfg, per_sample=False):
        dl = DataLoader(PerSample() if per_sample else ds, batch_size=B, shuffle=True, num_workers=0, pin_memory=cuda)
        mod = Module(fresh(cfg))
        trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cuda" if cuda else "cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0)
        t0 = time.perf_counter()
        trainer.fit(mod, dl)
        if cuda: torch.cuda.synchronize()
        return EPOCHS * len(ds) / (time.perf_counter() - t0)
    return run


def emit(figure, value, goal, **extra):
    print(json.dumps({"figure": figure, "value": round(value, 3), "goal": goal, **extra}), flush=True)


def compare(device, threads):
    "qtnb, the raw loop and Lightning side by side on `device`; one JSON line per figure."
    w = data(device)
    run_lightning = lightning_setup(w, device)
    for name, cfg in MODELS.items():
        contestants = {"qtnb": lambda: run_qtnb(cfg, w, device), "raw": lambda: run_raw(cfg, w, device),
                       "lightning": lambda: run_lightning(cfg), "lightning_per_sample": lambda: run_lightning(cfg, per_sample=True)}
        for f in contestants.values(): f()             # warm-up: imports, allocator, kernels
        rates = {k: [] for k in contestants}
        for _ in range(ROUNDS):
            for k, f in contestants.items(): rates[k].append(f())
        med = {k: statistics.median(v) for k, v in rates.items()}
        sfx = ("" if name == "lstm" else "_mlp") + ("" if device == "cpu" else "_cuda")
        common = dict(model=name, device=device, samples_per_s={k: round(v) for k, v in med.items()}, rounds=ROUNDS,
                      epochs=EPOCHS, windows=N, threads=threads)
        emit(f"trainer_vs_raw_loop{sfx}", med["qtnb"] / med["raw"], ">= 0.95", **common)
        emit(f"trainer_vs_lightning{sfx}", med["qtnb"] / med["lightning"], ">= 1.2",
             lightning_data="standard DataLoader (shuffle, num_workers=0) over a TensorDataset of materialised windows"
                            + ("" if device == "cpu" else ", pinned, each batch copied to the GPU by Lightning"),
             vs_lightning_per_sample_dataset=round(med["qtnb"] / med["lightning_per_sample"], 3), **common)


def main():
    threads = int(os.environ.get("QTNB_BENCH_THREADS", 1))
    torch.set_num_threads(threads)
    compare("cpu", threads)
    if torch.cuda.is_available():
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        compare("cuda", torch.get_num_threads())
        wc = data("cuda", n=50_000)
        cfg = {"name": "lstm"}                          # the registry's default LSTM
        run_qtnb(cfg, wc, "cuda", mixed_precision="fp16")
        r = statistics.median(run_qtnb(cfg, wc, "cuda", mixed_precision="fp16") for _ in range(3))
        emit("lstm_cuda_amp_samples_per_s", r, "report", device=torch.cuda.get_device_name(0), windows=50_000,
             batch_size=B, mixed_precision="fp16", data="device-resident Windows")


if __name__ == "__main__":
    main()
