"Trainer across modules: optimisers, schedules, losses, precision, callbacks, runs, estimators, control, and bad input."
import json, math, threading, time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails
from torch import nn

from qtnb.callbacks import Callback, Checkpoint, EarlyStopping, HistoryLogger, LearningRateMonitor, NonFiniteGuard, \
    TensorBoardLogger, TimeBudget, ProgressBar
from qtnb.tuner.pruning import PruningCallback
from qtnb.data import Windows, prepare
from qtnb.datasets import planted
from qtnb.errors import ConfigError, DataError, ModelError, NonFiniteLoss, QtnbError, TrainingError
from qtnb.models.core import create_model
from qtnb.runs import create_run
from qtnb.trainer import Trainer, TrainConfig, fit_fold, fit_in_background, seed_everything, toy_windows, windows_from_arrays

TR, VA, TE = toy_windows(512, seed=0), toy_windows(256, seed=1), toy_windows(256, seed=2)
FAST = dict(batch_size=64, early_stopping_patience=0, importance=False, gradient_clip_norm=0.0)


def mlp(dropout=0.0, n_features=3, seq_len=8, **kw):
    seed_everything(0)
    return create_model({"name": "mlp", "hidden_sizes": [16], "dropout": dropout, **kw}, n_features=n_features, seq_len=seq_len)


def one_line(e: BaseException) -> str:
    s = str(e)
    assert "\n" not in s and s, repr(s)
    return s


# ---------------------------------------------------------------- optimisers, schedules, losses, precision

@pytest.mark.parametrize("opt,extra", [("adam", dict(amsgrad=True, beta1=0.8)), ("adamw", dict(weight_decay=0.01)),
                                       ("sgd", dict(momentum=0.9, nesterov=True)), ("rmsprop", dict(momentum=0.5))])
def test_optimizers_learn(opt, extra):
    res = Trainer(mlp(), optimizer=opt, learning_rate=0.01 if opt != "rmsprop" else 3e-3, num_epochs=6, **FAST, **extra).fit(TR, VA)
    assert res.history.val_loss.iloc[-1] < res.history.val_loss.iloc[0] * 0.8, res.history


def test_optimizer_options_reach_torch():
    tr = Trainer(mlp(), optimizer="adamw", amsgrad=True, beta1=0.8, beta2=0.99, weight_decay=0.05, num_epochs=1, **FAST)
    tr.fit(TR)
    g = tr.optimizer.param_groups[0]
    eq((type(tr.optimizer).__name__, g["betas"], g["amsgrad"], g["weight_decay"]), ("AdamW", (0.8, 0.99), True, 0.05))
    tr = Trainer(mlp(), optimizer="sgd", momentum=0.7, nesterov=True, num_epochs=1, **FAST); tr.fit(TR)
    eq((tr.optimizer.param_groups[0]["momentum"], tr.optimizer.param_groups[0]["nesterov"]), (0.7, True))


def lr_curve(**kw):
    tr = Trainer(mlp(), num_epochs=6, optimizer="sgd", momentum=0.0, **{**FAST, "learning_rate": 0.1, **kw})
    return tr.fit(TR, VA).history.lr.tolist()


