"""Monitor overhead: the same small LSTM fit with and without a TrainingMonitor attached, side by side (A B A B ...).

Prints one JSON line: {"figure": "monitor_overhead", "value": <median over pairs of wall time with / without>,
"goal": "<= 1.05", ...}, with the same ratio of process CPU time (less sensitive to other programs on the machine).
The monitor runs in widget mode (all of its drawing happens; with no front end the messages go nowhere), redrawing at
its default rate. Run from the repo root with no arguments; under a minute on 2 cores.
"""
import json, os, statistics, time

import torch

from qtnb.data import prepare
from qtnb.models.core import create_model
from qtnb.trainer import TrainConfig, Trainer
from qtnb.widgets import TrainingMonitor

REPS = int(os.environ.get("QTNB_BENCH_REPS", 10))
EPOCHS = int(os.environ.get("QTNB_BENCH_EPOCHS", 10))

def main():
    # one intra-op thread: on a shared 2-core machine, OpenMP spin-waits under contention swamp what is measured
    torch.set_num_threads(int(os.environ.get("QTNB_BENCH_THREADS", 1)))
    torch.manual_seed(0)
    data = prepare(dict(data="synthetic:random_walk", seq_len=32, features=["default"]))
    fold = data.folds[0]
    cfg = TrainConfig(num_epochs=EPOCHS, batch_size=64, early_stopping_patience=0, device="cpu", seed=0, importance=False)
    def fit(monitored: bool) -> tuple[float, float, int]:
        model = create_model(dict(name="lstm", hidden_size=32, num_layers=1), n_features=fold.train.n_features, seq_len=32)
        mon = TrainingMonitor(mode="widgets") if monitored else None
        trainer = Trainer(model, cfg, callbacks=[mon] if mon else [])
        w0, c0 = time.perf_counter(), time.process_time()
        trainer.fit(fold.train, fold.val)
        return time.perf_counter() - w0, time.process_time() - c0, (mon.redraws if mon else 0)
    fit(False); fit(True)   # warm-up: allocator, kernels, data views
    wall, cpu, redraws = [], [], []
    for i in range(REPS):   # pairs in A B, B A order so a drift in machine load cancels
        order = (False, True) if i % 2 == 0 else (True, False)
        got = {m: fit(m) for m in order}
        wall.append(got[True][0] / got[False][0]); cpu.append(got[True][1] / got[False][1]); redraws.append(got[True][2])
    print(json.dumps({"figure": "monitor_overhead", "value": round(statistics.median(wall), 3), "goal": "<= 1.05",
                      "cpu_time_ratio": round(statistics.median(cpu), 3), "pair_ratios": [round(r, 3) for r in wall],
                      "redraws_per_fit": statistics.median(redraws), "reps": REPS, "epochs": EPOCHS,
                      "batches_per_epoch": -(-len(fold.train) // cfg.batch_size), "threads": torch.get_num_threads()}))

if __name__ == "__main__": main()
