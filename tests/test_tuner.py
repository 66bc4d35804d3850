"""Tuner end to end through the Trainer: linked runs, pruning, failing trials, several objectives, XGBoost pruning,
per-symbol studies, kill -9 mid-trial with the retry resuming from the crashed run's checkpoint, bad sampler and
pruner names, and the tune pipeline's saved report through the command line."""
import json, os, re, signal, subprocess, sys, textwrap, time
from pathlib import Path

import nbformat
import optuna
import pytest
from fastcore.test import test_eq as eq
from optuna.trial import TrialState

from qtnb.config import DataConfig
from qtnb.datasets import multi_symbol, planted
from qtnb.runs import open_run
from qtnb.errors import ConfigError
from qtnb.tuner import SearchSpace, Tuner, make_pruner, make_sampler, storage_spec, trial_counts, tune_symbols

ROOT = Path(__file__).resolve().parents[1]
DC = DataConfig(data="synthetic:planted", seq_len=8, cache=False)
TRAIN = dict(num_epochs=4, batch_size=64, early_stopping_patience=0)


def tuner(tmp, space, objective="val_loss", **kw):
    kw = {"sampler": "random", "pruner": "none", "seed": 0, "train": TRAIN, **kw}
    return Tuner(space, objective, data=DC, frame=planted(500), storage=f"sqlite:///{tmp}/optuna.db", runs_dir=tmp, **kw)


def test_trials_and_runs_are_linked_both_ways(tmp_path):
    space = (SearchSpace().log_uniform("learning_rate", 1e-3, 1e-2).categorical("optimizer", ["adam", "adamw"])
             .conditional("model", {"mlp": SearchSpace().uniform("dropout", 0.0, 0.3), "lstm": SearchSpace().int("hidden_size", 4, 8, step=4)}))
    t = tuner(tmp_path, space)
    study = t.optimize(4)
    for tr in study.trials:
        eq(tr.state, TrialState.COMPLETE)
        run = open_run(tr.user_attrs["run_id"], runs_dir=tmp_path)
        eq((run.params["tuning"]["study"], run.params["tuning"]["trial"]), (t.study_name, tr.number))
        eq(run.params["model"]["name"], tr.params["model"])
        eq(run.params["train"]["optimizer"], tr.params["optimizer"])
        eq(run.status["state"], "completed")
        eq(sorted(tr.intermediate_values), [1, 2, 3, 4])                 # reported every epoch
        eq(json.loads((run.path / "metrics.json").read_text())["val"]["loss"], tr.value)
    hist = json.loads((t.study_dir / "trial_history.json").read_text())
    eq([h["run_id"] for h in hist], [tr.user_attrs["run_id"] for tr in study.trials])
    best = json.loads((t.study_dir / "best_parameters.json").read_text())
    eq(best["values"], [study.best_value])
    stats = json.loads((t.study_dir / "statistics.json").read_text())
    eq((stats["states"]["complete"], stats["success_rate"]), (4, 1.0))


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path):
    # lr=10 with SGD diverges to NaN; 'transformer' with 3 heads for d_model=8 is a config the model refuses
    space = (SearchSpace().categorical("learning_rate", [1e-3, 10.0]).categorical("optimizer", ["sgd"])
             .conditional("model", {"mlp": None, "transformer": SearchSpace().categorical("n_heads", [3]).categorical("d_model", [8])}))
    t = tuner(tmp_path, space, sampler="grid", train={**TRAIN, "gradient_clip_norm": 0.0})
    study = t.optimize(4)
    eq(len(study.trials), 4)
    fails = [tr for tr in study.trials if tr.state == TrialState.FAIL]
    oks = [tr for tr in study.trials if tr.state == TrialState.COMPLETE]
    assert oks and fails, [(tr.params, tr.state, tr.user_attrs) for tr in study.trials]
    for tr in fails:
        reason = tr.user_attrs["fail_reason"]
        assert "\n" not in reason and len(reason) > 10, reason
        if tr.params["model"] == "transformer": assert "n_heads" in reason or "d_model" in reason, reason
        else: assert "finite" in reason.lower() or "nan" in reason.lower(), reason
        if "run_id" in tr.user_attrs: eq(open_run(tr.user_attrs["run_id"], runs_dir=tmp_path).status["state"], "failed")


