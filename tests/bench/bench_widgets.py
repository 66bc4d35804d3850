"""Monitor overhead: the same small LSTM fit with and without a TrainingMonitor attached.

The two contestants (a fit without a monitor, the same fit with one in widget mode: all of its drawing happens; with no
front end the messages go nowhere, redrawing at its default rate) are measured side by side by tests/bench/_timing.py
(a warm-up each, then REPS rotating rounds). Figure, defined before anything is measured:

  monitor_overhead   kind matched, goal <= 1.05: median wall time of a monitored fit over the median of an unmonitored
                     one (same model, data, seed, epochs, one intra-op thread); beside it the same ratio of process CPU
                     time, which other programs on the machine disturb less.

Run from the repo root with no arguments: python tests/bench/bench_widgets.py (under a minute on 2 cores).
"""
import os, time

import torch

from _timing import Bench, Stats, emit, interleaved, ratio
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
    cpu, redraws = {False: Stats(), True: Stats()}, []

    def fit(monitored: bool) -> float:
        model = create_model(dict(name="lstm", hidden_size=32, num_layers=1), n_features=fold.train.n_features, seq_len=32)
        mon = TrainingMonitor(mode="widgets") if monitored else None
        trainer = Trainer(model, cfg, callbacks=[mon] if mon else [])
        w0, c0 = time.perf_counter(), time.process_time()
        trainer.fit(fold.train, fold.val)
        cpu[monitored].rounds.append(time.process_time() - c0)
        if mon: redraws.append(mon.redraws)
        return time.perf_counter() - w0

    with Bench("bench_widgets", reps=REPS, epochs=EPOCHS, batch_size=cfg.batch_size,
               batches_per_epoch=-(-len(fold.train) // cfg.batch_size)):
        st = interleaved({"plain": lambda: fit(False), "monitored": lambda: fit(True)}, REPS)
        for s in cpu.values(): del s.rounds[0]           # the warm-up calls
        value, q = ratio(st["monitored"], st["plain"])
        emit("monitor_overhead", value, "<= 1.05", "matched", round_ratio_quartiles=q,
             cpu_time_ratio=ratio(cpu[True], cpu[False])[0], redraws_per_fit=sorted(redraws)[len(redraws) // 2],
             seconds_per_fit={k: v.summary() for k, v in st.items()})


if __name__ == "__main__": main()
