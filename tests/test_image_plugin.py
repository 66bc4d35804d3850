"""The image-classification plugin end to end through the Python API: scikit-learn's bundled 8x8 digits (no download),
the registry, the generated form, the same `Trainer`, and ONNX export with parity. (The train pipeline prepares financial
series, so images go through the Python API, not `qtnb run train`.)"""
import numpy as np
import pytest
import torch

from fastcore.test import test_eq as eq

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