def test_pruned_trials_mark_their_runs(tmp_path):
    space = SearchSpace(model="mlp").log_uniform("learning_rate", 1e-5, 3e-2)
    t = tuner(tmp_path, space, pruner="median", train={**TRAIN, "num_epochs": 6})
    eq(type(t.study.pruner).__name__, "MedianPruner")                  # the pruner asked for is the study's
    study = t.optimize(10)
    pruned = [tr for tr in study.trials if tr.state == TrialState.PRUNED]
    assert pruned, [(tr.params, tr.state, tr.intermediate_values) for tr in study.trials]   # learning rates 1e-5 lose
    for tr in pruned:
        eq(open_run(tr.user_attrs["run_id"], runs_dir=tmp_path).status["state"], "pruned")
        assert max(tr.intermediate_values) < 6
    for tr in study.trials:
        if tr.state == TrialState.COMPLETE: eq(open_run(tr.user_attrs["run_id"], runs_dir=tmp_path).status["state"], "completed")
    eq(trial_counts(study)["finished"], 10)


def test_two_objectives_val_loss_and_sharpe(tmp_path):
    t = tuner(tmp_path, SearchSpace(model="mlp").log_uniform("learning_rate", 1e-3, 3e-2), ["val_loss", "val_sharpe"], sampler="nsga2")
    eq(t.directions, ["minimize", "maximize"]); eq(t.pruner_name, "none")
    study = t.optimize(3)
    assert all(len(tr.values) == 2 for tr in study.trials)
    best = t.best_config()
    eq(best["trial"] in [tr.number for tr in study.best_trials], True)
    assert t.plot("pareto").data


def test_xgboost_prunes_through_optuna_integration(tmp_path, monkeypatch):
    space = SearchSpace(model="xgboost").int("max_depth", 1, 4).log_uniform("learning_rate", 0.01, 0.3)
    t = tuner(tmp_path, space, pruner="median", model={"name": "xgboost", "n_estimators": 30, "early_stopping_rounds": 0})
    eq(t._max_resource(), "auto")
    import xgboost
    seen, real = [], xgboost.train
    def spy(*a, **kw):                                    # is xgboost.train itself while a trial fits?
        seen.append((xgboost.train is spy, len(kw.get("callbacks") or ())))
        return real(*a, **kw)
    monkeypatch.setattr(xgboost, "train", spy)
    study = t.optimize(8)
    eq(set(seen), {(True, 1)})       # no process-wide patch: the pruning callback comes in the model's own callbacks
    rounds = [len(tr.intermediate_values) for tr in study.trials]
    assert max(rounds) == 30, rounds                      # one report per boosting round, not per epoch
    assert all(tr.user_attrs.get("run_id") for tr in study.trials)
    pruned = [tr for tr in study.trials if tr.state == TrialState.PRUNED]
    assert pruned, [(tr.params, tr.state, len(tr.intermediate_values)) for tr in study.trials]
    for tr in pruned:
        assert len(tr.intermediate_values) < 30, tr.intermediate_values   # stopped between boosting rounds
        eq(open_run(tr.user_attrs["run_id"], runs_dir=tmp_path).status["state"], "pruned")
    eq(trial_counts(study)["finished"], 8)


# every name `from qtnb.tuner import ...` gave before the tuner became a package of modules
PUBLIC = """KINDS SAMPLERS PRUNERS PLOTS Param SearchSpace train_config_class as_search_space make_sampler make_pruner trial_seed
TrialSeededSampler JournalHeartbeatStorage JournalFlock journal_lock StudyStorageError StorageSpec storage_spec mark_interrupted
RetryAndMarkRun fail_trial fail_dead_trials repair_journal check_storage study_storage_spec record_study AdvisoryLock claim_lock
objective_names check_objective objective_directions fail_reason free_memory trial_counts signals_noted run_trials TrialProgress
watch_trials sigterm_interrupts run_workers Tuner record_trading study_deflated_sharpe trial_record DashboardURL store_storages
dashboard_storage start_dashboard StoreStudies objective_value tune_symbols PruningCallback report_values""".split()