def test_schedules():
    close(lr_curve(scheduler="constant"), [0.1] * 6)
    # the history's lr is the rate each epoch trained with; epoch schedules move after it
    close(lr_curve(scheduler="step", step_size=2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    close(lr_curve(scheduler="exponential", gamma=0.5), [0.1 * 0.5 ** k for k in range(6)])
    w = lr_curve(scheduler="warmup", warmup_epochs=2)        # 8 steps per epoch: per-step warm-up over 16 steps
    close(w[:3], [0.1 * 8 / 16, 0.1, 0.1])
    c = lr_curve(scheduler="cosine", warmup_steps=4, min_lr=0.01)
    assert c[0] > c[2] > c[4] > c[5] >= 0.01 and abs(c[5] - 0.01) < 0.005, c
    o = lr_curve(scheduler="onecycle", pct_start=0.3)
    assert o[1] > o[0] and o[-1] < 0.01, o
    # plateau: monitor a metric that never improves after epoch 1 -> the rate drops after plateau_patience epochs
    p = lr_curve(scheduler="plateau", plateau_patience=1, gamma=0.5, monitor="val_loss", learning_rate=1e-6)
    assert p[-1] < p[0], p


def test_warmup_without_length_is_config_error():
    with pytest.raises(ConfigError) as e: Trainer(mlp(), scheduler="warmup", num_epochs=1, **FAST).fit(TR)
    assert "warmup_epochs" in one_line(e.value)


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "smooth_l1"])
def test_regression_losses(loss):
    res = Trainer(mlp(), loss=loss, num_epochs=4, learning_rate=0.01, **FAST).fit(TR, VA)
    assert res.history.val_loss.iloc[-1] < res.history.val_loss.iloc[0]


def test_callable_loss_and_classification_losses():
    calls = []
    def my_loss(out, y): calls.append(1); return ((out - y) ** 2).mean()
    Trainer(mlp(), loss=my_loss, num_epochs=1, **FAST).fit(TR)
    eq(len(calls) >= 8, True)
    c3, v3 = toy_windows(512, task="classification", n_classes=3), toy_windows(256, task="classification", n_classes=3, seed=1)
    res = Trainer({"name": "mlp", "hidden_sizes": [16]}, num_epochs=10, learning_rate=0.01, **FAST).fit(c3, v3)
    assert res.val_metrics["accuracy"] > 0.55, res.val_metrics       # three classes: chance is 1/3
    with pytest.raises(ConfigError) as e: Trainer({"name": "mlp"}, loss="bce", num_epochs=1, **FAST).fit(c3)
    assert "use 'cross_entropy'" in one_line(e.value)


def test_gradient_accumulation_equals_bigger_batch():
    a = Trainer(mlp(), optimizer="sgd", momentum=0.0, learning_rate=0.05, num_epochs=2, **{**FAST, "batch_size": 64})
    b = Trainer(mlp(), optimizer="sgd", momentum=0.0, learning_rate=0.05, num_epochs=2, gradient_accumulation_steps=2,
                **{**FAST, "batch_size": 32})
    a.fit(TR); b.fit(TR)
    for p, q in zip(a.model.parameters(), b.model.parameters()): close(p, q, eps=1e-5)
    eq((a.global_step, b.global_step), (16, 16))


def test_clipping_bounds_the_step():
    def step_size(**kw):
        m = mlp(); before = [p.detach().clone() for p in m.parameters()]
        Trainer(m, optimizer="sgd", momentum=0.0, learning_rate=1.0, num_epochs=1, **{**FAST, "batch_size": 512, **kw}).fit(TR)
        return math.sqrt(sum(float(((p.detach() - q) ** 2).sum()) for p, q in zip(m.parameters(), before)))
    close(step_size(gradient_clip_norm=1e-3), 1e-3, eps=1e-6)             # one step of lr * clipped norm
    assert step_size() > 1e-2
    m = mlp(); before = [p.detach().clone() for p in m.parameters()]
    Trainer(m, optimizer="sgd", momentum=0.0, learning_rate=1.0, num_epochs=1, gradient_clip_value=1e-4, **{**FAST, "batch_size": 512}).fit(TR)
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(m.parameters(), before)) <= 1e-4 * (1 + 1e-3)   # float32 rounding


def test_bf16_on_cpu_and_fp16_refused():
    res = Trainer(mlp(), mixed_precision="bf16", device="cpu", num_epochs=3, learning_rate=0.01, **FAST).fit(TR, VA)
    assert res.history.val_loss.iloc[-1] < res.history.val_loss.iloc[0]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError) as e: Trainer(mlp(), mixed_precision="fp16", device="cpu")
        assert "use 'bf16'" in one_line(e.value)


