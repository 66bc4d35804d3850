"""The model zoo across families: defaults and presets build, shapes, exact parameter counts, schemas, the train path
every torch model shares, and the bad-input corpus (each a one-line error naming the field)."""
import numpy as np
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq

from qtnb.config import schema_problems
from qtnb.errors import ConfigError, ModelError, QtnbError
from qtnb.models.core import (EstimatorModel, PRESETS, TorchModel, create_model, is_torch_model, list_models,
                              model_config_class, model_schema, model_size_mb, param_count, permutation_importance)

TORCH = ["mlp", "lstm", "gru", "cnn", "cnn_lstm", "transformer"]
ESTIMATORS = ["linear", "xgboost", "ensemble"]
F, L = 5, 32
# exact parameter counts of each default config for windows of 32 rows by 5 features (estimators: before fitting)
DEFAULT_PARAMS = {"mlp": 12417, "lstm": 51521, "gru": 38657, "cnn": 7105, "cnn_lstm": 40385, "transformer": 67521,
                  "linear": 32 * 5 + 1, "xgboost": 0, "ensemble": 32 * 5 + 1}
CASES = [("regression", 1, 1), ("regression", 3, 3), ("classification", 1, 1), ("classification", 2, 1), ("classification", 4, 4)]


def train_step(model, x, y):
    "The path every torch model takes in the trainer: forward, loss, backward, step. Returns the loss."
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    out = model(x)
    if model.config.task == "regression": loss = torch.nn.functional.mse_loss(out, y.float())
    elif out.shape[1] == 1: loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
    else: loss = torch.nn.functional.cross_entropy(out, y.long())
    opt.zero_grad(); loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "a parameter got no gradient"
    opt.step()
    return float(loss.detach())


def targets(task, n_out, n, width):
    g = torch.Generator().manual_seed(1)
    if task == "regression": return torch.randn(n, width, generator=g)
    return torch.randint(0, max(2, n_out), (n,), generator=g)


def test_list_models_covers_every_family():
    rows = {m["name"]: m for m in list_models()}
    assert set(TORCH + ESTIMATORS) <= set(rows)
    for name in TORCH + ESTIMATORS:
        assert rows[name]["description"] and rows[name]["family"]
        assert set(rows[name]["tasks"]) == {"regression", "classification"}
    eq(rows["lstm"]["family"], "rnn")


@pytest.mark.parametrize("name", TORCH + ESTIMATORS)
def test_schema_is_complete(name):
    cls = model_config_class(name)
    eq(schema_problems(cls), [])
    s = model_schema(name)
    eq(set(s["presets"]), set(PRESETS))
    for field, prop in s["properties"].items():
        assert "group" in prop and "advanced" in prop and prop.get("description"), field
    eq(s["properties"]["name"]["const"] if "const" in s["properties"]["name"] else s["properties"]["name"]["enum"][0], name)


@pytest.mark.parametrize("name", TORCH + ESTIMATORS)
def test_default_param_count(name):
    m = create_model(name, n_features=F, seq_len=L)
    eq(param_count(m), DEFAULT_PARAMS[name])
    eq(is_torch_model(m), name in TORCH)
    assert isinstance(m, TorchModel if name in TORCH else EstimatorModel)
    buffers = 32 * 4 if name == "transformer" else 0  # the sinusoidal encoding's 32 frequencies
    if name in TORCH: assert model_size_mb(m) == pytest.approx((DEFAULT_PARAMS[name] * 4 + buffers) / 2**20)


@pytest.mark.parametrize("name", TORCH)
@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_torch_shapes_and_train_step(name, preset):
    cls = model_config_class(name)
    x = torch.randn(8, L, F)
    for task, n_out, width in CASES:
        kw = dict(task=task, n_outputs=n_out)
        cfg = cls(**kw) if preset is None else cls.from_preset(preset, **kw)
        m = create_model(cfg, n_features=F, seq_len=L)
        eq(tuple(m(x).shape), (8, width))
        assert np.isfinite(train_step(m, x, targets(task, n_out, 8, width)))


def test_estimators_fit_predict_every_preset():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 8, 3)).astype("float32")
    for name in ["linear", "xgboost"]:
        cls = model_config_class(name)
        small = {"n_estimators": 10} if name == "xgboost" else {}
        for preset in [None, *PRESETS]:
            for task, n_out, width in CASES:
                cfg = cls(task=task, n_outputs=n_out, **small) if preset is None else cls.from_preset(preset, task=task, n_outputs=n_out, **small)
                y = rng.standard_normal((120, width)) if task == "regression" else np.arange(120) % max(2, n_out)
                m = create_model(cfg, n_features=3, seq_len=8).fit(x, y)
                eq(m.predict(x).shape, (120, width))
                assert param_count(m) > 0 and model_size_mb(m) > 0