def test_the_tuner_package_keeps_its_names_and_loads_torch_only_for_pruning():
    code = ("import sys, qtnb.tuner as T\n"
            f"missing = [n for n in {PUBLIC[:-2]!r} if not hasattr(T, n)]\n"
            "print(missing, 'torch' in sys.modules)\n"
            "from qtnb.tuner import PruningCallback, report_values\n"
            "from qtnb.callbacks import Callback\n"
            "print(issubclass(PruningCallback, Callback), 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    eq(r.stdout.split("\n")[:2], ["[] False", "True True"])
    import qtnb.callbacks
    assert not hasattr(qtnb.callbacks, "PruningCallback")   # the trainer's callbacks know nothing of Optuna


def test_per_symbol_studies_and_summary(tmp_path):
    frame = multi_symbol("planted", symbols=("AAA", "BBB"), n=400)
    summary = tune_symbols(SearchSpace(model="mlp").log_uniform("learning_rate", 1e-3, 3e-2), "val_loss",
                           data=DataConfig(data="synthetic:planted", seq_len=8, cache=False, symbol_col="symbol"), frame=frame,
                           n_trials=2, study_name="sym", sampler="random", pruner="none", seed=0, train=TRAIN,
                           storage=f"sqlite:///{tmp_path}/optuna.db", runs_dir=tmp_path)
    eq(list(summary.index), ["AAA", "BBB"])
    eq(list(summary["study"]), ["sym-AAA", "sym-BBB"])
    eq(list(summary["complete"]), [2, 2])
    assert summary["val_loss"].notna().all()
    saved = json.loads((tmp_path / "studies" / "sym" / "symbols_summary.json").read_text())
    eq([r["symbol"] for r in saved], ["AAA", "BBB"])
    names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")}
    eq(names, {"sym-AAA", "sym-BBB"})


def test_memory_is_freed_between_trials(tmp_path, monkeypatch):
    import gc
    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or 0)   # free_memory collects after each trial
    tuner(tmp_path, SearchSpace(model="mlp").log_uniform("learning_rate", 1e-3, 3e-2)).optimize(3)
    assert len(calls) >= 3


# --- kill -9 mid-trial: the retry resumes from the crashed run's checkpoint -----------------------------------------

CRASH = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from qtnb.callbacks import Callback
    from qtnb.config import DataConfig
    from qtnb.datasets import planted
    from qtnb.tuner import SearchSpace, Tuner
    import qtnb.tuner as qt
    folder = Path(sys.argv[1])
    marker = folder / "killed-in-trial-2"

    class Hang(Callback):       # the first run hangs in trial 2 after its 3rd epoch's checkpoint, and is killed there
        order = 200
        def __init__(self, trial): self.trial = trial
        def on_train_epoch_end(self, trainer, metrics):
            if self.trial.number == 2 and metrics["epoch"] == 3 and not marker.exists():
                marker.write_text(str(os.getpid())); time.sleep(120)

    fit_fold = qt.__dict__.get("_fit_fold_orig")
    import qtnb.trainer as T
    orig = T.fit_fold
    def fit_fold(fold, model, cfg, *, callbacks=(), **kw):
        return orig(fold, model, cfg, callbacks=[*callbacks, Hang(current[0])], **kw)
    T.fit_fold = fit_fold
    current = [None]
    _train_trial = qt.Tuner._train_trial
    def train_trial(self, trial, params):
        current[0] = trial
        return _train_trial(self, trial, params)
    qt.Tuner._train_trial = train_trial

    t = Tuner(SearchSpace(model="mlp").log_uniform("learning_rate", 1e-3, 3e-2), "val_loss",
              data=DataConfig(data="synthetic:planted", seq_len=8, cache=False), frame=planted(500),
              train=dict(num_epochs=int(sys.argv[3]) if len(sys.argv) > 3 else 6, batch_size=64, early_stopping_patience=0), study_name="crash", sampler="random",
              pruner="none", seed=0, storage=sys.argv[2], runs_dir=folder, heartbeat_interval=1, grace_period=2)
    t.optimize(4)
    print("DONE", flush=True)
