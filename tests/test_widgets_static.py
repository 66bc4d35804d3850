"""Widgets leave their final state as static output: a monitored fit executed headlessly (nbclient, as papermill runs
pipelines), saved, and converted with nbconvert still shows the curves and the status line with no script or network."""
import json, sys
from pathlib import Path

import nbformat
import pytest

from fastcore.test import test_eq as eq
from lab_browser import plotly_figures

CELL = '''from qtnb.trainer import Trainer, toy_windows
from qtnb.widgets import TrainingMonitor
train, val = toy_windows(256, seq_len=8, n_features=3), toy_windows(128, seq_len=8, n_features=3, seed=1)
mon = TrainingMonitor(mode="widgets", every=0.05)
mon.fit(Trainer("mlp", dict(num_epochs=4, batch_size=64, device="cpu", importance=False, early_stopping_patience=0)), train, val)
res = mon.wait(120)'''

def test_monitor_figure_and_static_copy():
    from qtnb.trainer import Trainer, toy_windows
    from qtnb.widgets import TrainingMonitor
    w = toy_windows(256, seq_len=8, n_features=3)
    mon = TrainingMonitor(mode="widgets", every=0)
    Trainer("mlp", dict(num_epochs=3, batch_size=64, device="cpu", importance=False, early_stopping_patience=0), callbacks=[mon]).fit(w, w)
    fig = mon.figure()
    eq(list(fig.data[0].x), [1, 2, 3]); eq(fig.layout.xaxis.tickformat, "d")
    assert "lr" not in [t.name for t in fig.data]                       # a constant learning rate is not drawn
    s = mon.last_static
    assert s["text/plain"].startswith("TrainingMonitor(completed: epoch 3/3"), s["text/plain"]
    eq([t["x"] for t in plotly_figures(s["text/html"])[0]["data"][:2]], [[1, 2, 3]] * 2)   # 3 epochs x train and val loss

@pytest.mark.slow
def test_saved_notebook_and_its_html_show_the_final_state(tmp_path):
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(Path(__file__).parent.parent)}}).execute()
    nbformat.write(nb, tmp_path / "saved.ipynb")
    saved = nbformat.read(tmp_path / "saved.ipynb", as_version=4)
    outs = [o for o in saved.cells[0].outputs if "text/html" in o.get("data", {}) and "qtnb-static-monitor" in o["data"]["text/html"]]
    eq(len(outs), 1)                                                     # one static copy, updated in place
    data = outs[0]["data"]
    assert "completed: epoch 4/4" in data["text/plain"], data["text/plain"]
    eq(plotly_figures(data["text/html"])[0]["data"][0]["x"], [1, 2, 3, 4])
    page, _ = HTMLExporter().from_notebook_node(saved)
    assert "completed: epoch 4/4" in page and "qtnb-static-monitor" in page
    assert 'src="https://cdn.plot.ly' not in page and "unpkg.com/@jupyter-widgets" not in page.split("qtnb-static-monitor")[1][:2000]
    assert page.count("plotly.js v") == 1 and page.count('class="plotly-graph-div qtnb-figure"') == 1   # the library once, offline

def test_tuner_panel_keeps_a_static_copy(tmp_path):
    import optuna
    from IPython.core.interactiveshell import InteractiveShell
    from qtnb.widgets import TunerPanel
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="static-demo")
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=5)
    panel = TunerPanel(study, mode="widgets")
    s = panel.last_static
    assert "static-demo" in s["text/html"] and "5 trials" in s["text/html"]
    eq(len(panel.last_figure["data"][0]["x"]), 5); eq(len(plotly_figures(s["text/html"])[0]["data"][0]["x"]), 5)
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=2)
    shown = []
    class Handle:
        def update(self, obj, raw=False): shown.append(obj)
    panel._static_handle = Handle()
    panel.refresh()
    assert "7 trials" in shown[-1]["text/html"]                             # a refresh replaces the shown copy
