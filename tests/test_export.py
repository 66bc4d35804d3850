"""Every model family reaches serving, across the models registry, the trainer and export: the registry ships exactly the
families the parity test covers, each trained family exports to ONNX with parity against PyTorch (or the fitted
estimator), stateful RNNs carry their state over three chunks, every trained ensemble method exports as one graph, and
a real TensorRT engine matches eager PyTorch on a GPU machine (marked trt). The unit examples of export (architectures,
bad inputs, corrupt files, quantization, a stand-in TensorRT) live in nbs/08_export*.ipynb and nbs/09_tensorrt.ipynb."""
import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq, test_close as close
from torch import nn

from qtnb.export import (InferenceSession, check_parity, export_estimator, export_onnx, export_stateful, export_torchscript,
                         read_meta, stateful_parity)
from qtnb.models.core import create_model
from qtnb.trainer import Trainer, toy_windows
import qtnb.tensorrt as qtrt

L, F = 16, 5

# ---------------------------------------------------------------- the registry's families
TORCH_FAMILIES = ["cnn", "cnn_lstm", "gru", "lstm", "mlp", "transformer"]   # every torch family the registry ships
OTHER_FAMILIES = ["ensemble", "linear", "xgboost"]                            # estimators: exported by export_estimator


def test_registry_families_are_the_expected_ones():
    "Every registered family builds with its defaults, and the torch ones are exactly those the parity test covers."
    from qtnb.models.core import is_torch_model, list_models
    built = {m["name"]: create_model(m["name"], n_features=F, seq_len=L) for m in list_models()}   # a failure here fails
    eq(sorted(built), sorted(TORCH_FAMILIES + OTHER_FAMILIES))
    eq(sorted(n for n, m in built.items() if is_torch_model(m)), TORCH_FAMILIES)


@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_registry_family_parity(name, tmp_path):
    torch.manual_seed(0)
    m = create_model(name, n_features=F, seq_len=L).eval()
    for p in (export_onnx(m, tmp_path / "m.onnx"), export_torchscript(m, tmp_path / "m.ts")):
        df = check_parity(m, p)                                         # batch 1 and 64; two window lengths unless fixed
        assert (df.max_abs_diff <= 1e-5).all(), df
        eq(read_meta(p).dynamic_seq, not getattr(m, "fixed_seq_len", False))
        eq(df.seq_len.nunique(), 1 if getattr(m, "fixed_seq_len", False) else 2)


# ---------------------------------------------------------------- trained by the Trainer, then exported
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


# ----------------------------------------------------------------------------------------------------
# A real TensorRT engine against eager PyTorch, through `InferenceSession(backend="tensorrt")`, on a GPU machine with
# TensorRT (marked `trt`, skipped elsewhere). The build, cache and session logic runs everywhere in nbs/09_tensorrt.ipynb
# against a stand-in `tensorrt` for versions 10 and 11.
class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.lstm = nn.LSTM(4, 8, batch_first=True); self.head = nn.Linear(8, 2)
    def forward(self, x): return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.trt
def test_real_engine_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = Net().eval().cuda()
    p = export_onnx(net, tmp_path / "net.onnx", seq_len=12, n_features=4)
    x = np.random.default_rng(1).standard_normal((16, 12, 4)).astype(np.float32)
    with torch.inference_mode(): ref = net(torch.from_numpy(x).cuda()).cpu().numpy()
    for precision, eps in [("fp32", 1e-4), ("fp16", 1e-2)]:
        close(InferenceSession(p, backend="tensorrt", precision=precision).predict(x), ref, eps=eps)
    df = qtrt.benchmark(net, p, "fp16", batch_sizes=(1, 64), rounds=2, n=20)
    assert (df.memory_reduction > 0).all()
