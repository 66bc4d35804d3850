"""Tuner benchmarks on a fixed synthetic task; prints JSON lines (pruning_epoch_fraction is in bench_pruning.py).

Task: the next log return of a chaotic logistic-map series is a deterministic nonlinear function of the current one,
so a small MLP can learn it. Figures, defined before anything is measured:

- tuner_overhead (goal <= 0.05): what the tuner adds to a trial over calling the Trainer directly (fit_fold into a
  run, as the tuner does): the trial's wall time outside the fit (sampling, Optuna's storage, run bookkeeping, freeing
  memory) plus its pruning callback's time inside, less the direct caller's own time outside the fit (creating the
  run), over the direct call's wall time; medians of PAIRS trials, direct fits and tuner trials in turn. Beside it,
  the plain difference of the two wall times (median and quartiles of the pairs): a fit's own time wanders by 5-20%
  on a shared machine, more than the overhead, so it corroborates only.
- workers_2_vs_1 (goal >= 1.7): throughput while both workers run. For a study of N_TRIALS equal trials run by
  `run_workers` (1 torch thread per worker), let t0 be the latest of the workers' first completions and t1 the
  earliest of their last completions (each trial's worker is the pid its run records); the throughput is the number
  of trials completed in (t0, t1] over t1 - t0, and 0 when there is no such window (workers that never overlap). The
  same definition with one worker is its completions after its first over the span to its last. The figure is the
  median throughput with 2 workers over the median with 1.
- workers_2_vs_1_wall (goal >= 1.5): the same whole studies' trials per wall second, from the call that starts the
  worker processes to its return (process start, data loading and the idle tail included), 2 workers over 1.
The 1- and 2-worker studies are measured side by side by tests/bench/_timing.py (one short warm-up study each, then
ROUNDS rotating rounds).

Run from the repository root with no arguments: `python tests/bench/bench_tuner.py` (under 5 minutes on 2 cores).
"""
import os, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import optuna
import torch

optuna.logging.set_verbosity(optuna.logging.WARNING)
torch.set_num_threads(1)

from _timing import Bench, Stats, emit, interleaved, ratio
from qtnb.config import DataConfig
from qtnb.data import prepare
from qtnb.datasets import ohlcv_from_returns
from qtnb.runs import create_run, open_run
from qtnb.trainer import TrainConfig, fit_fold
from qtnb.tuner import SearchSpace, Tuner, run_workers

EPOCHS = 27
PAIRS, N_TRIALS = int(os.environ.get("QTNB_BENCH_PAIRS", 30)), int(os.environ.get("QTNB_BENCH_TRIALS", 24))  # smaller only to develop
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", 3))
TRAIN = dict(num_epochs=EPOCHS, batch_size=64, early_stopping_patience=0)


def logistic_frame(n: int = 1500):
    x = np.empty(n); x[0] = 0.3
    for i in range(1, n): x[i] = 3.9 * x[i - 1] * (1 - x[i - 1])
    return ohlcv_from_returns(0.02 * (x - 0.5), seed=0)


DATA = DataConfig(data="logistic", seq_len=4, features=["logret_1"], cache=False)
PREPARED = prepare(DATA, frame=logistic_frame())
SPACE = (SearchSpace(model="mlp").log_uniform("learning_rate", 1e-5, 1e-1)
         .categorical("hidden_sizes", [[4], [8], [16], [32], [64], [32, 16]])
         .log_uniform("weight_decay", 1e-6, 1e-1))


def tuner(tmp, name, **kw):
    return Tuner(SPACE, "val_loss", data=PREPARED, train=TRAIN, study_name=name, storage=f"sqlite:///{tmp}/bench.db",
                 runs_dir=tmp / "runs", **kw)


