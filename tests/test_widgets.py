"""Widgets across processes: an executed notebook keeps its widget state and nbconvert's HTML draws it; without a
front end the same objects print text."""
import json, os, re, subprocess, sys
from pathlib import Path

import nbformat
import pytest
from fastcore.test import test_eq as eq

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "output" / "widgets"

def _execute(nb, cwd, **kw):
    from nbclient import NotebookClient
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}, **kw).execute()
    return nb

def test_saved_widget_state_renders_in_nbconvert_html(tmp_path):
    from nbconvert import HTMLExporter
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("from qtnb.widgets import ConfigForm, Chart\n"
                                          "form = ConfigForm('train', preset='easy')\nform"),
                nbformat.v4.new_code_cell("chart = Chart('loss', backend='svg')\n"
                                          "chart.update({'train_loss': ([1, 2, 3], [0.5, 0.4, 0.3])})\nchart.widget")]
    _execute(nb, tmp_path, store_widget_state=True)
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    views = [o for c in nb.cells for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    eq(len(views), 2)
    form_id = views[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert "qtnb-config-form" in state[form_id]["state"]["_dom_classes"]
    # the preset picker shows 'easy' and the epochs slider 20, in the saved state itself
    dropdowns = [m["state"] for m in state.values() if m["model_name"] == "DropdownModel" and m["state"].get("description") == "Preset"]
    eq(dropdowns[0]["_options_labels"][dropdowns[0]["index"]], "easy")
    eq([m["state"]["value"] for m in state.values() if m["state"].get("description") == "Num Epochs"], [20])
    html = HTMLExporter().from_notebook_node(nb)[0]
    OUT.mkdir(parents=True, exist_ok=True); (OUT / "widget_state.html").write_text(html)
    assert '<script type="application/vnd.jupyter.widget-state+json">' in html
    assert html.count('<script type="application/vnd.jupyter.widget-view+json">') == 2
    assert form_id in html and "@jupyter-widgets/html-manager" in html   # the embed manager that draws them
    assert "data-series=" in html                                       # the SVG chart travels inside the state

def test_text_mode_in_a_plain_process(tmp_path):
    "A script (no kernel): the monitor and the form print text and never fail."
    code = ("from qtnb.widgets import ConfigForm, TrainingMonitor, widget_frontend\n"
            "assert not widget_frontend()\n"
            "f = ConfigForm('data'); f.set(horizon=500); print(repr(f).splitlines()[0]); print(f.errors['horizon'])\n"
            "from qtnb.trainer import Trainer, toy_windows\n"
            "m = TrainingMonitor(every=0)\n"
            "Trainer('mlp', dict(num_epochs=3, device='cpu', importance=False), callbacks=[m]).fit(toy_windows(256), toy_windows(64, seed=1))\n")
    env = {k: v for k, v in os.environ.items() if k != "QTNB_WIDGETS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    eq(lines[0], "ConfigForm(DataConfig)")
    assert "less than or equal to 252" in lines[1]
    eq(sum(l.startswith("running: epoch") for l in lines), 3)
    assert lines[-1].startswith("completed: epoch 3/3")
