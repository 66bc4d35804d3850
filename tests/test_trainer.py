"""The Trainer across processes and modules: kill -9 a training process at a random epoch, resume it, and compare with
an uninterrupted run (CPU, max abs diff <= 1e-6); every torch family learns a planted signal and finds none in a random
walk (through qtnb.data, models and the Trainer). The units are examples in nbs/06_trainer*.ipynb."""
import math, os, random, signal, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq

from qtnb.runs import create_run, open_run
from qtnb.data import prepare
from qtnb.datasets import planted, random_walk
from qtnb.trainer import fit_fold

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10

CHILD = textwrap.dedent('''
    import io, os, sys, time, torch
    torch.set_num_threads(1)
    from qtnb.callbacks import Callback
    from qtnb.models.core import create_model
    from qtnb.runs import open_run
    from qtnb.trainer import Trainer, seed_everything, toy_windows

    mode, run_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torn_at = int(os.environ.get("TORN_AT", "0"))
    if torn_at:   # a checkpoint write that stops half-way (the parent kills us there)
        real_save = torch.save
        def slow_save(obj, f, *a, **k):
            buf = io.BytesIO(); real_save(obj, buf, *a, **k)
            data = buf.getvalue()
            if obj.get("epoch") == torn_at:
                f.write(data[: len(data) // 2]); f.flush()
                print("writing", flush=True); time.sleep(60)
            f.write(data)
        torch.save = slow_save

    class Announce(Callback):
        order = 200   # after the Checkpoint callback
        def on_checkpoint_saved(self, trainer, path):
            if path.name == "last.pt": print(f"checkpoint {trainer.epoch}", flush=True)
        def on_train_epoch_end(self, trainer, metrics): time.sleep(0.02)   # leave the parent time to kill us mid-run

    train, val = toy_windows(1024, seed=0), toy_windows(256, seed=1)
    seed_everything(0)
    model = create_model({"name": "lstm", "hidden_size": 16, "num_layers": 2, "dropout": 0.3}, n_features=3, seq_len=8)
    trainer = Trainer(model, run=open_run(run_path), callbacks=[Announce()], num_epochs=%d, batch_size=64,
                      learning_rate=3e-3, scheduler="cosine", warmup_epochs=1, early_stopping_patience=4, min_delta=1e-3,
                      restore_best=False, importance=False, device="cpu")
    trainer.fit(train, val, resume="last" if mode == "resume" else None)
    es = next(c for c in trainer._fit_callbacks if type(c).__name__ == "EarlyStopping")
    torch.save({"model": trainer.model.state_dict(), "history": trainer.history, "wait": es.wait,
                "best_epoch": es.best_epoch, "epoch": trainer.epoch}, out)
    print("done", flush=True)
''' % EPOCHS)


def child(tmp_path, mode, run, out, env=None, kill_at=None, kill_on=None):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.Popen([sys.executable, str(script), mode, str(run.path), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=e, cwd=tmp_path)
    seen = []
    for line in p.stdout:
        seen.append(line.strip())
        if (kill_at is not None and line.strip() == f"checkpoint {kill_at}") or (kill_on and line.strip() == kill_on):
            os.kill(p.pid, signal.SIGKILL)
            break
    rc = p.wait(120)
    return rc, seen, p.stderr.read()


def compare(a, b):
    eq(a["epoch"], b["epoch"])
    diff = max(float((x - y).abs().max()) for x, y in zip(a["model"].values(), b["model"].values()))
    assert diff <= 1e-6, diff
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]
    eq(strip(a["history"]), strip(b["history"]))          # same losses, metrics and learning rates every epoch
    eq((a["wait"], a["best_epoch"]), (b["wait"], b["best_epoch"]))   # early-stopping counters intact


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    run = create_run("full", runs_dir=d)
    rc, seen, err = child(d, "full", run, d / "full.pt")
    assert rc == 0, err[-2000:]
    return torch.load(d / "full.pt", weights_only=True)