def tuner_overhead(tmp: Path, pairs: int = PAIRS) -> float:
    "The tuner's own time per trial (outside the fit, plus its pruning callback inside) over a direct fit_fold's time."
    import qtnb.trainer
    from qtnb.tuner.pruning import PruningCallback
    prepared = prepare(DATA, frame=logistic_frame(4000))        # ~2800 training windows: an epoch is ~90 batches of 32
    fixed = SearchSpace(model="mlp").categorical("learning_rate", [3e-3]).categorical("hidden_sizes", [[64, 32]])
    t = Tuner(fixed, "val_loss", data=prepared, train={**TRAIN, "num_epochs": 15, "batch_size": 32}, sampler="random",
              pruner="none", study_name="overhead", storage=f"sqlite:///{tmp}/overhead.db", runs_dir=tmp / "runs")
    mcfg, tcfg = t._model_dict({"hidden_sizes": [64, 32]}), t._train_config({"learning_rate": 3e-3})
    fold = prepared.folds[-1]
    inner, hooks = [], [0.0]                                    # each tuner trial's fit time; its pruning callback's time
    def timed(f, acc):
        def g(*a, **k):
            s = time.perf_counter()
            try: return f(*a, **k)
            finally: acc(time.perf_counter() - s)
        return g
    def add_hook(x): hooks[0] += x
    qtnb.trainer.fit_fold = timed(fit_fold, inner.append)       # the tuner imports it at each trial
    saved = {h: getattr(PruningCallback, h) for h in ("on_fit_start", "on_train_epoch_end", "on_fit_end")}
    for h, f in saved.items(): setattr(PruningCallback, h, timed(f, add_hook))
    direct, direct_outside, tuned, cb = [], [], [], []
    t.optimize(1, write_outputs=False); fit_fold(fold, mcfg, tcfg, run=create_run("warm", runs_dir=tmp / "runs"))  # warm-up
    inner.clear()
    try:
        for r in range(pairs):
            a = time.perf_counter(); run = create_run("direct", runs_dir=tmp / "runs"); b = time.perf_counter()
            fit_fold(fold, mcfg, tcfg, run=run)
            direct.append(time.perf_counter() - a); direct_outside.append(b - a)
            hooks[0] = 0.0
            a = time.perf_counter(); t.optimize(2 + r, write_outputs=False); tuned.append(time.perf_counter() - a)
            cb.append(hooks[0])
    finally:
        qtnb.trainer.fit_fold = fit_fold
        for h, f in saved.items(): setattr(PruningCallback, h, f)
    # what the tuner adds: its time outside the fit and in its callback, less what the direct caller spends outside
    # the fit too (creating the run)
    own = [u - i + c - x for u, i, c, x in zip(tuned, inner, cb, direct_outside)]
    d, o = statistics.median(direct), statistics.median(own)
    diff = [u / x - 1 for u, x in zip(tuned, direct)]
    emit("tuner_overhead", o / d, "<= 0.05", "matched", tuner_ms_per_trial=round(1000 * o, 1), direct_s_per_trial=round(d, 4),
           pruning_callback_ms_per_trial=round(1000 * statistics.median(cb), 2), pairs=pairs,
           by_difference_median=round(statistics.median(diff), 4),
           by_difference_quartiles=[round(x, 3) for x in statistics.quantiles(diff, n=4)])
    return o / d


def window_rate(trials, pid_of) -> float:
    "Trials completed per second in (t0, t1]: t0 the latest first completion of a worker, t1 the earliest last one."
    ends = {}
    for x in trials: ends.setdefault(pid_of(x), []).append(x.datetime_complete.timestamp())
    t0 = max(min(e) for e in ends.values()); t1 = min(max(e) for e in ends.values())
    if t1 <= t0: return 0.0
    return sum(t0 < e <= t1 for es in ends.values() for e in es) / (t1 - t0)


def workers_ratio(tmp: Path):
    "The same study of equal trials with 1 and with 2 worker processes (1 torch thread each), side by side."
    prepared = prepare(DATA, frame=logistic_frame(4000))
    fixed = SearchSpace(model="mlp").categorical("learning_rate", [3e-3]).categorical("hidden_sizes", [[32]])  # equal trials
    window = {1: Stats(), 2: Stats()}
    made = [0]

    def study(w: int, n: int, record: bool = True) -> float:
        made[0] += 1
        t = Tuner(fixed, "val_loss", data=prepared, train={**TRAIN, "num_epochs": 12, "batch_size": 32}, sampler="random",
                  pruner="none", seed=0, study_name=f"workers-{w}-{made[0]}", storage=str(tmp / "workers.journal"),
                  runs_dir=tmp / "runs")
        a = time.perf_counter()
        run_workers(t, n, w, threads=1)
        wall = n / (time.perf_counter() - a)
        pids = {}
        def pid_of(x):
            if x.number not in pids: pids[x.number] = open_run(x.user_attrs["run_id"], runs_dir=tmp / "runs").status["pid"]
            return pids[x.number]
        done = [x for x in t.study.get_trials(deepcopy=False) if x.datetime_complete is not None]
        if record: window[w].rounds.append(window_rate(done, pid_of))
        return wall

    study(1, 4, False); study(2, 4, False)                       # warm-up: each contestant once, a short study
    st = interleaved({1: lambda: study(1, N_TRIALS), 2: lambda: study(2, N_TRIALS)}, ROUNDS, warmup=0)
    value, q = ratio(window[2], window[1])
    emit("workers_2_vs_1", value, ">= 1.7", "matched", trials_per_s={w: window[w].summary() for w in (1, 2)},
         round_ratio_quartiles=q, trials=N_TRIALS, rounds=ROUNDS, cores=os.cpu_count())
    value, q = ratio(st[2], st[1])
    emit("workers_2_vs_1_wall", value, ">= 1.5", "matched", trials_per_s={w: st[w].summary() for w in (1, 2)},
         round_ratio_quartiles=q, trials=N_TRIALS, rounds=ROUNDS, cores=os.cpu_count())


if __name__ == "__main__":
    which = sys.argv[1:] or ["overhead", "workers"]
    with Bench("bench_tuner", which=which, pairs=PAIRS, trials=N_TRIALS, rounds=ROUNDS), \
            tempfile.TemporaryDirectory(prefix="qtnb-bench-tuner-") as d:
        tmp = Path(d)
        if "overhead" in which: tuner_overhead(tmp)
        if "workers" in which: workers_ratio(tmp)
