"""How many training epochs qtnb's default tuner (TPE with pruning) needs to find what random search finds.

Task: the next log return of a chaotic logistic-map series is a deterministic nonlinear function of the current one,
so a small MLP can learn it, and how fast depends strongly on learning rate, width and weight decay (1,500 rows,
seq_len 4, one feature, 27 epochs a full trial, batch 64, no early stopping; validation loss is the objective).

Figure, defined before anything is measured (symmetric: both searches are charged until they first reach one target):

  pruning_epoch_fraction   goal <= 0.35. For each seed, random search runs N = 30 full trials; the target is the best
                           validation loss among them. Random search is charged the epochs it expects to spend until it
                           first reaches the target over random orderings of its trials: with k trials at the target
                           (usually 1), each of the other trials comes before the first of them with probability
                           1/(k + 1), so the charge is sum(epochs of the others) / (k + 1) + mean(epochs of the k);
                           for one best of N equal trials, (N + 1) / 2 trials' epochs. The tuner (qtnb's defaults:
                           sampler 'tpe', pruner 'hyperband', seeded with the same seed) runs trials one at a time and
                           is charged every epoch it trained, pruned trials included, until a complete trial's value
                           first reaches the target. A tuner that has not reached it when it has spent random search's
                           whole budget (N x 27 epochs) is charged what it spent and the seed is marked not reached (its
                           fraction is then a lower bound). The figure is the median over SEEDS (>= 7) of tuner epochs /
                           random epochs, with the quartiles, the minimum and maximum and every seed's numbers.

`python tests/bench/bench_pruning.py` measures qtnb's defaults. `python tests/bench/bench_pruning.py ablation` measures,
on the same random-search targets, each step from plain settings to the defaults (see VARIANTS), one figure each.
Seeds run in two processes at a time (each with one torch thread); the figure counts epochs, not time.
"""
import json, os, statistics, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from _timing import Bench, emit

N_RANDOM, EPOCHS, MAX_TUNER_TRIALS = 30, 27, 120
SEEDS = [int(s) for s in os.environ.get("QTNB_BENCH_SEEDS", "0,1,2,3,4,5,6").split(",")]
PROCESSES = int(os.environ.get("QTNB_BENCH_PROCESSES", 2))
TRAIN = dict(num_epochs=EPOCHS, batch_size=64, early_stopping_patience=0)

# Settings tried on the way to qtnb's defaults, each measured on the same random-search targets: the TPE sampler's
# keywords (None: qtnb's make_sampler as it is) and the pruner's name and keywords (None: make_pruner as it is).
MV = dict(multivariate=True, group=True, constant_liar=True)
VARIANTS = {
    "defaults": (None, None),
    "independent_tpe10_median": (dict(multivariate=False, n_startup_trials=10), ("median", dict(n_startup_trials=5, n_warmup_steps=1))),
    "mv_tpe5_hyperband": (dict(MV, n_startup_trials=5), ("hyperband", dict(min_resource=1, reduction_factor=3))),
    "mv_tpe5_asha": (dict(MV, n_startup_trials=5), ("successive_halving", dict(min_resource=1, reduction_factor=3))),
    "mv_tpe5_asha_min3": (dict(MV, n_startup_trials=5), ("successive_halving", dict(min_resource=3, reduction_factor=3))),
    "mv_tpe5_hyperband_min3": (dict(MV, n_startup_trials=5), ("hyperband", dict(min_resource=3, reduction_factor=3))),
    "mv_tpe3_asha_min3": (dict(MV, n_startup_trials=3), ("successive_halving", dict(min_resource=3, reduction_factor=3))),
    "mv_tpe3_hyperband_min3": (dict(MV, n_startup_trials=3), ("hyperband", dict(min_resource=3, reduction_factor=3))),
}


def _apply(variant: str) -> str:
    "Patch qtnb.tuner's sampler/pruner factories for `variant` (in this worker process only); the pruner name to ask for."
    import optuna, warnings
    import qtnb.tuner as qt
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    qt.make_sampler, qt.make_pruner = qt.__dict__.setdefault("_bench_original", (qt.make_sampler, qt.make_pruner))  # a reused worker
    skw, pr = VARIANTS[variant]
    if skw is not None:
        qt.make_sampler = lambda name="tpe", *, seed=None, **_: optuna.samplers.TPESampler(seed=seed, **skw)
    if pr is None: return "hyperband"
    base = qt.make_pruner
    qt.make_pruner = lambda name="hyperband", *, max_resource=100, **_: base(pr[0], max_resource=max_resource, **pr[1])
    return pr[0]


def logistic_frame(n: int = 1500):
    from qtnb.datasets import ohlcv_from_returns
    x = np.empty(n); x[0] = 0.3
    for i in range(1, n): x[i] = 3.9 * x[i - 1] * (1 - x[i - 1])
    return ohlcv_from_returns(0.02 * (x - 0.5), seed=0)