''')


def kill_9_in_trial_2(tmp_path):
    "Run the CRASH study script and kill -9 it in trial 2's third epoch; the command and storage to rerun it with."
    script = tmp_path / "tune.py"
    script.write_text(CRASH)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    cmd = [sys.executable, str(script), str(tmp_path), storage]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300   # a guard against a hang, generous for a loaded machine (the study takes seconds)
    while not (tmp_path / "killed-in-trial-2").exists():
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "trial 2 never reached epoch 3"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    return cmd, storage


def test_kill_9_mid_trial_retry_resumes_from_checkpoint(tmp_path):
    cmd, storage = kill_9_in_trial_2(tmp_path)
    st = optuna.load_study(study_name="crash", storage=storage_spec(storage).open())
    before = {t.number: t.value for t in st.trials if t.state == TrialState.COMPLETE}
    eq(sorted(before), [0, 1]); eq(st.trials[2].state, TrialState.RUNNING)
    crashed_run = open_run(st.trials[2].user_attrs["run_id"], runs_dir=tmp_path)
    assert (crashed_run.path / "checkpoints" / "last.pt").is_file()

    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "DONE" in out.stdout, (out.stdout + out.stderr)[-3000:]
    st = optuna.load_study(study_name="crash", storage=storage_spec(storage).open())
    eq({t.number: t.value for t in st.trials if t.number in before}, before)
    eq(st.trials[2].state, TrialState.FAIL)
    retry = [t for t in st.trials if t.system_attrs.get("failed_trial") == 2]
    eq(len(retry), 1); eq(retry[0].state, TrialState.COMPLETE); eq(retry[0].params, st.trials[2].params)
    eq(retry[0].user_attrs["resumed_from"], crashed_run.id)
    new_run = open_run(retry[0].user_attrs["run_id"], runs_dir=tmp_path)
    eq(new_run.params["tuning"]["resumed_from"], crashed_run.id)
    hist = new_run.history
    eq(list(hist["epoch"]), [1, 2, 3, 4, 5, 6])                      # epochs 1-3 came from the checkpoint
    eq(sorted(retry[0].intermediate_values), [1, 2, 3, 4, 5, 6])     # inherited 1-3, reported 4-6
    eq(trial_counts(st)["finished"], 4)
    eq(crashed_run.status["state"], "interrupted")                     # the killed trial's run says so, written
    assert (new_run.path / "checkpoints" / "best.pt").is_file()


def test_a_retry_with_another_config_starts_afresh(tmp_path):
    "Killed in a 6-epoch study, rerun with 4 epochs: the retry does not carry the old checkpoint, and it leaves a best."
    cmd, storage = kill_9_in_trial_2(tmp_path)
    out = subprocess.run(cmd + ["4"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "DONE" in out.stdout, (out.stdout + out.stderr)[-3000:]
    st = optuna.load_study(study_name="crash", storage=storage_spec(storage).open())
    retry = [t for t in st.trials if t.system_attrs.get("failed_trial") == 2]
    eq(len(retry), 1); eq(retry[0].state, TrialState.COMPLETE)
    eq(retry[0].user_attrs["resumed_from"], None)
    new_run = open_run(retry[0].user_attrs["run_id"], runs_dir=tmp_path)
    eq(new_run.params["tuning"]["resumed_from"], None)
    eq(list(new_run.history["epoch"]), [1, 2, 3, 4])                  # trained afresh under its own config
    assert (new_run.path / "checkpoints" / "best.pt").is_file()
    eq(open_run(st.trials[2].user_attrs["run_id"], runs_dir=tmp_path).status["state"], "interrupted")


def test_out_of_memory_and_nan_are_fail_reasons_and_the_study_goes_on(tmp_path):
    import torch
    def objective(params, trial):
        if trial.number == 0: raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if trial.number == 1: return float("nan")
        return params["x"]
    t = Tuner(SearchSpace().uniform("x", 0, 1), objective, sampler="random", pruner="none", seed=0,
              storage=f"sqlite:///{tmp_path}/o.db", runs_dir=tmp_path)
    study = t.optimize(4)
    reasons = [tr.user_attrs.get("fail_reason") for tr in study.trials]
    assert reasons[0].startswith("out of memory (OutOfMemoryError)"), reasons[0]
    assert "is not a finite number" in reasons[1], reasons[1]
    eq([tr.state for tr in study.trials], [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE])


# ----------------------------------------------------------------------------------------------------
# Bad sampler and pruner names given to the tuner: each a one-line ConfigError naming the name and the fix.
# (The rest of the tuner's bad-input corpus is examples in the tuner notebooks: spaces in 07a, storage and Tuner settings
# in 07f, metric objectives in 07i, the dashboard in 07k.)
def f(params, trial): return params["x"]


CASES = {
    "unknown sampler": (lambda: Tuner(SearchSpace().uniform("x", 0, 1), f, sampler="bayes"), "sampler='bayes' is unknown"),
    "unknown sampler (make)": (lambda: make_sampler("randm"), "did you mean 'random'"),
    "unknown pruner (make)": (lambda: make_pruner("hyperbnd"), "did you mean 'hyperband'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case):
    fn, text = CASES[case]
    with pytest.raises(ConfigError) as e: fn()
    msg = str(e.value)
    assert text in msg, msg
    assert "\n" not in msg and len(msg) < 600, msg


# ----------------------------------------------------------------------------------------------------
# The tune pipeline's saved report through the real command line: a 6-trial study's notebook has the objective column,
# slice, contour and parallel-coordinate plots and a best-trial section; the streamed output has no ANSI codes and no
# Optuna log lines next to the pipeline's own one line per trial (k/n with an ETA).
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent

@pytest.mark.slow
def test_tune_report_of_six_trials(tmp_path):
    r = subprocess.run([str(BIN / "qtnb"), "run", "tune", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "epochs", "1",
                        "-p", "seq_len", "8", "-p", "n_trials", "6", "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "\x1b[" not in out, [l for l in out.splitlines() if "\x1b[" in l][:3]
    assert "Trial 0 finished with value" not in out                       # Optuna's own INFO line
    done = [int(k) for k in re.findall(r"^trial (\d+)/6 #\d+ ", r.stdout, flags=re.M)]
    eq(done, [1, 2, 3, 4, 5, 6])                                          # the pipeline's line, once per trial, k/n
    assert len(re.findall(r"ETA \d+", r.stdout)) == 5, r.stdout[-2000:]   # every line but the last has an ETA
    run = next(p for p in tmp_path.iterdir() if (p / "status.json").exists() and p.name.startswith("2") and "tune" in p.name)
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    def outputs_after(heading: str) -> list:
        i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith(heading))
        return [o for c in nb.cells[i + 1:i + 3] if c.cell_type == "code" for o in c.get("outputs", [])]
    def plotly(heading: str) -> list:
        return [o["data"]["application/vnd.plotly.v1+json"] for o in outputs_after(heading) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    for h in ("## Slices", "## Contours", "## Parallel coordinates", "## Best trial"): assert plotly(h) or h == "## Best trial", h
    eq(len(plotly("## Best trial")), 1)                                   # the best trial's learning curves
    table = next(o["data"]["text/html"] for o in outputs_after("## Trials") if "text/html" in o.get("data", {}))
    assert "value_val_loss" in table or ">value<" in table, table[:500]
    imp = "".join(o.get("text", "") for o in outputs_after("## Parameter importances"))
    assert "too few for parameter importances" in imp
