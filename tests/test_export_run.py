"""export_run against a real run in a temporary run store (created, checkpointed and reopened through qtnb.runs), and
raw-frame inference against the model applied to qtnb.data's windows."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails

from qtnb.errors import ExportError
from qtnb.export import InferenceSession, export_meta, export_onnx, export_run, read_meta
from qtnb.data import prepare
from qtnb.models.core import create_model
from qtnb.runs import create_run, open_run

PARAMS = dict(data="sp500", seq_len=16, features=["default"], target="return", horizon=1, model="lstm",
              model_params={"hidden_size": 16, "num_layers": 1})


@pytest.fixture
def run(tmp_path):
    "A finished training run in a temporary run store, written through qtnb.runs: params, lineage, best checkpoint."
    r = create_run("train", runs_dir=tmp_path / "runs", params=PARAMS)
    r.write_lineage(seed=42)
    prep = prepare(dict(data="sp500", seq_len=16, cache=False))
    torch.manual_seed(0)
    m = create_model({"name": "lstm", "hidden_size": 16, "num_layers": 1}, n_features=len(prep.feature_names), seq_len=16).eval()
    r.save_checkpoint({"model": m.state_dict(), "epoch": 3}, "best")
    r.set_status("completed")
    eq(open_run(r.id, runs_dir=tmp_path / "runs"), r)             # the store finds it by id
    return r.path, m, prep


def test_export_run_writes_into_the_run_and_lineage(run, tmp_path):
    d, m, prep = run
    p = export_run(d.name, format="onnx", precision="fp32", runs_dir=tmp_path / "runs")
    eq(p, d / "model.onnx")
    lin = json.loads((d / "lineage.json").read_text())
    eq(lin["seed"], 42)
    eq((lin["exports"][0]["path"], lin["exports"][0]["format"]), ("model.onnx", "onnx"))
    meta = read_meta(p)
    eq((meta.name, meta.seq_len, meta.feature_names), ("lstm", 16, prep.feature_names))
    xt, _ = prep.folds[-1].test.numpy()
    with torch.inference_mode(): ref = m(torch.from_numpy(xt[:32])).numpy()
    close(InferenceSession(p).predict(xt[:32]), ref, eps=1e-5)      # the checkpoint's weights, not fresh ones
    q = export_run(d.name, format="onnx", precision="int8", runs_dir=tmp_path / "runs")
    lin = json.loads((d / "lineage.json").read_text())
    eq(len(lin["exports"]), 2)
    r = lin["exports"][1]["quantization"]
    assert r["metric"] == "mse" and r["max_abs_diff"] < 0.5, r       # accuracy change on the test split, recorded
    t = export_run(d.name, format="torchscript", runs_dir=tmp_path / "runs")
    eq(t.name, "model.ts")


def test_export_run_bad_requests(run, tmp_path):
    d, _, _ = run
    fails(lambda: export_run(d.name, format="pickle", runs_dir=tmp_path / "runs"), contains="format='pickle'")
    fails(lambda: export_run(d.name, format="torchscript", precision="int8", runs_dir=tmp_path / "runs"), contains="fp32 only")
    (d / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "model_params": {"hidden_size": 32, "num_layers": 1}}))
    fails(lambda: export_run(d.name, runs_dir=tmp_path / "runs"), contains="does not fit its lstm config")


def test_raw_frame_matches_the_model_on_qtnb_data_windows(tmp_path):
    # The trainer has not landed in this checkout, so the reference is the torch model applied to the windows qtnb.data
    # builds for training and evaluation, which is what Trainer.predict applies it to.
    prep = prepare(dict(data="sp500", seq_len=16, cache=False))
    fold = prep.folds[-1]
    torch.manual_seed(0)
    m = create_model("gru", n_features=len(prep.feature_names), seq_len=16).eval()
    s = InferenceSession(export_onnx(m, tmp_path / "gru.onnx", meta=export_meta(m, prep, fold=fold)))
    xt, _ = fold.test.numpy()
    ends = fold.test.end_dates
    for i in (0, len(xt) // 2, len(xt) - 1):
        raw = prep.frame.loc[:ends[i]]                                # the OHLCV rows up to that window's end
        with torch.inference_mode(): ref = m(torch.from_numpy(xt[i:i + 1])).numpy()
        close(s.predict(raw), ref, eps=1e-5)
    batch = s.predict_batch([prep.frame.loc[:ends[i]] for i in range(5)])
    with torch.inference_mode(): close(batch, m(torch.from_numpy(xt[:5])).numpy(), eps=1e-5)
    fails(lambda: s.predict(prep.frame.iloc[-10:]), contains="pass more history")


def test_cli_exports_a_stateful_lstm_run_with_chunk_parity(tmp_path):
    "`qtnb run train` of a stateful LSTM, then `qtnb run export -p source_run` and `qtnb export`: its state as ONNX inputs, parity recorded."
    import os, subprocess, sys
    import onnxruntime as ort
    root = Path(__file__).resolve().parents[1]
    ini = (root / "settings.ini").read_text().replace("device = auto", "device = cpu")
    # fp16 is the settings.ini default a lab may keep: a stateful RNN, which exports to fp32 only, takes fp32 without asking
    (tmp_path / "settings.ini").write_text(ini.replace("precision = fp32", "precision = fp16"))
    from qtnb.datasets import random_walk
    random_walk(1200).to_csv(tmp_path / "rw.csv")
    env = {**os.environ, "PYTHONPATH": str(root), "QTNB_SETTINGS": str(tmp_path / "settings.ini"), "OMP_NUM_THREADS": "1"}
    qtnb = lambda *a: subprocess.run([str(Path(sys.executable).parent / "qtnb"), *a, "--runs-dir", str(tmp_path / "runs")],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    r = qtnb("run", "train", "-p", "data", str(tmp_path / "rw.csv"), "-p", "model", "lstm", "-p", "model_params",
             '{"hidden_size": 8, "num_layers": 2, "stateful": true, "dropout": 0.0}', "-p", "seq_len", "8",
             "-p", "epochs", "2", "-p", "batch_size", "32", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    (src,) = [p for p in (tmp_path / "runs").iterdir() if (p / "status.json").is_file()]
    r = qtnb("run", "export", "-p", "source_run", src.name, "-p", "latency_runs", "10", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    (ex,) = [p for p in (tmp_path / "runs").iterdir() if p != src and (p / "status.json").is_file()]
    eq(json.loads((ex / "status.json").read_text())["state"], "completed")
    m = json.loads((ex / "metrics.json").read_text())["export"]
    eq((m["format"], m["precision"], m["parity"]["chunks"]), ("onnx", "fp32", 3))
    assert m["parity"]["chunks_max_abs_diff"] <= 1e-5 and m["parity"]["max_abs_diff"] <= 1e-5, m["parity"]
    eq([i.name for i in ort.InferenceSession(str(src / "model.onnx")).get_inputs()], ["x", "h0", "c0"])
    r = qtnb("export", src.name)
    assert r.returncode == 0, r.stderr[-2000:]
    eq([e["precision"] for e in json.loads((src / "lineage.json").read_text())["exports"]], ["fp32", "fp32"])


def test_cli_exports_estimator_runs(tmp_path):
    "`qtnb run export` and `qtnb export` of a linear run and of the default ensemble (linear + XGBoost): ONNX fp32, parity recorded."
    import os, subprocess, sys
    root = Path(__file__).resolve().parents[1]
    ini = (root / "settings.ini").read_text().replace("device = auto", "device = cpu")
    (tmp_path / "settings.ini").write_text(ini.replace("precision = fp32", "precision = fp16"))   # estimators take fp32 unasked
    from qtnb.datasets import random_walk
    random_walk(1200).to_csv(tmp_path / "rw.csv")
    env = {**os.environ, "PYTHONPATH": str(root), "QTNB_SETTINGS": str(tmp_path / "settings.ini"), "OMP_NUM_THREADS": "1"}
    qtnb = lambda *a: subprocess.run([str(Path(sys.executable).parent / "qtnb"), *a, "--runs-dir", str(tmp_path / "runs")],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    runs = lambda: {p.name for p in (tmp_path / "runs").iterdir() if (p / "status.json").is_file()} if (tmp_path / "runs").exists() else set()
    for model in ("linear", "ensemble"):
        before = runs()
        r = qtnb("run", "train", "-p", "data", str(tmp_path / "rw.csv"), "-p", "model", model, "-p", "seq_len", "8", "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        (src,) = runs() - before
        r = qtnb("run", "export", "-p", "source_run", src, "-p", "latency_runs", "10", "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        (ex,) = runs() - before - {src}
        ex = tmp_path / "runs" / ex
        eq(json.loads((ex / "status.json").read_text())["state"], "completed")
        m = json.loads((ex / "metrics.json").read_text())
        eq((m["export"]["format"], m["export"]["precision"]), ("onnx", "fp32"))
        assert m["export"]["parity"]["max_abs_diff"] <= 1e-5 and m["export"]["parity"]["windows"] > 100, m["export"]["parity"]
        eq(sorted(m["latency"]), ["estimator", "onnxruntime"])
        assert (tmp_path / "runs" / src / "model.onnx").is_file()
    r = qtnb("export", src, "--precision", "fp16")                       # an estimator has fp32 ONNX only: one line
    eq(r.returncode, 1); assert "fp32" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = qtnb("export", src)
    assert r.returncode == 0, r.stderr[-2000:]


def test_export_pipeline_prepares_the_data_and_loads_the_model_once(run, tmp_path, monkeypatch):
    import qtnb.data, qtnb.registry
    from qtnb.pipeline import export
    d, _, _ = run
    calls = {"prepare": 0, "load_run_model": 0}
    def counted(name, fn):
        def f(*a, **k): calls[name] += 1; return fn(*a, **k)
        return f
    monkeypatch.setattr(qtnb.data, "prepare", counted("prepare", qtnb.data.prepare))
    monkeypatch.setattr(qtnb.registry, "load_run_model", counted("load_run_model", qtnb.registry.load_run_model))
    rep = export(source_run=d.name, runs_dir=str(tmp_path / "runs"), format="onnx", precision="fp32", latency_runs=10, verbose=False)
    eq(calls, {"prepare": 1, "load_run_model": 1})                 # one preparation and one best.pt load serve export, parity and timing
    eq(rep.exported, d / "model.onnx")
    assert rep.metrics["export"]["parity"]["max_abs_diff"] < 1e-4, rep.metrics["export"]
