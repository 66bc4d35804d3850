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