def test_seeded_fits_are_identical():
    a, b = Trainer(mlp(0.3), num_epochs=2, **FAST), Trainer(mlp(0.3), num_epochs=2, **FAST)
    a.fit(TR); b.fit(TR)
    for p, q in zip(a.model.parameters(), b.model.parameters()): eq(torch.equal(p, q), True)


def test_train_config_schema_and_base_config():
    from qtnb.config import TrainConfig as Base, schema_problems
    eq(schema_problems(TrainConfig), [])
    tr = Trainer(mlp(), Base(num_epochs=3, learning_rate=0.02), momentum=0.5)
    eq((tr.config.num_epochs, tr.config.learning_rate, tr.config.momentum), (3, 0.02, 0.5))


# ---------------------------------------------------------------- callbacks

class Counter(Callback):
    def __init__(self): self.calls = {}
    def _c(self, name): self.calls[name] = self.calls.get(name, 0) + 1
    def on_fit_start(self, t): self._c("fit_start")
    def on_train_epoch_start(self, t, epoch): self._c("epoch_start")
    def on_validation_end(self, t, m): self._c("val_end"); assert "val_loss" in m and "epoch" in m
    def on_train_epoch_end(self, t, m): self._c("epoch_end"); assert {"train_loss", "val_loss", "lr", "time"} <= set(m)
    def on_train_end(self, t): self._c("train_end")
    def on_fit_end(self, t): self._c("fit_end")


class BatchCounter(Counter):
    def on_train_batch_end(self, t, batch, loss): self._c("batch_end"); assert loss.dim() == 0


def test_hooks_called_and_batch_hook_only_when_overridden():
    c, b = Counter(), BatchCounter()
    Trainer(mlp(), callbacks=[c], num_epochs=3, **FAST).fit(TR, VA)
    eq(c.calls, {"fit_start": 1, "epoch_start": 3, "val_end": 3, "epoch_end": 3, "train_end": 1, "fit_end": 1})
    tr = Trainer(mlp(), callbacks=[Counter()], num_epochs=1, **FAST); tr.fit(TR, VA)
    eq(tr._table["on_train_batch_end"], [])                      # no per-batch dispatch at all
    Trainer(mlp(), callbacks=[b], num_epochs=2, **FAST).fit(TR, VA)
    eq(b.calls["batch_end"], 16)


def test_early_stopping_restores_best_and_stops():
    es = EarlyStopping("val_loss", patience=2, min_delta=0.01, restore_best=True)
    tr = Trainer(mlp(), callbacks=[es], num_epochs=50, learning_rate=0.05, optimizer="sgd", momentum=0.9, **FAST)
    res = tr.fit(TR, VA)
    assert res.epochs < 50 and "early stopping" in res.stop_reason, res
    eq(res.epochs, es.best_epoch + 2)
    close(tr.validate(VA)["val_loss"], es.best, eps=1e-5)         # ended with the best epoch's weights
    eq(res.state, "completed")


def test_config_early_stopping_and_restore_best():
    tr = Trainer(mlp(), num_epochs=40, learning_rate=0.05, optimizer="sgd", momentum=0.9, batch_size=64,
                 early_stopping_patience=3, min_delta=0.01, importance=False, gradient_clip_norm=0.0)
    res = tr.fit(TR, VA, test=TE)
    eq(res.epochs, res.best_epoch + 3)
    close(res.val_metrics["loss"], res.history.val_loss[res.best_epoch - 1], eps=1e-5)   # the best epoch's weights


def test_monitor_maximised_metric():
    res = Trainer(mlp(), monitor="val_r2", num_epochs=5, **FAST).fit(TR, VA)
    eq(res.best_epoch, int(res.history.val_r2.idxmax()) + 1)
    with pytest.raises(ConfigError) as e: Trainer(mlp(), monitor="val_r3", num_epochs=2, **FAST).fit(TR, VA)
    assert "val_r3" in one_line(e.value)