def test_kill_and_resume_matches_uninterrupted(tmp_path, reference):
    k = random.Random().randint(1, reference["epoch"] - 2)
    run = create_run("killed", runs_dir=tmp_path)
    rc, seen, err = child(tmp_path, "full", run, tmp_path / "x.pt", kill_at=k)
    eq(rc, -signal.SIGKILL)
    assert f"checkpoint {k}" in seen and "done" not in seen, (k, seen)
    eq(open_run(run.path).recorded_status["state"], "running")    # what a crash leaves on disk
    eq(open_run(run.path).status["state"], "interrupted")      # and what every reader sees: its process is gone
    last = torch.load(run.checkpoint_dir / "last.pt", weights_only=True)
    assert k <= last["epoch"] < reference["epoch"], (k, last["epoch"])
    rc, seen, err = child(tmp_path, "resume", run, tmp_path / "resumed.pt")
    assert rc == 0, err[-2000:]
    compare(torch.load(tmp_path / "resumed.pt", weights_only=True), reference)
    eq(open_run(run.path).status["state"], "completed")
    eq(len(open_run(run.path).history), reference["epoch"])   # history.csv: one row per epoch, none twice


def test_checkpoint_killed_mid_write_never_replaces_a_good_one(tmp_path, reference):
    k = 3
    run = create_run("torn", runs_dir=tmp_path)
    rc, seen, err = child(tmp_path, "full", run, tmp_path / "x.pt", env={"TORN_AT": str(k + 1)}, kill_on="writing")
    eq(rc, -signal.SIGKILL)
    assert "writing" in seen, (seen, err[-2000:])
    torn = [p for p in run.checkpoint_dir.iterdir() if p.name.endswith(".tmp")]
    assert torn, list(run.checkpoint_dir.iterdir())               # the half-written file is there, under a temporary name
    eq(torch.load(run.checkpoint_dir / "last.pt", weights_only=True)["epoch"], k)
    rc, seen, err = child(tmp_path, "resume", run, tmp_path / "resumed.pt")
    assert rc == 0, err[-2000:]
    compare(torch.load(tmp_path / "resumed.pt", weights_only=True), reference)


# ----------------------------------------------------------------------------------------------------
# Every torch family learns a planted signal and finds none in a random walk (through qtnb.data, models and the Trainer).
#
# planted: returns follow AR(2) in their own lags; attrs['optimal_r2'] is the best one-step R^2 any model can reach.
# Each family must reach half of it on the test split within 8 epochs. On a random walk no family may do better than
# chance: directional accuracy on the test split within 0.5 +/- 3 standard errors.
SEQ_LEN = 16
FAMILIES = {   # small members of each family; the CNN's kernel spans the window so its average pooling keeps the last row
    "mlp": {"hidden_sizes": [32], "dropout": 0.1},
    "lstm": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
    "gru": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
    "cnn": {"filters": [32], "kernel_sizes": [SEQ_LEN], "pool_sizes": [1], "dropout": 0.0},
    "cnn_lstm": {"filters": [16], "kernel_sizes": [3], "pool_sizes": [1], "hidden_size": 32, "dropout": 0.0},
    "transformer": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "dropout": 0.0},
}
TRAIN = dict(num_epochs=8, batch_size=64, learning_rate=3e-3, early_stopping_patience=3, importance=False, device="cpu")


def prepared(frame):
    return prepare(dict(data="synthetic:x", features=["returns"], seq_len=SEQ_LEN, cache=False), frame=frame)


@pytest.fixture(scope="module")
def planted_data():
    df = planted(3000, seed=0)
    return df.attrs["optimal_r2"], prepared(df)


@pytest.fixture(scope="module")
def walk_data():
    return prepared(random_walk(3000, seed=1))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_learns_planted_signal(family, planted_data):
    optimal, prep = planted_data
    _, res = fit_fold(prep.folds[0], {"name": family, **FAMILIES[family]}, **TRAIN)
    assert res.test_metrics["r2"] >= optimal / 2, (family, res.test_metrics["r2"], optimal, res.history[["epoch", "val_loss"]])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_edge_on_random_walk(family, walk_data):
    fold = walk_data.folds[0]
    _, res = fit_fold(fold, {"name": family, **FAMILIES[family]}, **TRAIN)
    n = len(fold.test)
    se = math.sqrt(0.25 / n)
    da = res.test_metrics["directional_accuracy"]
    assert abs(da - 0.5) <= 3 * se, (family, da, n, se)
