"""The widgets in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium driven by Playwright.

Runs tests/notebooks/widgets_demo.ipynb in a fresh folder (its own run store) and checks what a person would see: the
LSTM's form, a preset changing values, the monitor's curve growing during a fit, Stop ending the fit early with the
run's status `stopped`, and the tuner panel listing trials. Screenshots land in tests/output/test_widgets_browser/ (JupyterLab and Chromium come from tests/lab_browser.py).
"""
import json, shutil
from pathlib import Path

import pytest
from lab_browser import eventually as _eventually, lab, plotted  # noqa: F401 (lab is a fixture: JupyterLab and Chromium for this module)

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "tests" / "notebooks" / "widgets_demo.ipynb"
OUT = ROOT / "tests" / "output" / "test_widgets_browser"   # where the lab fixture keeps its log
# what the demo notebook shows: the LSTM form's fields, the preset the test picks and the value it sets
FORM_FIELDS = ["hidden_size", "num_layers", "dropout", "bidirectional"]
PRESET, PRESET_FIELD, PRESET_VALUE = "easy", "hidden_size", "32"
N_TRIALS = 4
RUN_STATUS = True

@pytest.mark.browser
@pytest.mark.timeout(300)
def test_widgets_in_jupyterlab(lab):
    lab, ctx = lab
    shutil.copy(NB, lab.root / NB.name)
    page = ctx.new_page()
    try: _drive(page, lab)
    except BaseException:
        _shot(page, "failure")
        raise
    finally: page.close(); lab.shutdown_kernels()

def _shot(page, name):
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)

def _field_value(row) -> str:
    "What a field row shows: its input's value, a slider's readout, or a select's choice."
    for sel in (".widget-readout", "input", "select"):
        loc = row.locator(sel)
        if loc.count():
            return loc.first.inner_text() if sel == ".widget-readout" else loc.first.input_value()
    return row.inner_text()

def _drive(page, lab):
    page.set_default_timeout(60_000)
    root = lab.root
    lab.open(page, NB.name)
    lab.run_all(page)

    try: page.get_by_role("button", name="No", exact=True).click(timeout=2_000)   # JupyterLab's news toast
    except Exception: pass

    # the form: the model's fields, and a preset that changes them
    form = page.locator(".qtnb-config-form").first
    try: form.wait_for(timeout=30_000)
    except Exception:   # seen once: JupyterLab's first kernel websocket failed (500) and Run All ran only the first cell
        _shot(page, "run-all-retry"); lab.run_all(page); form.wait_for(timeout=60_000)
    for name in FORM_FIELDS: assert form.locator(f".qtnb-field-{name}").count() == 1, f"field {name} missing from the form"
    assert form.locator(".qtnb-field-hidden_size").is_visible() and not form.locator(".qtnb-field-bidirectional").is_visible()
    form.get_by_role("button", name="Show advanced").click()   # the advanced toggle reveals the rest
    _eventually(lambda: form.locator(".qtnb-field-bidirectional").is_visible(), 10, "advanced fields to show")
    head = form.locator(".qtnb-field-head_hidden")
    head.locator("input").fill("0")   # a layer of zero units: the message shows beside the field
    _eventually(lambda: head.locator(".qtnb-error").count() > 0, 20, "a validation message beside head_hidden")
    assert "greater than or equal to 1" in head.inner_text(), head.inner_text()
    _shot(page, "1b-form-invalid")
    head.locator("input").fill("")
    _eventually(lambda: head.locator(".qtnb-error").count() == 0, 20, "the message to clear")
    row = form.locator(f".qtnb-field-{PRESET_FIELD}")
    before = _field_value(row)
    form.scroll_into_view_if_needed(); _shot(page, "1-form")
    form.locator(".widget-dropdown select").first.select_option(PRESET)
    _eventually(lambda: _field_value(row) != before, 20, f"preset {PRESET!r} to change {PRESET_FIELD}")
    assert _field_value(row) == PRESET_VALUE, (_field_value(row), PRESET_VALUE)
    _shot(page, "2-form-preset")

    # the tuner panel lists the trials
    panel = page.locator(".qtnb-tuner-panel").first
    panel.wait_for(timeout=180_000)
    _eventually(lambda: panel.locator(".qtnb-trials-table tbody tr").count() >= N_TRIALS, 120, f"{N_TRIALS} trials in the table")
    _eventually(lambda: plotted(panel, "objective") >= 1, 30, "plotly to draw the objective in the live history chart")
    panel.scroll_into_view_if_needed(); _shot(page, "3-tuner")

    # the monitor: the curve grows during the fit, Stop ends it early, the run says `stopped`
    mon = page.locator(".qtnb-training-monitor").first
    mon.wait_for(timeout=120_000)
    points = lambda: plotted(mon, "train_loss")
    first = _eventually(points, 90, "the first points of the loss curve")
    _eventually(lambda: points() > first + 1, 90, "the loss curve to gain points")
    mon.scroll_into_view_if_needed(); _shot(page, "4-monitor-running")
    mon.locator("button.qtnb-stop").click()
    _eventually(lambda: mon.locator("[data-state='stopped']").count() > 0, 60, "the monitor to show 'stopped'")
    _shot(page, "5-monitor-stopped")
    text = mon.locator(".qtnb-progress-text").inner_text()
    done = int(text.split("epoch ")[1].split("/")[0]); total = int(text.split("/")[1].split()[0])
    assert done < total, f"the fit was not stopped early: {text}"
    if not RUN_STATUS: return
    statuses = [json.loads(p.read_text()) for p in root.glob("runs/*/status.json")]
    assert any(s.get("state") == "stopped" for s in statuses), statuses