def test_loggers_and_lr_monitor(tmp_path):
    lrm, hl, tb = LearningRateMonitor("step"), HistoryLogger(tmp_path / "h.csv"), TensorBoardLogger(tmp_path / "tb")
    Trainer(mlp(), callbacks=[lrm, hl, tb, ProgressBar(disable=True)], num_epochs=2, scheduler="cosine", **FAST).fit(TR, VA)
    eq(len(lrm.lrs), 16)
    assert lrm.lrs[0]["lr_0"] > lrm.lrs[-1]["lr_0"]
    h = pd.read_csv(tmp_path / "h.csv")
    eq((len(h), list(h.columns[:3])), (2, ["epoch", "train_loss", "val_loss"]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / "tb")); ea.Reload()
    assert {"train_loss", "val_loss", "lr"} <= set(ea.Tags()["scalars"])


def test_time_budget_stops():
    class Sleepy(Callback):
        def on_train_epoch_end(self, t, m): time.sleep(0.05)
    res = Trainer(mlp(), callbacks=[TimeBudget(0.2), Sleepy()], num_epochs=500, **FAST).fit(TR)
    assert res.epochs < 20 and "time budget" in res.stop_reason


def test_checkpoint_callback_files(tmp_path):
    saved = []
    class Saved(Callback):
        def on_checkpoint_saved(self, t, path): saved.append(path.name)
    ck = Checkpoint(tmp_path, every_n_epochs=2)
    Trainer(mlp(), callbacks=[ck, Saved()], num_epochs=4, **FAST).fit(TR, VA)
    assert {"last.pt", "best.pt", "epoch_2.pt", "epoch_4.pt"} <= {p.name for p in tmp_path.iterdir()}
    st = torch.load(tmp_path / "last.pt", weights_only=True)
    eq((st["epoch"], len(st["history"]), st["format"]), (4, 4, "qtnb-trainer-1"))
    assert {"model", "optimizer", "scheduler", "rng", "callbacks", "tracker"} <= set(st)
    eq(saved.count("last.pt"), 4)


# ---------------------------------------------------------------- runs

def test_run_files(tmp_path):
    prep = prepare(dict(data="synthetic:planted", features=["returns"], seq_len=8, cache=False), frame=planted(1200))
    run = create_run("trainer-test", runs_dir=tmp_path, params={"data": {"seq_len": 8}})
    tr, res = fit_fold(prep.folds[0], {"name": "mlp", "hidden_sizes": [16]}, run=run, num_epochs=3, batch_size=64,
                       checkpoint_every=1)
    eq(run.status["state"], "completed")
    p = yaml.safe_load((run.path / "params.yaml").read_text())
    eq((p["data"], p["train"]["num_epochs"], p["model"]["name"]), ({"seq_len": 8}, 3, "mlp"))
    h = run.history
    eq(len(h), 3)
    assert {"epoch", "train_loss", "val_loss", "val_r2", "val_sharpe", "lr", "time"} <= set(h.columns)
    m = json.loads((run.path / "metrics.json").read_text())
    assert {"val", "test", "fit"} <= set(m) and "r2" in m["test"] and m["fit"]["epochs"] == 3
    lin = json.loads((run.path / "lineage.json").read_text())
    eq((lin["seed"], lin["data_fingerprint"]), (42, prep.fingerprint))
    assert {"best", "last", "epoch_1", "epoch_2", "epoch_3"} <= set(run.checkpoints())
    assert (run.path / "feature_importance.csv").exists()
    eq(set(res.feature_importance.index), set(prep.feature_names))
    assert res.model_size_mb > 0 and res.train_time > 0 and res.n_params > 0