def test_params_yaml_round_trip(tmp_path):
    cfg = model_config_class("transformer").from_preset("advanced", task="classification", n_outputs=3)
    cfg.to_yaml(tmp_path / "params.yaml")
    again = create_model(yaml.safe_load((tmp_path / "params.yaml").read_text()), n_features=F, seq_len=L)
    eq(again.config, cfg)
    eq(param_count(again), param_count(create_model(cfg, n_features=F, seq_len=L)))


def test_permutation_importance_torch_model():
    torch.manual_seed(0)
    m = create_model({"name": "mlp", "hidden_sizes": [16], "dropout": 0.0}, n_features=3, seq_len=4)
    x = torch.randn(256, 4, 3)
    y = x[:, -1, 2:3] * 3
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(m(x), y); opt.zero_grad(); loss.backward(); opt.step()
    imp = permutation_importance(m, x.numpy(), y.numpy(), ["a", "b", "c"])
    eq(imp.index[0], "c")
    assert imp["c"] > 10 * max(abs(imp["a"]), abs(imp["b"]), 1e-3)


# --- bad input: each a one-line ConfigError/ModelError naming the field ---------------------------------------------

BAD = [
    (lambda: create_model("lstn", n_features=F, seq_len=L), ModelError, ["unknown model 'lstn'", "known models: ", "lstm", "xgboost"]),
    (lambda: create_model({"name": "transformer", "d_model": 8, "n_heads": 16}, n_features=F, seq_len=L), ConfigError, ["n_heads=16", "d_model=8"]),
    (lambda: create_model({"name": "transformer", "d_model": 30, "n_heads": 4}, n_features=F, seq_len=L), ConfigError, ["d_model=30 is not divisible by n_heads=4"]),
    (lambda: create_model({"name": "cnn", "kernel_sizes": [40, 3]}, n_features=F, seq_len=L), ConfigError, ["kernel_sizes[0]=40", "seq_len=32"]),
    (lambda: create_model({"name": "cnn_lstm", "kernel_sizes": [9, 3], "pool_sizes": [4, 1]}, n_features=F, seq_len=16), ConfigError, ["kernel_sizes[1]=3"]),
    (lambda: create_model({"name": "ensemble", "members": []}, n_features=F, seq_len=L), ConfigError, ["members is empty"]),
    (lambda: create_model({"name": "ensemble", "method": "weighted", "weights": [0, 0]}, n_features=F, seq_len=L), ConfigError, ["weights sum to 0"]),
    (lambda: create_model({"name": "ensemble", "weights": [1, -2]}, n_features=F, seq_len=L), ConfigError, ["weights[1]=-2"]),
    (lambda: create_model({"name": "ensemble", "members": [{"name": "gru", "num_layers": 0}]}, n_features=F, seq_len=L), ConfigError, ["members[0] (gru)", "num_layers=0"]),
    (lambda: create_model({"name": "mlp", "hiden_sizes": [8]}, n_features=F, seq_len=L), ConfigError, ["unknown field 'hiden_sizes'", "did you mean 'hidden_sizes'"]),
    (lambda: create_model({"hidden_sizes": [8]}, n_features=F, seq_len=L), ConfigError, ["has no 'name'"]),
    (lambda: create_model({"name": "lstm", "task": "ranking"}, n_features=F, seq_len=L), ConfigError, ["task='ranking' is invalid"]),
    (lambda: create_model("mlp", n_features=F, seq_len=0), ModelError, ["seq_len=0 is invalid"]),
    (lambda: create_model(3, n_features=F, seq_len=L), ModelError, ["not int"]),
    (lambda: create_model({"name": "linear", "lags": 64}, n_features=F, seq_len=L), ConfigError, ["lags=64 is longer than the window"]),
    (lambda: create_model("xgboost", n_features=F, seq_len=L).fit(np.zeros((10, L, F + 1)), np.zeros(10)), ModelError, ["shape (10, 32, 6)", "n_features=5"]),
    (lambda: create_model({"name": "linear", "task": "classification"}, n_features=F, seq_len=L).fit(np.zeros((10, L, F)), np.full(10, 0.5)), ModelError, ["integer class labels"]),
    (lambda: create_model({"name": "gru", "stateful": True, "bidirectional": True}, n_features=F, seq_len=L), ConfigError, ["stateful=True cannot be bidirectional"]),
]


@pytest.mark.parametrize("make,err,parts", BAD, ids=range(len(BAD)))
def test_bad_input_is_one_line(make, err, parts):
    with pytest.raises(err) as e: make()
    msg = str(e.value)
    assert isinstance(e.value, QtnbError) and "\n" not in msg, msg
    for p in parts: assert p in msg, (p, msg)
