"""qtnb's Trainer against a hand-written PyTorch loop and against PyTorch Lightning: training throughput.

Task: a small LSTM (hidden 32, 1 layer) and an MLP (hidden 64, 32) from qtnb's registry, seq_len 64, 16 features,
batch 256, regression on synthetic data (20,000 windows), no validation, no clipping, constant learning rate 1e-3,
1 epoch (LSTM) or 5 epochs (MLP) per measurement. Every contestant starts from the same initial weights. Throughput is windows trained
per second of wall time of the whole `fit` call (set-up included) or of the raw loop. The contestants are measured side
by side by tests/bench/_timing.py: one warm-up call each, then ROUNDS rotating rounds; medians are compared, with the
quartiles of the per-round ratios beside them. One intra-op thread by default (QTNB_BENCH_THREADS overrides) for every
contestant.

Figures, defined before anything is measured (none of them may be redefined toward an easier one):

  trainer_vs_raw_loop_matched(_mlp)       kind matched, goal >= 0.97. qtnb's Trainer at its defaults (fused Adam, batches
                                          gathered in one indexing operation from the zero-copy window view) over a raw
                                          loop given the same: fused Adam, the same `Windows.batches` gather, the same
                                          thread count, dtype and batch. Measures what qtnb adds to a training loop.
  trainer_vs_raw_loop_default(_mlp)       kind default, report only. qtnb at its defaults over the loop PyTorch's
                                          tutorials show: torch.optim.Adam with its defaults and a DataLoader
                                          (shuffle=True, num_workers=0) over a TensorDataset of materialised windows.
  trainer_vs_lightning_matched(_mlp)      kind matched, goals >= 1.05 (LSTM) and >= 1.4 (MLP). qtnb over Lightning's
                                          Trainer given the same fused Adam and the same one-gather batches (an iterable
                                          of `Windows.batches`); progress bar, logger, checkpointing, model summary off.
  trainer_vs_lightning_default(_mlp)      kind default, report only. qtnb over Lightning as its documentation shows its
                                          users: the DataLoader over a TensorDataset of materialised windows
                                          (shuffle=True, num_workers=0) and torch.optim.Adam with its defaults.
  ..._cuda                                the same four on the GPU where CUDA exists: qtnb, the matched raw loop and the
                                          matched Lightning all get device-resident windows and batches; the default
                                          contestants get host DataLoaders (pinned), as their users write them.
  lstm_cuda_amp_samples_per_s             qtnb, the registry's default LSTM, fp16 AMP, device-resident windows (CUDA only).

Run from the repo root with no arguments: python tests/bench/bench_trainer.py (under 5 minutes on 2 cores;
QTNB_BENCH_ROUNDS shortens it for development).
"""
import logging, os, time, warnings

import numpy as np
import torch
from torch import nn

from _timing import Bench, emit, interleaved, ratio
from qtnb.data import Windows
from qtnb.models.core import create_model
from qtnb.trainer import Trainer

N, L, F, B = 20_000, 64, 16, 256
EPOCHS_OF = {"lstm": 1, "mlp": 5}                   # about 2-3 s of training per measurement on one core
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", 7))
THREADS = int(os.environ.get("QTNB_BENCH_THREADS", 1))
MODELS = {"lstm": {"name": "lstm", "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
          "mlp": {"name": "mlp", "hidden_sizes": [64, 32], "dropout": 0.0}}
GOALS = {("raw", "lstm"): ">= 0.97", ("raw", "mlp"): ">= 0.97", ("lightning", "lstm"): ">= 1.05", ("lightning", "mlp"): ">= 1.4"}


def data(device="cpu", n=N):
    g = torch.Generator().manual_seed(0)
    T = n + L - 1
    x = torch.randn(T, F, generator=g)
    y = (0.3 * x[:, :1] + torch.randn(T, 1, generator=g))
    return Windows(x.to(device), y.to(device), np.arange(L - 1, T), L)


def fresh(cfg, device="cpu"):
    torch.manual_seed(0)
    return create_model(cfg, n_features=F, seq_len=L).to(device)


def sync(device):
    if device != "cpu": torch.cuda.synchronize()


def adam(model, matched: bool, device):
    "Fused Adam for the matched contestants (what qtnb runs by default), torch's default Adam otherwise."
    return torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if matched and device in ("cpu", "cuda") else {}))


