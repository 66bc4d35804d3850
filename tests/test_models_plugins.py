"""Model plugins: a file dropped in the settings.ini plugin folder and a package declaring a `qtnb.models` entry point
both register, list and train like built-ins; a plugin that does not conform is refused with a ModelError saying what
is missing and never breaks the other models."""
import importlib, sys, textwrap, uuid, warnings
import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq

from qtnb.errors import ModelError
from qtnb.models import core
from qtnb.models.core import create_model, discover_plugins, list_models, load_plugin, param_count

from test_models import train_step

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

ESTIMATOR_PLUGIN = '''
from typing import ClassVar, Literal
import numpy as np
from qtnb.config import ModelConfig, param
from qtnb.models.core import EstimatorModel

class MeanConfig(ModelConfig):
    name: Literal["{name}"] = param("{name}", description="Registry name.", group="model")
    presets: ClassVar = {{"easy": {{}}, "medium": {{}}, "advanced": {{}}}}

class Mean(EstimatorModel):
    "Predicts the training mean."
    config_class = MeanConfig
    def fit(self, x, y, *, x_val=None, y_val=None, fit_torch=None):
        self.mean = self.check_targets(y, len(self.check_windows(x))).mean(0); return self
    def predict(self, x): return np.tile(self.mean, (len(self.check_windows(x)), 1))
    def n_params(self): return self.n_outputs
    def size_bytes(self): return 8 * self.n_outputs
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


def test_estimator_plugin_and_ensemble_member(plugin_folder):
    name = unique("mean")
    (plugin_folder / f"{name}.py").write_text(ESTIMATOR_PLUGIN.format(name=name))
    x, y = np.random.default_rng(0).standard_normal((50, 6, 2)), np.arange(50.0)
    m = create_model(name, n_features=2, seq_len=6).fit(x, y)
    np.testing.assert_allclose(m.predict(x[:3]), 24.5)
    ens = create_model({"name": "ensemble", "members": [{"name": name}, {"name": "linear"}]}, n_features=2, seq_len=6).fit(x, y)
    eq(ens.predict(x).shape, (50, 1))


def test_changed_plugin_file_is_reloaded(plugin_folder):
    name = unique("changing")
    f = plugin_folder / f"{name}.py"
    f.write_text(torch_plugin(name))
    eq(create_model(name, n_features=3, seq_len=4).config.width, 8)
    f.write_text(torch_plugin(name).replace("param(8,", "param(5,"))
    import os; st = f.stat(); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    list_models()
    eq(create_model(name, n_features=3, seq_len=4).config.width, 5)


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


BROKEN = {
    "no_presets": (lambda n: torch_plugin(n).replace('"medium": dict(width=8), "advanced": dict(width=32)', ''),
                   "presets lacks 'medium', 'advanced'"),
    "no_forward": (lambda n: torch_plugin(n).replace("def forward(self, x)", "def predict(self, x)"), "does not define forward()"),
    "no_description": (lambda n: torch_plugin(n).replace('description="Hidden units.", ', 'description="", '), "width has no description"),
    "syntax": (lambda n: torch_plugin(n) + "\ndef oops(:\n", "failed to import: SyntaxError"),
    "wrong_shape": (lambda n: torch_plugin(n).replace("return self.head(self.body(x.mean(1)))", "return self.body(x)"),
                    "forward on a (2, 32, 4) batch returns"),
    "takes_lstm": (lambda n: torch_plugin(n).replace(f'"{n}"', '"lstm"'), "the name 'lstm' is taken"),
    "not_a_model": (lambda n: "class Thing:\n    config_class = int\n", "subclasses neither"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_plugin_is_refused_and_others_survive(plugin_folder, kind):
    good, bad = unique("good"), unique(kind)
    make, why = BROKEN[kind]
    (plugin_folder / f"{good}.py").write_text(torch_plugin(good))
    (plugin_folder / f"{bad}.py").write_text(make(bad))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        listed = names()
    assert good in listed and bad not in listed and "lstm" in listed
    msg = core.REJECTED[f"plugin file {(plugin_folder / f'{bad}.py').resolve()}"]
    assert why in msg and "\n" not in msg, msg
    assert any(why in str(x.message) for x in w)
    with pytest.raises(ModelError, match=why.replace("(", r"\(").replace(")", r"\)")):
        load_plugin(plugin_folder / f"{bad}.py")
    eq(core.MODELS["lstm"].source, "qtnb.models.rnn")  # a plugin cannot take a built-in's name
    eq(tuple(create_model("lstm", n_features=2, seq_len=5)(torch.randn(1, 5, 2)).shape), (1, 1))
    if kind != "takes_lstm":
        with pytest.raises(ModelError, match="plugin\\(s\\) were refused"): create_model(bad, n_features=2, seq_len=5)


def test_missing_plugin_folder_means_no_plugins(tmp_path, monkeypatch):
    (tmp_path / "settings.ini").write_text("[models]\nplugin_dir = not_there\n")
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "settings.ini"))
    eq(core.plugin_dir(), tmp_path / "not_there")
    assert "mlp" in names()