def _setup():
    import optuna, torch
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from qtnb.config import DataConfig
    from qtnb.data import prepare
    from qtnb.tuner import SearchSpace
    data = prepare(DataConfig(data="logistic", seq_len=4, features=["logret_1"], cache=False), frame=logistic_frame())
    space = (SearchSpace(model="mlp").log_uniform("learning_rate", 1e-5, 1e-1)
             .categorical("hidden_sizes", [[4], [8], [16], [32], [64], [32, 16]])
             .log_uniform("weight_decay", 1e-6, 1e-1))
    return data, space


def _tuner(tmp, data, space, name, **kw):
    from qtnb.tuner import Tuner
    return Tuner(space, "val_loss", data=data, train=TRAIN, study_name=name, storage=f"sqlite:///{tmp}/bench.db",
                 runs_dir=Path(tmp) / "runs", **kw)


def epochs_of(trial) -> int: return len(trial.intermediate_values)


def random_charge(values: list[float], epochs: list[int]) -> tuple[float, float, int]:
    "(target, expected epochs to first reach it over random orderings, k trials at it)."
    target = min(values)
    hits = [e for v, e in zip(values, epochs) if v <= target]
    others = [e for v, e in zip(values, epochs) if v > target]
    return target, sum(others) / (len(hits) + 1) + sum(hits) / len(hits), len(hits)


def random_search(seed: int) -> dict:
    import optuna
    data, space = _setup()
    with tempfile.TemporaryDirectory() as tmp:
        study = _tuner(tmp, data, space, f"random-{seed}", sampler="random", pruner="none", seed=seed).optimize(N_RANDOM, write_outputs=False)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        target, charge, k = random_charge([t.value for t in done], [epochs_of(t) for t in done])
        return dict(seed=seed, target=target, random_epochs=charge, random_hits=k, random_budget=sum(epochs_of(t) for t in study.trials))


def tuned_search(seed: int, target: float, budget: int, variant: str) -> dict:
    import optuna
    pruner = _apply(variant)
    data, space = _setup()
    with tempfile.TemporaryDirectory() as tmp:
        t = _tuner(tmp, data, space, f"tuned-{seed}", sampler="tpe", pruner=pruner, seed=seed)
        used, reached = None, False
        for n in range(1, MAX_TUNER_TRIALS + 1):
            st = t.optimize(n, write_outputs=False)
            spent = sum(epochs_of(x) for x in st.trials)
            if any(x.state == optuna.trial.TrialState.COMPLETE and x.value <= target for x in st.trials):
                used, reached = spent, True; break
            if spent >= budget: break
        used = used if used is not None else sum(epochs_of(x) for x in t.study.trials)
        states = [x.state.name for x in t.study.trials]
        return dict(tuner_epochs=used, reached=reached, tuner_trials=len(states), pruned=states.count("PRUNED"))


def measure(variants: list[str], pool: ProcessPoolExecutor):
    cache = os.environ.get("QTNB_BENCH_RANDOM_CACHE")      # development only: reuse random-search results
    if cache and Path(cache).exists(): randoms = {int(k): v for k, v in json.loads(Path(cache).read_text()).items()}
    else: randoms = {r["seed"]: r for r in pool.map(random_search, SEEDS)}
    if cache: Path(cache).write_text(json.dumps(randoms))
    futures = {(v, s): pool.submit(tuned_search, s, randoms[s]["target"], randoms[s]["random_budget"], v)
               for v in variants for s in SEEDS}
    for v in variants:
        futs = {s: futures[v, s] for s in SEEDS}
        per_seed = [{**randoms[s], **futs[s].result()} for s in SEEDS]
        fr = [r["tuner_epochs"] / r["random_epochs"] for r in per_seed]
        for r, f in zip(per_seed, fr): r["fraction"] = round(f, 4); r["target"] = round(r["target"], 6)
        q = statistics.quantiles(fr, n=4)
        emit("pruning_epoch_fraction" + ("" if v == "defaults" else f"_{v}"), statistics.median(fr), "<= 0.35",
             "default", seeds=len(SEEDS), quartiles=[q[0], q[2]], min=min(fr), max=max(fr),
             reached=sum(r["reached"] for r in per_seed), per_seed=per_seed, variant=v, settings=VARIANTS[v])


def main():
    which = (os.environ.get("QTNB_BENCH_VARIANTS", ",".join(VARIANTS)).split(",") if sys.argv[1:] == ["ablation"]
             else ["defaults"])
    with Bench("bench_pruning", seeds=SEEDS, random_trials=N_RANDOM, epochs_per_trial=EPOCHS, variants=which,
               processes=PROCESSES), ProcessPoolExecutor(PROCESSES) as pool:
        measure(which, pool)


if __name__ == "__main__":
    main()
