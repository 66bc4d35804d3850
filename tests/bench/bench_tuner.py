"""Tuner benchmark on a fixed synthetic task; prints JSON lines.

Task: the next log return of a chaotic logistic-map series is a deterministic nonlinear function of the current one,
so a small MLP can learn it, and how fast depends strongly on learning rate, width and weight decay.

- pruning_epoch_fraction: training epochs TPE + Hyperband needs until its best validation loss reaches the best that
  30 full random-search trials found, divided by the epochs random search spent (median over seeds).
- tuner_overhead: what the tuner adds to a trial over calling the Trainer directly (fit_fold into a run, as the
  tuner does): the trial's wall time outside the fit (sampling, Optuna's storage, run bookkeeping, freeing memory)
  plus its pruning callback's time inside, less the direct caller's own time outside the fit (creating the run),
  over the direct call's wall time; medians of 30 trials, direct fits and
  tuner trials in turn. Beside it, the plain difference of the two wall times (median and quartiles of the 30
  pairs): a fit's own time wanders by 5-20% on a shared machine, more than the overhead, so it corroborates only.
- workers_2_vs_1: trials per minute with 2 worker processes against 1 (torch threads 1 per worker, equal trials),
  measured alternately; steady state (each worker's trials after its first, over the end of its first to the end of
  its last, summed over workers) and, as a second field, wall clock including process start and the idle tail.

Run from the repository root: `python tests/bench/bench_tuner.py` (under 5 minutes on 2 cores).
"""
import json, os, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import optuna
import torch

optuna.logging.set_verbosity(optuna.logging.WARNING)
torch.set_num_threads(1)

from qtnb.config import DataConfig
from qtnb.data import prepare
from qtnb.datasets import ohlcv_from_returns
from qtnb.runs import create_run, open_run
from qtnb.trainer import TrainConfig, fit_fold
from qtnb.tuner import SearchSpace, Tuner, run_workers

EPOCHS = 27
SEEDS = [int(s) for s in os.environ.get("BENCH_SEEDS", "0,1,2").split(",")]
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


def report(figure, value, goal, **extra):
    print(json.dumps({"figure": figure, "value": round(value, 4), "goal": goal, **extra}), flush=True)


def epochs_of(trials): return sum(len(t.intermediate_values) for t in trials)


def tuner(tmp, name, **kw):
    return Tuner(SPACE, "val_loss", data=PREPARED, train=TRAIN, study_name=name, storage=f"sqlite:///{tmp}/bench.db",
                 runs_dir=tmp / "runs", **kw)


def pruning_fraction(tmp: Path) -> float:
    fractions, detail = [], []
    for seed in SEEDS:
        rs = tuner(tmp, f"random-{seed}", sampler="random", pruner="none", seed=seed)
        study = rs.optimize(30, write_outputs=False)
        target, spent = study.best_value, epochs_of(study.trials)
        tpe = tuner(tmp, f"tpe-hb-{seed}", sampler="tpe", pruner="hyperband", seed=seed)
        used = None
        for n in range(1, 91):
            st = tpe.optimize(n, write_outputs=False)
            done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if done and st.best_value <= target:
                used = epochs_of(st.trials); break
            if epochs_of(st.trials) >= spent: break
        used = used if used is not None else epochs_of(tpe.study.trials)   # not reached: everything it spent (>= 1)
        fractions.append(used / spent)
        detail.append({"seed": seed, "random_best": round(target, 6), "random_epochs": spent, "tpe_hb_epochs": used,
                       "tpe_hb_trials": len(tpe.study.trials), "reached": used < spent})
    report("pruning_epoch_fraction", statistics.median(fractions), "<= 0.35", per_seed=detail)
    return statistics.median(fractions)


def tuner_overhead(tmp: Path, pairs: int = 30) -> float:
    "The tuner's own time per trial (outside the fit, plus its pruning callback inside) over a direct fit_fold's time."
    import qtnb.trainer
    from qtnb.callbacks import PruningCallback
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
    report("tuner_overhead", o / d, "<= 0.05", tuner_ms_per_trial=round(1000 * o, 1), direct_s_per_trial=round(d, 4),
           pruning_callback_ms_per_trial=round(1000 * statistics.median(cb), 2), pairs=pairs,
           by_difference_median=round(statistics.median(diff), 4),
           by_difference_quartiles=[round(x, 3) for x in statistics.quantiles(diff, n=4)])
    return o / d


def workers_ratio(tmp: Path, n_trials: int = 16, rounds: int = 3) -> float:
    "The same random-search study with 1 and with 2 worker processes (1 torch thread each), alternating."
    prepared = prepare(DATA, frame=logistic_frame(4000))
    fixed = SearchSpace(model="mlp").categorical("learning_rate", [3e-3]).categorical("hidden_sizes", [[32]])  # equal trials
    steady, wall = {1: [], 2: []}, {1: [], 2: []}
    for r in range(rounds):
        for w in (1, 2):
            t = Tuner(fixed, "val_loss", data=prepared, train={**TRAIN, "num_epochs": 12, "batch_size": 32}, sampler="random",
                      pruner="none", seed=r, study_name=f"workers-{w}-{r}", storage=str(tmp / "workers.journal"), runs_dir=tmp / "runs")
            study = t.study
            a = time.perf_counter()
            run_workers(t, n_trials, w, threads=1)
            wall[w].append(n_trials / (time.perf_counter() - a) * 60)
            # steady state: each worker's trials after its first, over the end of its first to the end of its last (the
            # run's status names its pid), summed over workers; this leaves out process start-up, each process's first
            # trial (torch's first kernels and allocations) and the idle tail while the other worker finishes
            by_pid = {}
            for x in study.get_trials(deepcopy=False):
                pid = open_run(x.user_attrs["run_id"], runs_dir=tmp / "runs").status["pid"]
                by_pid.setdefault(pid, []).append(x)
            rate = 0.0
            for ts in by_pid.values():
                ends = sorted(x.datetime_complete for x in ts)
                if len(ends) > 2: rate += (len(ends) - 1) / (ends[-1] - ends[0]).total_seconds() * 60
            steady[w].append(rate)
    s1, s2 = statistics.median(steady[1]), statistics.median(steady[2])
    w1, w2 = statistics.median(wall[1]), statistics.median(wall[2])
    report("workers_2_vs_1", s2 / s1, ">= 1.6", trials_per_min_1=round(s1, 1), trials_per_min_2=round(s2, 1),
           wall_ratio_incl_process_start=round(w2 / w1, 3), cores=os.cpu_count())
    return s2 / s1


if __name__ == "__main__":
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="qtnb-bench-tuner-") as d:
        tmp = Path(d)
        which = sys.argv[1:] or ["overhead", "workers", "pruning"]
        if "overhead" in which: tuner_overhead(tmp)
        if "workers" in which: workers_ratio(tmp)
        if "pruning" in which: pruning_fraction(tmp)
    print(json.dumps({"figure": "bench_seconds", "value": round(time.time() - t0, 1)}), flush=True)
