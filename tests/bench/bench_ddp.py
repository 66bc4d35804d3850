"""DDP training (qtnb.distributed, torchrun) against one process: training throughput.

Task: the LSTM of bench_trainer.py (hidden 32, 1 layer, from qtnb's registry), seq_len 64, 16 features, global batch
256, regression on synthetic data (20,000 windows), no validation, no clipping, constant learning rate 1e-3, 3 epochs
per fit. Throughput is windows trained per second of an epoch's wall time as the trainer records it (history's `time`,
rank 0's in DDP: the ranks move in step), over epochs 2 and 3: the first epoch and torchrun's start-up (new
processes importing torch and qtnb) are left out, and reported on their own as the whole fit's wall time. Contestants
are measured side by side by tests/bench/_timing.py in rotating rounds (no warm-up call: epoch 1 is the warm-up).

Figures, defined before anything is measured:

  ddp_2_vs_1                     goal >= 1.6 on 2 cores. Windows/s of `Trainer(strategy="ddp", nproc=2)` (2 gloo
                                 processes, 1 intra-op thread each) over `Trainer()` in one process with 1 thread. The
                                 ranks run as qtnb runs them: on one x86-64 machine they sum gradients through shared
                                 memory (qtnb.distributed.SharedSum, a DDP communication hook), the rest over gloo.
  ddp_2_vs_1_gloo_allreduce      report only: the same with `ddp_shared_memory=False`: DDP's own gloo all-reduce of the
                                 gradients (TCP over loopback), what torchrun plus DDP give without qtnb's hook.
  ddp_2_vs_1_fit_wall            report only: the same, over each whole `fit` call's wall time (start-up included).
  ddp_cuda_amp_samples_per_s     CUDA only: windows/s of DDP over every GPU of the machine (NCCL, one process per GPU,
                                 fp16 AMP, device-resident windows).
  ddp_cuda_vs_1_gpu              CUDA only, report only: that over one process on one GPU with the same AMP.
Without a GPU the CUDA case prints one JSON line saying it was skipped.

Run from the repo root with no arguments: python tests/bench/bench_ddp.py (under 5 minutes on 2 cores;
QTNB_BENCH_ROUNDS shortens it for development).
"""
import logging, os, statistics, time, warnings

os.environ["OMP_NUM_THREADS"] = "1"      # every rank torchrun starts, and this process, get one intra-op thread
import numpy as np
import torch

from _timing import Bench, Stats, emit, interleaved, ratio
from qtnb.data import Windows
from qtnb.trainer import Trainer

N, L, F, B, EPOCHS = 20_000, 64, 16, 256, 3
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", 3))
LSTM = {"name": "lstm", "hidden_size": 32, "num_layers": 1, "dropout": 0.0}


def data(device="cpu", n=N):
    g = torch.Generator().manual_seed(0)
    T = n + L - 1
    x = torch.randn(T, F, generator=g)
    y = 0.3 * x[:, :1] + torch.randn(T, 1, generator=g)
    return Windows(x.to(device), y.to(device), np.arange(L - 1, T), L)


def fit(w, device="cpu", **kw):
    "One fit; (windows/s over epochs 2.., the fit's wall time)."
    tr = Trainer(LSTM, num_epochs=EPOCHS, batch_size=B, learning_rate=1e-3, optimizer="adam", gradient_clip_norm=0.0,
                 early_stopping_patience=0, importance=False, seed=0, device=device, **kw)
    t0 = time.perf_counter()
    res = tr.fit(w)
    wall = time.perf_counter() - t0
    return len(w) / statistics.median(res.history["time"].iloc[1:]), wall


def compare(contestants: dict, rounds: int) -> dict:
    "Interleaved rounds of `contestants` (name -> fit call); per name the Stats of windows/s and of fit wall time."
    walls = {k: Stats() for k in contestants}
    def timed(k, f):
        def call():
            rate, wall = f()
            walls[k].rounds.append(wall)
            return rate
        return call
    rates = interleaved({k: timed(k, f) for k, f in contestants.items()}, rounds, warmup=0)
    return rates, walls


def main():
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    with Bench("bench_ddp", windows=N, seq_len=L, features=F, global_batch=B, epochs=EPOCHS, rounds=ROUNDS, model=LSTM):
        w = data()
        rates, walls = compare({"ddp2": lambda: fit(w, strategy="ddp", nproc=2), "one": lambda: fit(w),
                                "ddp2_gloo": lambda: fit(w, strategy="ddp", nproc=2, ddp_shared_memory=False)}, ROUNDS)
        r, q = ratio(rates["ddp2"], rates["one"])
        emit("ddp_2_vs_1", r, ">= 1.6", "matched", quartiles=q, ddp2_samples_per_s=rates["ddp2"].median,
             one_samples_per_s=rates["one"].median, backend="gloo", gradient_sum="shared memory", threads_per_process=1)
        r, q = ratio(rates["ddp2_gloo"], rates["one"])
        emit("ddp_2_vs_1_gloo_allreduce", r, None, "report", quartiles=q, ddp2_samples_per_s=rates["ddp2_gloo"].median,
             backend="gloo", gradient_sum="gloo all-reduce", threads_per_process=1)
        rw, qw = ratio(walls["one"], walls["ddp2"])            # a shorter wall time is the faster one
        emit("ddp_2_vs_1_fit_wall", rw, None, "report", quartiles=qw, ddp2_fit_s=walls["ddp2"].median, one_fit_s=walls["one"].median)
        if not torch.cuda.is_available():
            print('{"figure": "ddp_cuda_amp_samples_per_s", "skipped": "no CUDA GPU on this machine"}', flush=True)
            return
        n = torch.cuda.device_count()
        wc = data("cuda", 50_000)
        rates, _ = compare({"ddp": lambda: fit(wc, "cuda", strategy="ddp", nproc=n, mixed_precision="fp16"),
                            "one": lambda: fit(wc, "cuda", mixed_precision="fp16")}, ROUNDS)
        emit("ddp_cuda_amp_samples_per_s", rates["ddp"].median, None, "report", gpus=n, device=torch.cuda.get_device_name(0),
             backend="nccl", mixed_precision="fp16", windows=50_000, quartiles=rates["ddp"].quartiles)
        r, q = ratio(rates["ddp"], rates["one"])
        emit("ddp_cuda_vs_1_gpu", r, None, "report", gpus=n, quartiles=q)


if __name__ == "__main__": main()
