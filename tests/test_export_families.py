"""Every model family reaches serving: ONNX parity with PyTorch (or the fitted estimator) for each family and each
ensemble method that exports, stateful RNNs over three consecutive chunks with the state carried, a learned-position
Transformer refused at other window lengths before ONNX Runtime sees them, and the dynamic int8 file apart from the
static QDQ one."""
import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq, test_fail as fails

from qtnb.errors import ExportError
from qtnb.export import (InferenceSession, export_estimator, export_onnx, export_stateful, onnx_input_dims,
                         quantize_dynamic_int8, quantize_static_qdq, read_meta, stateful_parity)
from qtnb.models.core import create_model
from qtnb.trainer import Trainer, toy_windows

TINY = {"mlp": {"hidden_sizes": [8]}, "lstm": {"hidden_size": 8, "num_layers": 1}, "gru": {"hidden_size": 8, "num_layers": 1},
        "cnn": {"filters": [8], "kernel_sizes": [3], "pool_sizes": [1]}, "transformer": {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32},
        "linear": {}, "xgboost": {"n_estimators": 10, "max_depth": 2}}

@pytest.fixture(scope="module")
def data():
    return toy_windows(256, seq_len=8, n_features=3, seed=0), toy_windows(64, seq_len=8, n_features=3, seed=1)

def trained(spec, data, **kw):
    tr, va = data
    t = Trainer(spec, num_epochs=1, batch_size=64, importance=False, device="cpu", **kw)
    t.fit(tr, va)
    return t.model

@pytest.mark.parametrize("name", list(TINY))
def test_every_family_exports_with_parity(name, data, tmp_path):
    model = trained({"name": name, **TINY[name]}, data)
    x = data[1].numpy()[0]
    if isinstance(model, torch.nn.Module):
        p = export_onnx(model.eval(), tmp_path / "m.onnx")
        with torch.no_grad(): ref = model(torch.from_numpy(x)).numpy()
    else:
        p = export_estimator(model, tmp_path / "m.onnx", windows=x, atol=1e-5)
        ref = model.predict(x)
    eq(p.suffix, ".onnx")
    assert np.abs(InferenceSession(p).predict_batch(x) - ref).max() <= 1e-5

@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_stateful_rnn_trains_and_exports_its_state(name, data, tmp_path):
    model = trained({"name": name, "stateful": True, "hidden_size": 8, "num_layers": 2, "dropout": 0.0}, data)
    p = export_stateful(model, tmp_path / "s.onnx")
    names = [i.name for i in __import__("onnxruntime").InferenceSession(str(p)).get_inputs()]
    eq(names, ["x", "h0", "c0"] if name == "lstm" else ["x", "h0"])
    eq(read_meta(p).extra["stateful"], True)
    assert stateful_parity(model, p, n_chunks=3, batch=4) <= 1e-5

def test_learned_positions_fix_the_onnx_window_length(tmp_path):
    m = create_model({"name": "transformer", "positional": "learned", "d_model": 16, "n_heads": 2, "n_layers": 1}, n_features=3, seq_len=24).eval()
    p = export_onnx(m, tmp_path / "t.onnx")
    eq((read_meta(p).dynamic_seq, onnx_input_dims(p)["x"][1]), (False, 24))
    s = InferenceSession(p)
    eq(s.predict(np.zeros((2, 24, 3), np.float32)).shape, (2, 1))
    fails(lambda: s.predict(np.zeros((2, 32, 3), np.float32)), contains="takes exactly seq_len=24")

MIXED = [{"name": "linear"}, {"name": "xgboost", "n_estimators": 5, "max_depth": 2}, {"name": "mlp", "hidden_sizes": [8]}]

@pytest.mark.parametrize("method,task,extra", [("average", "regression", {}), ("weighted", "regression", {"weights": [1.0, 2.0, 1.0]}),
                                               ("boosting", "regression", {}), ("stacking", "regression", {"n_folds": 2}),
                                               ("vote", "classification", {}), ("stacking", "classification", {"n_folds": 2})])
def test_every_ensemble_method_exports_one_graph(method, task, extra, tmp_path):
    w = toy_windows(256, seq_len=8, n_features=3, task=task, seed=0)
    spec = {"name": "ensemble", "method": method, "members": MIXED, **extra}   # no task: the data's (a vote on direction targets)
    t = Trainer(spec, num_epochs=1, batch_size=64, importance=False, device="cpu"); t.fit(w)
    x = w.numpy()[0][:64]
    p = export_estimator(t.model, tmp_path / "e.onnx", windows=x, atol=1e-5)
    assert np.abs(InferenceSession(p).predict_batch(x) - t.model.predict(x)).max() <= 1e-5

def test_dynamic_int8_is_not_the_static_file(data, tmp_path):
    m = trained({"name": "mlp", "hidden_sizes": [8]}, data).eval()
    p = export_onnx(m, tmp_path / "model.onnx")
    static = quantize_static_qdq(p, data[0].numpy()[0], tmp_path / "model.int8.onnx")
    dyn = quantize_dynamic_int8(p)
    eq((static.name, dyn.name), ("model.int8.onnx", "model.int8-dynamic.onnx"))
    eq((read_meta(static).extra["quantization"], read_meta(dyn).extra["quantization"]), ("static_qdq", "dynamic"))