class SameBatches:
    "An epoch of `Windows.batches` (one gather per batch, shuffled by a per-epoch generator): the matched data path."
    def __init__(self, w): self.w, self.epoch = w, 0
    def __len__(self): return -(-len(self.w) // B)
    def __iter__(self):
        self.epoch += 1
        return self.w.batches(B, shuffle=True, generator=torch.Generator().manual_seed(self.epoch))


def host_loader(w, device):
    "The DataLoader users write: a TensorDataset of materialised windows on the host, shuffled, no workers."
    from torch.utils.data import DataLoader, TensorDataset
    xs, ys = w.to("cpu")[:]
    return DataLoader(TensorDataset(xs.contiguous(), ys), batch_size=B, shuffle=True, num_workers=0,
                      pin_memory=device != "cpu", generator=torch.Generator().manual_seed(0))


def run_qtnb(cfg, w, device="cpu", epochs=1, **kw):
    m = fresh(cfg, device)
    tr = Trainer(m, num_epochs=epochs, batch_size=B, learning_rate=1e-3, optimizer="adam", gradient_clip_norm=0.0,
                 early_stopping_patience=0, scheduler="constant", importance=False, device=device, **kw)
    sync(device)
    t0 = time.perf_counter()
    tr.fit(w)
    sync(device)
    return epochs * len(w) / (time.perf_counter() - t0)


def run_raw(cfg, w, device, batches, matched: bool, epochs: int):

    m = fresh(cfg, device)
    lossf = nn.MSELoss()
    sync(device)
    t0 = time.perf_counter()
    opt = adam(m, matched, device)
    m.train()
    for _ in range(epochs):
        for xb, yb in batches:
            if not matched: xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = lossf(m(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    float(loss.detach())                                # waits for the device
    return epochs * len(w) / (time.perf_counter() - t0)


def lightning_runner(device):

    import pytorch_lightning as pl
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"): logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    class Module(pl.LightningModule):
        def __init__(self, model, matched):
            super().__init__()
            self.model, self.lossf, self.matched = model, nn.MSELoss(), matched
        def training_step(self, batch, i):
            xb, yb = batch
            return self.lossf(self.model(xb), yb)
        def configure_optimizers(self): return adam(self.model, self.matched, device)

    def run(cfg, w, batches, matched: bool, epochs: int):
        mod = Module(fresh(cfg, device if matched else "cpu"), matched)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cuda" if device != "cpu" else "cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0)
        sync(device)
        t0 = time.perf_counter()
        trainer.fit(mod, batches)
        sync(device)
        return epochs * len(w) / (time.perf_counter() - t0)
    return run


def compare(device):
    "The five contestants side by side on `device`, for each model; one JSON line per figure."
    w = data(device)
    lightning = lightning_runner(device)
    loader = host_loader(w, device)
    for name, cfg in MODELS.items():
        same, ep = SameBatches(w), EPOCHS_OF[name]
        contestants = {"qtnb": lambda: run_qtnb(cfg, w, device, ep),
                       "raw_matched": lambda: run_raw(cfg, w, device, same, True, ep),
                       "lightning_matched": lambda: lightning(cfg, w, SameBatches(w), True, ep),
                       "raw_default": lambda: run_raw(cfg, w, device, loader, False, ep),
                       "lightning_default": lambda: lightning(cfg, w, loader, False, ep)}
        st = interleaved(contestants, ROUNDS)
        sfx = ("" if name == "lstm" else "_mlp") + ("" if device == "cpu" else "_cuda")
        per_s = {k: round(v.median) for k, v in st.items()}
        for other in ("raw", "lightning"):
            for kind in ("matched", "default"):
                value, q = ratio(st["qtnb"], st[f"{other}_{kind}"])
                emit(f"trainer_vs_{'raw_loop' if other == 'raw' else other}_{kind}{sfx}", value,
                     GOALS[other, name] if kind == "matched" else None, kind, model=name, device=device, epochs=ep,
                     round_ratio_quartiles=q, samples_per_s=per_s,
                     qtnb_quartiles=st["qtnb"].quartiles, other_quartiles=st[f"{other}_{kind}"].quartiles)


def main():
    torch.set_num_threads(THREADS)
    with Bench("bench_trainer", windows=N, seq_len=L, features=F, batch_size=B, epochs=EPOCHS_OF, rounds=ROUNDS,
               threads_per_contestant=THREADS, models=MODELS):
        compare("cpu")
        if torch.cuda.is_available():
            torch.set_num_threads(max(1, os.cpu_count() or 1))
            compare("cuda")
            wc = data("cuda", n=50_000)
            st = interleaved({"amp": lambda: run_qtnb({"name": "lstm"}, wc, "cuda", mixed_precision="fp16")}, 3)
            emit("lstm_cuda_amp_samples_per_s", st["amp"].median, None, "report", device=torch.cuda.get_device_name(0),
                 windows=50_000, batch_size=B, mixed_precision="fp16", data="device-resident Windows", quartiles=st["amp"].quartiles)


if __name__ == "__main__":
    main()
