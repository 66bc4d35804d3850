"""Predictions from a pipeline run or a registered model on new data (the unit examples live in nbs/13_predict.ipynb):
the stored preprocessing replayed exactly, the backends agreeing, bad data refused in one line, a planted pickle never run, and `qtnb predict` end to end on the S&P 500."""
import os, pickle, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastcore.test import test_eq as eq, test_close as close

from qtnb.data import load_frame
from qtnb.errors import QtnbError
from qtnb.pipeline import train
from qtnb.predict import Predictor, load_preprocess

QTNB = str(Path(sys.executable).parent / "qtnb")
REPO = Path(__file__).resolve().parent.parent
SPLIT = 1500            # rows of the S&P 500 the models train on; the next rows are "new"

def qtnb(*args, runs, timeout=600):
    return subprocess.run([QTNB, *map(str, args), "--runs-dir", str(runs)], capture_output=True, text=True, timeout=timeout, cwd=REPO)

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    df = load_frame("sp500")
    df.iloc[:SPLIT].to_csv(d / "old.csv"); df.iloc[SPLIT:SPLIT + 60].to_csv(d / "new.csv")
    return d, df

def _train(runs, csv, model, **kw):
    mp = {"hidden_size": 8} if model in ("lstm", "gru") else {}
    return train(model=model, model_params=mp, epochs=1, seq_len=8, data=str(csv), runs_dir=str(runs), verbose=False, **kw).run

@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("runs")
    return root, {"mlp": _train(root, data[0] / "old.csv", "mlp"),
                  "lstm": _train(root, data[0] / "old.csv", "lstm", target="direction")}

def _test_range(run):
    pc = pd.read_csv(run.path / "predictions.csv", parse_dates=["date"])
    return pc, dict(start=pc.date.min(), end=pc.date.max())

def test_training_range_equals_the_runs_own_predictions(runs, data):
    root, r = runs
    pc, rng = _test_range(r["mlp"])
    got = Predictor.from_run(r["mlp"].id, runs_dir=root).predict(data[0] / "old.csv", **rng)
    eq(list(got.date), list(pc.date))
    assert (got.y_pred.to_numpy() == pc.y_pred.to_numpy()).all()         # exactly: same windows, same batch
    eq(got.signal.to_numpy(), pc.signal.to_numpy())
    pc, rng = _test_range(r["lstm"])
    got = Predictor.from_run(r["lstm"].id, runs_dir=root).predict(data[0] / "old.csv", **rng)
    eq(got.y_pred.to_numpy(), pc.y_pred.to_numpy())
    # logits are float32: predictions.csv holds their shortest float32 text, so compare them as float32, exactly
    assert (got.logit_0.to_numpy(np.float32) == pc.logit_0.to_numpy(np.float32)).all()
    close(got.prob_up.to_numpy(), 1 / (1 + np.exp(-pc.logit_0.to_numpy())), eps=1e-6)

@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_backends_agree(runs, data, model):
    root, r = runs
    new = data[0] / "new.csv"
    ref = Predictor.from_run(r[model].id, runs_dir=root).predict(new)
    col = "y_pred" if model == "mlp" else "logit_0"
    for backend in ("onnx", "torchscript"):
        got = Predictor.from_run(r[model].id, runs_dir=root, backend=backend).predict(new)
        eq(list(got.date), list(ref.date))
        close(got[col].to_numpy(), ref[col].to_numpy(), eps=1e-5)
    eq(len(ref), 60)                                                      # every new date, history from the stored context

def _bad(df: pd.DataFrame, tmp: Path) -> dict[str, Path]:
    new = df.iloc[SPLIT:SPLIT + 60]
    out = {"'Volume' is missing": new.drop(columns=["Volume"]), "not sorted": new.iloc[::-1]}
    nan = new.copy(); nan.iloc[10, nan.columns.get_loc("Close")] = np.nan; out["NaN"] = nan
    out["seq_len = 8"] = df.iloc[:5]                                       # older than the context: too short on its own
    paths = {}
    for i, (k, v) in enumerate(out.items()):
        p = tmp / f"bad{i}.csv"; v.to_csv(p); paths[k] = p
    return paths

