"""Export parity across architectures and both exporters, the dynamic-axes checks, quantization, and the bad-input
corpus of qtnb.export (unsupported ops, wrong features, corrupt and truncated files)."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails

from qtnb.errors import ExportError
from qtnb.export import (ExportMeta, InferenceSession, check_parity, export_onnx, export_torchscript, onnx_input_dims,
                         quantization_report, quantize_dynamic_int8, quantize_static_qdq, read_meta, to_fp16)

L, F = 16, 5


class GRU(nn.Module):
    def __init__(self): super().__init__(); self.r = nn.GRU(F, 16, 2, batch_first=True, dropout=0.1); self.h = nn.Linear(16, 1)
    def forward(self, x): return self.h(self.r(x)[0][:, -1])

class LSTM(nn.Module):
    def __init__(self): super().__init__(); self.r = nn.LSTM(F, 16, 2, batch_first=True); self.h = nn.Linear(16, 1)
    def forward(self, x): return self.h(self.r(x)[0][:, -1])

class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Sequential(nn.Conv1d(F, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(), nn.AdaptiveAvgPool1d(1)); self.h = nn.Linear(16, 2)
    def forward(self, x): return self.h(self.c(x.transpose(1, 2)).squeeze(-1))

class CNNLSTM(nn.Module):
    def __init__(self): super().__init__(); self.c = nn.Conv1d(F, 8, 3, padding=1); self.r = nn.LSTM(8, 16, batch_first=True); self.h = nn.Linear(16, 3)
    def forward(self, x): return self.h(self.r(torch.relu(self.c(x.transpose(1, 2))).transpose(1, 2))[0][:, -1])

class Transformer(nn.Module):
    def __init__(self):
        super().__init__(); self.inp = nn.Linear(F, 32); self.pos = nn.Parameter(torch.randn(1, 128, 32) * 0.02)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2); self.h = nn.Linear(32, 1)
    def forward(self, x): return self.h(self.enc(self.inp(x) + self.pos[:, :x.shape[1]]).mean(1))

class MLP(nn.Module):
    def __init__(self): super().__init__(); self.n = nn.Sequential(nn.Flatten(), nn.Linear(L * F, 32), nn.ReLU(), nn.Linear(32, 1))
    def forward(self, x): return self.n(x)

class Ensemble(nn.Module):
    def __init__(self): super().__init__(); self.m = nn.ModuleList([GRU(), CNNLSTM(), MLP()])
    def forward(self, x): return torch.stack([m(x)[:, :1] for m in self.m]).mean(0)

ARCHS = [MLP, LSTM, GRU, CNN, CNNLSTM, Transformer, Ensemble]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.__name__)
def test_both_exporters_match_eager(arch, tmp_path):
    torch.manual_seed(0)
    m = arch().eval()
    onnx_p = export_onnx(m, tmp_path / "m.onnx", seq_len=L, n_features=F)    # raises unless parity and axes hold
    ts_p = export_torchscript(m, tmp_path / "m.ts", seq_len=L, n_features=F)
    fixed = arch in (MLP, Ensemble)  # both flatten the window: only the batch axis is dynamic
    eq(onnx_input_dims(onnx_p)["x"], ["batch", L, F] if fixed else ["batch", "seq", F])
    for p in (onnx_p, ts_p):
        df = check_parity(m, p)
        eq(sorted(df.batch.unique()), [1, 64])
        eq(sorted(df.seq_len.unique()), [L] if fixed else [L, L + L // 2])
        assert (df.max_abs_diff <= 1e-5).all(), df
    mp = onnx.load(str(onnx_p))
    eq(len(mp.graph.initializer) > 0, True)                   # weights inside: one self-contained file
    assert not list(tmp_path.glob("*.data"))


def test_parity_check_catches_a_wrong_file(tmp_path):
    a, b = LSTM().eval(), LSTM().eval()
    p = export_onnx(a, tmp_path / "a.onnx", seq_len=L, n_features=F)
    with pytest.raises(ExportError, match="differs from eager PyTorch"): check_parity(b, p)


def test_repeated_lstm_exports_keep_the_sequence_axis(tmp_path):
    for i in range(3):  # the dynamo exporter once froze seq on the second LSTM export in a process
        p = export_onnx(LSTM().eval(), tmp_path / f"l{i}.onnx", seq_len=L, n_features=F)
        eq(onnx_input_dims(p)["x"], ["batch", "seq", F])
        eq(InferenceSession(p).predict(np.zeros((3, 40, F), np.float32)).shape, (3, 1))


def test_legacy_exporter_too(tmp_path):
    p = export_onnx(GRU().eval(), tmp_path / "g.onnx", seq_len=L, n_features=F, dynamo=False)
    eq(read_meta(p).extra["exporter"], "torchscript")
    eq(onnx_input_dims(p)["x"], ["batch", "seq", F])


def test_metadata_travels(tmp_path):
    meta = ExportMeta(seq_len=L, n_features=F, feature_names=[f"f{i}" for i in range(F)], horizon=5, task="regression",
                      scaler={"kind": "standard", "mean": [0.5] * F, "scale": [2.0] * F}, name="lstm")
    for p in (export_onnx(LSTM().eval(), tmp_path / "m.onnx", meta=meta), export_torchscript(LSTM().eval(), tmp_path / "m.ts", meta=meta)):
        got = read_meta(p)
        eq((got.feature_names, got.horizon, got.scaler["scale"], got.name), (meta.feature_names, 5, [2.0] * F, "lstm"))
        import qtnb
        eq(got.qtnb_version, qtnb.__version__)


# ---------------------------------------------------------------- quantization
def test_quantization_reports_the_accuracy_change(tmp_path):
    torch.manual_seed(0)
    m = LSTM().eval()
    p = export_onnx(m, tmp_path / "m.onnx", seq_len=L, n_features=F)
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((200, L, F)).astype(np.float32), rng.standard_normal((100, L, F)).astype(np.float32)
    with torch.inference_mode(): y = m(torch.from_numpy(test)).numpy() + 0.01 * rng.standard_normal((100, 1))
    for q in (quantize_dynamic_int8(p), quantize_static_qdq(p, train)):
        r = quantization_report(p, q, test, y)
        assert 0 < r["max_abs_diff"] < 0.1 and r["metric"] == "mse", r
        close(r["change"], r["quantized"] - r["fp32"], eps=1e-12)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops           # explicit Q/DQ: what TensorRT 11 needs for INT8
    h = to_fp16(p)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(h)).graph.initializer)


# ---------------------------------------------------------------- bad input
class UsesCummax(nn.Module):
    def forward(self, x): return torch.cummax(x, 1)[0][:, -1]

class UsesEigh(nn.Module):
    def forward(self, x):
        a = x[:, :4, :4]
        return torch.linalg.eigh(a @ a.transpose(1, 2))[0]


@pytest.mark.parametrize("mod,op", [(UsesCummax, "aten.cummax"), (UsesEigh, "linalg_eigh")])
def test_unsupported_op_is_named(mod, op, tmp_path):
    with pytest.raises(ExportError, match=op.replace(".", r"\.")): export_onnx(mod(), tmp_path / "x.onnx", seq_len=8, n_features=F)
    assert not (tmp_path / "x.onnx").exists()


def test_wrong_input_is_named(tmp_path):
    meta = ExportMeta(seq_len=L, n_features=F, feature_names=["open", "high", "low", "close", "volume"])
    p = export_onnx(MLP().eval(), tmp_path / "m.onnx", meta=meta)
    s = InferenceSession(p)
    fails(lambda: s.predict(np.zeros((2, L, F - 1), np.float32)), contains="4 features but the model was trained on 5 (open, high, low, close, volume)")
    fails(lambda: s.predict(np.zeros((2, L + 1, F), np.float32)), contains="exactly seq_len=16")
    fails(lambda: s.predict(np.zeros((2, 3, L, F), np.float32)), contains="expected a window")
    fails(lambda: s.predict(np.zeros((L, F), np.complex64)), contains="not numeric")
    x = np.zeros((L, F)); x[3, 2] = np.inf
    fails(lambda: s.predict(x), contains="row 3, feature low")
    fails(lambda: export_onnx(object(), tmp_path / "o.onnx", seq_len=L, n_features=F), contains="nn.Module")


@pytest.mark.parametrize("cut", [0, 10, 300, -20])
def test_corrupt_or_truncated_files(cut, tmp_path):
    p = export_onnx(LSTM().eval(), tmp_path / "m.onnx", seq_len=L, n_features=F)
    t = export_torchscript(LSTM().eval(), tmp_path / "m.ts", seq_len=L, n_features=F)
    for good, name in ((p, "bad.onnx"), (t, "bad.ts")):
        data = good.read_bytes()
        bad = tmp_path / name
        bad.write_bytes(b"garbage" * 50 if cut == 0 else data[:cut])
        with pytest.raises(ExportError, match="truncated or corrupt|not valid JSON|carries no qtnb metadata"): InferenceSession(bad)


def test_onnx_without_qtnb_metadata(tmp_path):
    buf = tmp_path / "plain.onnx"
    torch.onnx.export(LSTM().eval(), (torch.zeros(2, L, F),), str(buf), dynamo=False, input_names=["x"])
    fails(lambda: InferenceSession(buf), contains="carries no qtnb metadata")
    s = InferenceSession(buf, meta=dict(seq_len=L, n_features=F))   # exported without dynamic axes: batch fixed at 2
    eq(s.predict(np.zeros((2, L, F))).shape, (2, 1))
    fails(lambda: s.predict(np.zeros((L, F))), contains="onnxruntime failed on input of shape (1, 16, 5)")


# ---------------------------------------------------------------- the registry's torch families
TORCH_FAMILIES = ["cnn", "cnn_lstm", "gru", "lstm", "mlp", "transformer"]   # every torch family the registry ships
OTHER_FAMILIES = ["ensemble", "linear", "xgboost"]                            # estimators: exported by export_estimator


def test_registry_families_are_the_expected_ones():
    "Every registered family builds with its defaults, and the torch ones are exactly those the parity test covers."
    from qtnb.models.core import create_model, is_torch_model, list_models
    built = {m["name"]: create_model(m["name"], n_features=F, seq_len=L) for m in list_models()}   # a failure here fails
    eq(sorted(built), sorted(TORCH_FAMILIES + OTHER_FAMILIES))
    eq(sorted(n for n, m in built.items() if is_torch_model(m)), TORCH_FAMILIES)


@pytest.mark.parametrize("name", TORCH_FAMILIES)
def test_registry_family_parity(name, tmp_path):
    from qtnb.models.core import create_model
    torch.manual_seed(0)
    m = create_model(name, n_features=F, seq_len=L).eval()
    for p in (export_onnx(m, tmp_path / "m.onnx"), export_torchscript(m, tmp_path / "m.ts")):
        df = check_parity(m, p)                                         # batch 1 and 64; two window lengths unless fixed
        assert (df.max_abs_diff <= 1e-5).all(), df
        eq(read_meta(p).dynamic_seq, not getattr(m, "fixed_seq_len", False))
        eq(df.seq_len.nunique(), 1 if getattr(m, "fixed_seq_len", False) else 2)


# ---------------------------------------------------------------- estimators and ensembles
def _fitted(cfg, task="regression"):
    from qtnb.models.core import create_model
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, L, F)).astype(np.float32)
    y = x[:, -1, :1] * 0.5 + 0.1 * rng.standard_normal((300, 1))
    if task == "classification": y = (y[:, 0] > 0).astype(int)
    return create_model(cfg, n_features=F, seq_len=L).fit(x, y, fit_torch=lambda m, *a: m.eval()), x


@pytest.mark.parametrize("cfg", [{"name": "xgboost", "n_estimators": 15}, {"name": "linear", "lags": 4},
                                 {"name": "xgboost", "n_estimators": 15, "task": "classification", "n_outputs": 2},
                                 {"name": "linear", "task": "classification", "n_outputs": 2}], ids=str)
def test_estimators_export_to_onnx(cfg, tmp_path):
    from qtnb.export import export_estimator
    m, x = _fitted(cfg, cfg.get("task", "regression"))
    p = export_estimator(m, tmp_path / "m.onnx", windows=x)
    eq(p.suffix, ".onnx")
    close(InferenceSession(p).predict_batch(x), m.predict(x), eps=1e-4)   # windows in, the model's own outputs out
    d = onnx_input_dims(p)["x"]
    eq((d[0], d[2]), ("batch", F))  # a linear model takes its last lags rows, so it also serves longer windows


def test_torch_and_mixed_ensembles_are_one_graph(tmp_path):
    from qtnb.export import export_estimator
    ens, x = _fitted({"name": "ensemble", "members": [{"name": "lstm", "hidden_size": 8}, {"name": "cnn"}], "method": "weighted", "weights": [0.3, 0.7]})
    p = export_estimator(ens, tmp_path / "e.onnx", windows=x[:64], atol=1e-5)
    close(InferenceSession(p).predict(x[:64]), ens.predict(x[:64]), eps=1e-5)
    mixed, _ = _fitted({"name": "ensemble"})  # linear + xgboost members by default: onnxmltools trees beside the linear map
    p = export_estimator(mixed, tmp_path / "mixed.onnx", windows=x[:64], atol=1e-5)
    close(InferenceSession(p).predict(x[:64]), mixed.predict(x[:64]), eps=1e-5)