def test_stop_from_another_thread_marks_run_stopped(tmp_path):
    run = create_run("stop", runs_dir=tmp_path)
    class Slow(Callback):
        def on_train_epoch_end(self, t, m): time.sleep(0.03)
    tr = Trainer(mlp(), run=run, callbacks=[Slow()], num_epochs=1000, **FAST)
    h = fit_in_background(tr, TR, VA)
    def wait(cond, what, limit=30):
        deadline = time.time() + limit
        while not cond():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)
    wait(lambda: tr.epoch >= 2, "two epochs")            # the first optimizer set-up can take seconds on a busy machine
    tr.request_pause(); wait(lambda: tr.state == "paused", "the pause")
    e = tr.epoch; time.sleep(0.2); eq(tr.epoch, e)
    tr.resume(); time.sleep(0.1); tr.request_stop()
    res = h.join(20)
    eq((res.state, run.status["state"], h.done), ("stopped", "stopped", True))
    eq(len(run.history), res.epochs)


def test_background_exception_is_kept():
    h = fit_in_background(Trainer(mlp(), batch_size=10_000, num_epochs=1), TR)
    with pytest.raises(ConfigError): h.join(20)
    assert isinstance(h.exception, ConfigError)


def test_pruned_trial_marks_run(tmp_path):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-6))
    trial = study.ask()
    heard = []
    class Heard(Callback):
        def on_trial_pruned(self, t, epoch): heard.append(epoch)
    run = create_run("pruned", runs_dir=tmp_path)
    with pytest.raises(optuna.TrialPruned):
        Trainer(mlp(), run=run, callbacks=[PruningCallback(trial), Heard()], num_epochs=5, **FAST).fit(TR, VA)
    eq((heard, run.status["state"]), ([1], "pruned"))


# ---------------------------------------------------------------- estimators through the same interface

def test_xgboost_and_linear_same_interface(tmp_path):
    run = create_run("xgb", runs_dir=tmp_path)
    for cfg in ({"name": "linear", "lags": 2}, {"name": "xgboost", "n_estimators": 30, "max_depth": 2, "lags": 1}):
        res = Trainer(cfg, run=run if cfg["name"] == "xgboost" else None).fit(TR, VA, test=TE)
        eq((res.epochs, len(res.history)), (1, 1))
        assert res.test_metrics["r2"] > 0.4 and res.feature_importance is not None, (cfg, res.test_metrics)
    eq(run.status["state"], "completed")
    assert "test" in json.loads((run.path / "metrics.json").read_text())


def test_ensemble_with_torch_member_trains_through_trainer():
    cfg = {"name": "ensemble", "members": [{"name": "linear", "lags": 1}, {"name": "mlp", "hidden_sizes": [8], "dropout": 0.0}]}
    tr = Trainer(cfg, num_epochs=5, learning_rate=0.01, batch_size=64, importance=False)
    res = tr.fit(TR, VA, test=TE)
    assert res.test_metrics["r2"] > 0.4, res.test_metrics
    eq(tr.predict(TE).shape, (len(TE), 1))


def test_windows_from_arrays_round_trip():
    x, y = TR.numpy()
    w = windows_from_arrays(x, y, task="regression", n_outputs=1)
    xb, yb = w[:]
    eq(torch.equal(xb, torch.from_numpy(x)), True); eq(torch.equal(yb, torch.from_numpy(y)), True)


# ---------------------------------------------------------------- bad input: one line, run marked failed

def bad(tmp_path, make, *, contains, exc=QtnbError):
    run = create_run("bad", runs_dir=tmp_path)
    with pytest.raises(exc) as e: make(run)
    msg = one_line(e.value)
    assert contains in msg, msg
    st = run.status
    eq(st["state"], "failed")
    assert contains in st["error"], st
    return msg


def test_bad_feature_mismatch(tmp_path):
    bad(tmp_path, lambda run: Trainer(mlp(n_features=5), run=run, **FAST).fit(TR), exc=ModelError,
        contains="expects n_features=5 but the train windows have 3 features")


