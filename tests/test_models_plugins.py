"""Model plugins found the way users install them: a file dropped in the folder settings.ini names (through
QTNB_SETTINGS) and a package declaring a `qtnb.models` entry point both register, list and train like built-ins; an
entry point that does not conform is refused with a ModelError; the image-classification plugin end to end. (Loading,
refusing and reloading plugin files are examples in nbs/03_models.core.ipynb.)"""
import importlib, uuid
import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq

from qtnb.models import core
from qtnb.models.core import create_model, discover_plugins, list_models, param_count



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

TORCH_PLUGIN = '''
from typing import ClassVar, Literal
import torch
from qtnb.config import ModelConfig, param
from qtnb.models.core import TorchModel, Head

class {cls}Config(ModelConfig):
    name: Literal["{name}"] = param("{name}", description="Registry name.", group="model")
    width: int = param(8, description="Hidden units.", group="architecture", ge=1, le=1024)
    presets: ClassVar = {{"easy": dict(width=4), "medium": dict(width=8), "advanced": dict(width=32)}}

class {cls}(TorchModel):
    "Mean of the window through a small MLP."
    config_class, family = {cls}Config, "plugin"
    def __init__(self, config, *, n_features, seq_len):
        super().__init__(config, n_features=n_features, seq_len=seq_len)
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, config.width), torch.nn.ReLU())
        self.head = Head(config.width, config)
    def forward(self, x): return self.head(self.body(x.mean(1)))
'''

def unique(prefix): return f"{prefix}_{uuid.uuid4().hex[:6]}"


def torch_plugin(name): return TORCH_PLUGIN.format(name=name, cls="P" + name.title().replace("_", ""))


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    "A settings.ini whose [models] plugin_dir is a fresh folder, in force through QTNB_SETTINGS."
    (tmp_path / "settings.ini").write_text("[models]\nplugin_dir = my_plugins\n")
    (tmp_path / "my_plugins").mkdir()
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "settings.ini"))
    return tmp_path / "my_plugins"


def names(): return [m["name"] for m in list_models()]


def test_folder_plugin_lists_and_trains(plugin_folder):
    name = unique("folder")
    (plugin_folder / f"{name}.py").write_text(torch_plugin(name))
    assert name in names()
    row = next(m for m in list_models() if m["name"] == name)
    eq(row["family"], "plugin"); eq(row["description"], "Mean of the window through a small MLP.")
    assert row["source"].startswith("plugin file ") and row["source"].endswith(f"{name}.py")
    for task, n_out, width in [("regression", 2, 2), ("classification", 3, 3)]:
        m = create_model({"name": name, "task": task, "n_outputs": n_out}, n_features=4, seq_len=16)
        x = torch.randn(8, 16, 4)
        eq(tuple(m(x).shape), (8, width))
        y = torch.randn(8, width) if task == "regression" else torch.randint(0, 3, (8,))
        assert np.isfinite(train_step(m, x, y))
    eq(param_count(create_model(name, n_features=4, seq_len=16)), 4 * 8 + 8 + 9)
    eq(set(core.model_schema(name)["presets"]), {"easy", "medium", "advanced"})


@pytest.fixture
def entry_point_dist(tmp_path, monkeypatch):
    "An installed-looking distribution on sys.path whose entry_points.txt declares a qtnb.models plugin."
    name = unique("ep")
    modname = f"qtnb_ep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{modname}.py").write_text(torch_plugin(name))
    dist = tmp_path / f"{modname}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {modname}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[qtnb.models]\n{name} = {modname}:P{name.title().replace('_', '')}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return name, modname


def test_entry_point_plugin_lists_and_trains(entry_point_dist):
    name, modname = entry_point_dist
    rows = {m["name"]: m for m in list_models()}
    assert name in rows
    assert rows[name]["source"].startswith(f"entry point {name} = {modname}:")
    m = create_model({"name": name, "task": "classification"}, n_features=3, seq_len=10)
    x = torch.randn(6, 10, 3)
    eq(tuple(m(x).shape), (6, 1))
    assert np.isfinite(train_step(m, x, torch.randint(0, 2, (6,))))


def test_entry_point_module_that_does_not_conform(tmp_path, monkeypatch):
    modname = f"qtnb_bad_ep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{modname}.py").write_text("import math\n")
    dist = tmp_path / f"{modname}-0.1.dist-info"; dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {modname}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[qtnb.models]\nbad = {modname}\n")
    monkeypatch.syspath_prepend(str(tmp_path)); importlib.invalidate_caches()
    with pytest.warns(UserWarning, match="defines no model class"):
        rejected = discover_plugins(entry_points=True)
    assert any(k.startswith(f"entry point bad = {modname}") for k in rejected)


# ----------------------------------------------------------------------------------------------------
# The image-classification plugin end to end through the Python API: scikit-learn's bundled 8x8 digits (no download),
# the registry, the generated form, the same `Trainer`, and ONNX export with parity. (The train pipeline prepares financial
# series, so images go through the Python API, not `qtnb run train`.)
@pytest.fixture
def one_thread():
    "On a shared 2-core machine a tiny CNN is many times slower with torch's default thread pool."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def test_registry_and_form_know_the_plugin():
    from qtnb.models.core import list_models, model_config_class
    import qtnb.models.image  # noqa: F401  registers image_resnet
    row = next(m for m in list_models() if m["name"] == "image_resnet")
    eq(row["family"], "image")
    from qtnb.widgets import ConfigForm
    form = ConfigForm(model_config_class("image_resnet"))
    assert {"channels", "blocks_per_stage", "dropout"} <= set(form.fields), list(form.fields)
    form.apply_preset("advanced")
    cfg = form.value
    eq(cfg.channels, [32, 64, 128]); eq(cfg.blocks_per_stage, 2)

@pytest.mark.slow
def test_digits_reach_95_percent_and_export_with_parity(tmp_path, one_thread):
    import onnxruntime as ort
    from qtnb.export import export_onnx
    from qtnb.models.image import digits_windows
    from qtnb.trainer import Trainer
    tr, va, te = digits_windows()
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    t = Trainer({"name": "image_resnet", "channels": [8, 16]}, num_epochs=12, batch_size=64, learning_rate=3e-3,
                early_stopping_patience=5, importance=False, seed=0, loss=lambda out, y: ce(out, y.reshape(-1).long()))
    res = t.fit(tr, va, test=te)
    assert res.test_metrics["accuracy"] >= 0.95, res.test_metrics
    eq(res.test_metrics["n"] if "n" in res.test_metrics else len(te), len(te))
    x = te.x.numpy().reshape(-1, 8, 8)
    y = te.y.numpy()[7::8]
    with torch.no_grad(): logits = t.model.eval()(torch.from_numpy(x)).numpy()
    assert (logits.argmax(1) == y).mean() >= 0.95              # the accuracy, recomputed from the model itself
    p = export_onnx(t.model, tmp_path / "digits.onnx", atol=1e-5)
    s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    for batch in (1, 37, len(x)):                              # the batch axis stays dynamic
        got = s.run(None, {s.get_inputs()[0].name: x[:batch]})[0]
        assert np.abs(got - logits[:batch]).max() <= 1e-5