def test_bad_data_exits_2_in_one_line(runs, data, tmp_path):
    root, r = runs
    for needle, path in _bad(data[1], tmp_path).items():
        res = qtnb("predict", r["mlp"].id, "--data", path, runs=root)
        eq(res.returncode, 2)
        lines = res.stderr.strip().splitlines()
        eq(len(lines), 1); assert needle in lines[0], (needle, lines)

class Boom:
    "Unpickling this runs a command that leaves a file behind."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

def test_planted_pickle_checkpoint_never_runs(runs, data, tmp_path):
    root, r = runs
    run = _train(root, data[0] / "old.csv", "mlp")
    marker = tmp_path / "pwned"
    (run.path / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Boom(marker)}))
    res = qtnb("predict", run.id, "--data", data[0] / "new.csv", runs=root)
    assert res.returncode != 0 and "weights_only" in res.stderr, res.stderr
    with pytest.raises(QtnbError): Predictor.from_run(run.id, runs_dir=root)
    assert not marker.exists()

@pytest.mark.slow
def test_cli_lstm_sp500_register_predict_new_dates(data, tmp_path):
    "Acceptance: qtnb run train an LSTM on the S&P 500, register it, qtnb predict NAME@production on newer rows."
    d, df = data
    runs = tmp_path / "runs"
    res = qtnb("run", "train", "-p", "data", d / "old.csv", "-p", "model", "lstm", "-p", "epochs", "2", "-p", "seq_len", "8",
               "-p", "model_params", "{hidden_size: 8}", "--name", "spx", runs=runs)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    rid = next(p.name for p in runs.iterdir() if (p / "status.json").is_file())
    res = qtnb("models", "register", rid, "spx", "--stage", "production", runs=runs)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "preds.csv"
    res = qtnb("predict", "spx@production", "--data", d / "new.csv", "--out", out, runs=runs)
    assert res.returncode == 0, res.stderr
    got = pd.read_csv(out, parse_dates=["date"])
    eq(list(got.date), list(df.index[SPLIT:SPLIT + 60]))
    assert np.isfinite(got.y_pred).all() and set(got.model_version) == {"spx@1"}


def test_panel_run_replays_each_symbols_own_scaler(tmp_path):
    "A panel trained with per-symbol scalers (the default) predicts its own test range exactly, symbol by symbol."
    from qtnb.datasets import random_walk
    panel = random_walk(700, n_symbols=3, seed=1)
    panel["Close"] = panel["Close"] * np.where(panel["symbol"] == "S00", 100.0, 1.0)   # scales that pooling would mix
    csv = tmp_path / "panel.csv"; panel.to_csv(csv)
    run = train(model="mlp", epochs=1, seq_len=8, data=str(csv), symbol_col="symbol", runs_dir=str(tmp_path / "runs"), verbose=False).run
    pp = load_preprocess(run)
    assert pp.per_symbol
    pc = pd.read_csv(run.path / "predictions.csv", parse_dates=["date"])
    got = Predictor.from_run(run.id, runs_dir=tmp_path / "runs").predict(csv, start=pc.date.min(), end=pc.date.max())
    key = ["date", "symbol"]
    m = pc.merge(got, on=key, suffixes=("", "_p"))
    eq(len(m), len(pc)); eq(set(m.symbol), {"S00", "S01", "S02"})
    close(m.y_pred_p.to_numpy(), m.y_pred.to_numpy(), eps=1e-6)


def test_linear_run_predicts_through_its_safe_state_files(runs, data):
    "An estimator run is loaded from its own files (no pickle) and predicts its test range as it did in training."
    root, _ = runs
    run = _train(root, data[0] / "old.csv", "linear")
    pc, rng = _test_range(run)
    got = Predictor.from_run(run.id, runs_dir=root).predict(data[0] / "old.csv", **rng)
    eq(list(got.date), list(pc.date))
    close(got.y_pred.to_numpy(), pc.y_pred.to_numpy(), eps=1e-6)