def test_bad_empty_split(tmp_path):
    empty = Windows(torch.zeros(20, 3), torch.zeros(20, 1), np.array([], dtype=np.int64), 8)
    bad(tmp_path, lambda run: Trainer(mlp(), run=run, **FAST).fit(TR, empty), exc=DataError, contains="the val split is empty")
    bad(tmp_path, lambda run: Trainer(mlp(), run=run, **FAST).fit(empty), exc=DataError, contains="the train split is empty")


@pytest.mark.parametrize("lr", [0, -0.1])
def test_bad_learning_rate(tmp_path, lr):
    bad(tmp_path, lambda run: Trainer(mlp(), run=run, learning_rate=lr), exc=ConfigError, contains=f"learning_rate={lr}")


def test_bad_batch_larger_than_training_set(tmp_path):
    bad(tmp_path, lambda run: Trainer(mlp(), run=run, num_epochs=1, batch_size=1000).fit(TR), exc=ConfigError,
        contains="batch_size=1000 is larger than the training set (512 windows)")


def test_bad_nan_mid_training(tmp_path):
    x = TR.x.clone(); x[300] = float("nan")       # poisons the windows that cover row 300
    w = Windows(x, TR.y, np.arange(7, len(x)), 8)
    run_holder = {}
    def make(run):
        run_holder["run"] = run
        return Trainer(mlp(), run=run, num_epochs=3, **FAST).fit(w, VA)
    msg = bad(tmp_path, make, exc=NonFiniteLoss, contains="the training loss became nan at epoch 1, batch")
    assert "check the data for NaN" in msg


def test_nan_in_a_later_epoch_keeps_last_good_checkpoint(tmp_path):
    class Poison(Callback):                      # sends the weights to NaN after epoch 2
        def on_train_epoch_end(self, t, m):
            if m["epoch"] == 2:
                with torch.no_grad():
                    for p in t.model.parameters(): p.fill_(float("inf"))
    run = create_run("nan", runs_dir=tmp_path)
    with pytest.raises(NonFiniteLoss) as e:
        Trainer(mlp(), run=run, callbacks=[Poison()], num_epochs=5, **FAST).fit(TR)
    assert "at epoch 3, batch 1 of 8" in one_line(e.value)
    eq(run.status["state"], "failed")
    last = run.load_checkpoint("last")
    eq(last["epoch"], 2)
    # the guard callback stops at the first bad batch too
    with pytest.raises(NonFiniteLoss) as e:
        Trainer(mlp(), callbacks=[Poison(), NonFiniteGuard()], num_epochs=5, **FAST).fit(TR)
    assert "at epoch 3, batch 1" in one_line(e.value)


def test_bad_model_task_and_outputs(tmp_path):
    cls = toy_windows(100, task="classification")
    bad(tmp_path, lambda run: Trainer(mlp(), run=run, **FAST).fit(cls), exc=ModelError, contains="built for regression")
    bad(tmp_path, lambda run: Trainer(mlp(n_outputs=2), run=run, **FAST).fit(TR), exc=ModelError, contains="returns 2 output(s)")


def test_bad_resume(tmp_path):
    with pytest.raises(ConfigError) as e: Trainer(mlp(), num_epochs=1, **FAST).fit(TR, resume="last")
    assert "resume='last' needs a checkpoint folder" in one_line(e.value)
    with pytest.raises(ConfigError) as e: Trainer(mlp(), num_epochs=1, **FAST).fit(TR, resume=tmp_path / "x.pt")
    assert "does not exist" in one_line(e.value)
    Trainer(mlp(), callbacks=[Checkpoint(tmp_path)], num_epochs=2, **FAST).fit(TR)
    with pytest.raises(ConfigError) as e:
        Trainer(mlp(), callbacks=[Checkpoint(tmp_path)], num_epochs=3, **{**FAST, "batch_size": 32}).fit(TR, resume="last")
    assert "different settings (batch_size: 64 -> 32)" in one_line(e.value)


def test_bad_windows_type():
    with pytest.raises(DataError) as e: Trainer(mlp(), **FAST).fit(TR.numpy()[0])
    assert "must be qtnb.data.Windows" in one_line(e.value)
