"""The pipeline's form in a real browser (JupyterLab + Chromium): `ConfigForm(TrainParams)` shows an unknown model or a
bad value in the chosen model's nested form as exactly one error and disables Train until it is fixed; a valid form's
Train button trains in the background under the live monitor, and the run's params.yaml holds the form's values.
Screenshots land in tests/output/test_browser_form/."""
import json

import pytest
import yaml
from fastcore.test import test_eq as eq

from lab_browser import eventually, lab  # noqa: F401 (lab is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(400)]

FORM = '''import json
from qtnb.pipeline import TrainParams
from qtnb.widgets import ConfigForm
form = ConfigForm(TrainParams, values=dict(model="lstmm", data="synthetic:random_walk", seq_len=16, num_epochs=3, batch_size=128,
                                          runs_dir="runs"))
form'''
DUMP = '''json.dump(form.value.model_dump(mode="json"), open("form.json", "w"))'''

def _errors(form) -> list[str]:
    "The error messages the form shows (its nested model form's included)."
    return [e.inner_text() for e in form.locator(".qtnb-error").all() if e.is_visible()]

def _train_enabled(form) -> bool: return form.locator("button.qtnb-train").is_enabled()

def test_form_shows_one_error_and_blocks_train(lab):
    lab, ctx = lab
    with lab.notebook(ctx, "form_errors.ipynb", [FORM], ".qtnb-config-form") as (page, form):
        eventually(lambda: len(_errors(form)) == 1, 30, "the unknown model's error")
        assert "lstmm" in _errors(form)[0] and not _train_enabled(form), (_errors(form), _train_enabled(form))
        form.scroll_into_view_if_needed(); page.screenshot(path=str(lab.out / "form-unknown-model.png"))
        form.locator(".qtnb-field-model select").first.select_option("mlp")   # a model from the registry
        eventually(lambda: not _errors(form) and _train_enabled(form), 30, "the form to be valid with mlp")
        nested = form.locator(".qtnb-config-form .qtnb-field-hidden_sizes input").first   # the mlp's own form, nested
        nested.fill("0")
        eventually(lambda: len(_errors(form)) == 1 and not _train_enabled(form), 30, "one error for hidden_sizes 0")
        assert "greater than or equal to 1" in _errors(form)[0], _errors(form)
        page.screenshot(path=str(lab.out / "form-nested-error.png"))
        nested.fill("24, 12")
        eventually(lambda: not _errors(form) and _train_enabled(form), 30, "the error to clear")

def test_form_train_button_runs_the_form_values(lab):
    lab, ctx = lab
    with lab.notebook(ctx, "form_train.ipynb", [FORM, DUMP], ".qtnb-config-form", run=0) as (page, form):
        form.locator(".qtnb-field-model select").first.select_option("mlp")
        form.locator(".qtnb-config-form .qtnb-field-hidden_sizes input").first.fill("24, 12")
        eventually(lambda: not _errors(form) and _train_enabled(form), 30, "a valid form")
        form.locator("button.qtnb-train").click()
        mon = form.locator(".qtnb-training-monitor").first          # the live monitor, in the form's own output
        mon.wait_for(timeout=60_000)
        run = eventually(lambda: [p.parent for p in lab.root.glob("runs/*/status.json")
                                  if json.loads(p.read_text()).get("state") == "completed"], 180, "the run to complete")[0]
        eventually(lambda: mon.locator("[data-state='completed']").count() > 0, 30, "the monitor to say completed")
        mon.scroll_into_view_if_needed(); page.screenshot(path=str(lab.out / "form-trained.png"))
        lab.run_cell(page, 1)
        values = eventually(lambda: json.loads((lab.root / "form.json").read_text()), 60, "the form's values")
    params = yaml.safe_load((run / "params.yaml").read_text())
    shown = {k: v for k, v in values.items() if k not in ("run_id", "runs_dir", "resume")}   # where the run went is not a parameter
    eq(params["parameters"], shown)
    eq((values["model"], values["model_params"], values["num_epochs"]), ("mlp", {"hidden_sizes": [24, 12]}, 3))
    eq(params["model"]["hidden_sizes"], [24, 12])                   # the nested form's value reached the model
