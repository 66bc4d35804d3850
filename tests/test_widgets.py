"""Widgets and progress across processes: an executed notebook keeps its widget state and nbconvert's HTML draws it;
without a front end the same objects print text; a monitored fit leaves static output; ProgressBar in a real kernel."""
import json, os, re, subprocess, sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from fastcore.test import test_eq as eq
from lab_browser import plotly_figures

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
                nbformat.v4.new_code_cell("chart = Chart('loss')\n"
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
    assert "application/vnd.plotly.v1+json" in html.replace("\\/", "/") and '"train_loss"' in html   # the chart's plotly figure travels inside the state

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


# ---- panels (a symbol column) in every widget -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def panel_runs(tmp_path_factory):
    "A backtest and a walk-forward train run of a 4-symbol panel (linear, seconds), in one store."
    from qtnb.datasets import random_walk
    from qtnb.pipeline import backtest, train
    tmp = tmp_path_factory.mktemp("panel")
    df = random_walk(260, n_symbols=4, seed=3).rename(columns={"symbol": "ticker"})
    df.to_csv(tmp / "panel.csv")
    kw = dict(data=str(tmp / "panel.csv"), symbol_col="ticker", model="linear", seq_len=4, features=["logret_1", "vol_5"],
              n_folds=2, runs_dir=tmp / "runs", verbose=False)
    bt = backtest(cost_bps=5, **kw)
    tr = train(validation="walk_forward", **kw)
    return tmp / "runs", bt, tr

def test_run_browser_draws_a_panel_runs_portfolio_equity_and_symbols(panel_runs):
    from qtnb.widgets import RunBrowser, run_equity
    store, bt, tr = panel_runs
    rb = RunBrowser(store, mode="widgets")
    rb.select(bt.run.id, tr.run.id)
    pred = pd.read_csv(tr.run_dir / "predictions.csv")
    lines = lambda rid: [k for k in rb.equity_chart.series if k.split("#")[0] == rid]   # a walk-forward run: a line per fold
    for rep in (bt, tr):                                        # the portfolio's equity: what metrics.json reports
        eq(len(lines(rep.run.id)), pred["fold"].nunique())
        eq(sum(rb.equity_chart.n_points[k] for k in lines(rep.run.id)), pred["date"].nunique())   # one point a date
        final = rb.equity_chart.series[lines(rep.run.id)[-1]][1][-1]
        np.testing.assert_allclose(final, 1 + rep.metrics["test"]["total_return"], rtol=1e-9)
        assert rep.metrics["test"]["n_symbols"] == 4
    back = pd.read_csv(bt.run_dir / "backtest.csv", index_col=0)
    np.testing.assert_allclose(run_equity(bt.run)["equity"], back["equity"])
    tables = rb.symbols.value
    eq(tables.count("qtnb-symbols-table"), 2); eq(tables.count("4 symbols"), 2)
    for s in ("S00", "S01", "S02", "S03"): assert tables.count(f">{s}<") == 2, s   # every symbol of both runs
    assert "4 symbols" in rb.last_static["text/html"]
    rb.select(); eq(rb.equity_chart.series, {}); eq(rb.symbols.value, "")

def test_forms_accept_symbol_col_and_the_run_they_describe_trades_every_symbol(panel_runs, tmp_path):
    from qtnb.pipeline import PIPELINES, check_params
    from qtnb.widgets import ConfigForm
    store, bt, tr = panel_runs
    for source in ("data", PIPELINES["train"], PIPELINES["backtest"], PIPELINES["tune"]):
        form = ConfigForm(source)
        assert "symbol_col" in form.fields, source
        form.set(symbol_col="ticker")
        eq(form.errors, {}); eq(form.value.symbol_col, "ticker")
    form = ConfigForm(PIPELINES["backtest"])
    form.set(**{k: v for k, v in bt.params.model_dump().items() if k in form.fields and k not in ("run_id", "runs_dir")})
    path = tmp_path / "backtest.yaml"
    form.to_yaml(path)
    p = check_params("backtest", {}, yaml_path=path)           # what `qtnb run backtest -f` would run
    eq((p.symbol_col, p.data), ("ticker", bt.params.data))

def test_training_monitor_follows_a_panel_fit():
    from qtnb.data import prepare
    from qtnb.datasets import random_walk
    from qtnb.trainer import Trainer
    from qtnb.widgets import TrainingMonitor
    df = random_walk(200, n_symbols=3, seed=1).rename(columns={"symbol": "ticker"})
    fold = prepare(dict(symbol_col="ticker", seq_len=8, features=["logret_1", "vol_5"], validation="holdout", cache=False), df).folds[0]
    mon = TrainingMonitor(mode="widgets", every=0)
    Trainer("mlp", dict(num_epochs=3, device="cpu", importance=False), callbacks=[mon]).fit(fold.train, fold.val)
    eq(mon.state, "completed"); eq(len(mon.history), 3)
    eq(mon.loss_chart.n_points, {"train_loss": 3, "val_loss": 3})
    eq(mon.history[-1]["val_n_symbols"], 3)                    # validated as a portfolio of the three symbols
    assert mon.metric_chart.series and all(n == 3 for n in mon.metric_chart.n_points.values())

def test_tuner_panel_follows_a_study_on_a_panel(tmp_path):
    import optuna
    from qtnb.datasets import random_walk
    from qtnb.tuner import SearchSpace, Tuner
    from qtnb.widgets import TunerPanel
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df = random_walk(300, n_symbols=3, seed=1).rename(columns={"symbol": "ticker"})
    t = Tuner(SearchSpace().log_uniform("alpha", 1e-4, 10.0), "val_sharpe", frame=df, model="linear", runs_dir=tmp_path,
              data=dict(symbol_col="ticker", seq_len=8, features=["logret_1", "vol_5"], validation="holdout", cache=False),
              sampler="random", pruner="none", seed=0)
    panel = TunerPanel(t, mode="widgets", every=0)
    t.optimize(3, callbacks=[panel])
    panel.refresh()
    eq(panel.n_seen, 3); assert 3 in panel.history_chart.n_points.values(), panel.history_chart.n_points
    assert "deflated Sharpe p =" in panel.best.value and panel.trials_table.value.count("complete") == 3
    from qtnb.runs import open_run
    run = open_run(t.best_trial().user_attrs["run_id"], runs_dir=tmp_path)
    eq(run.metrics["val"]["n_symbols"], 3)                    # each trial validated on the portfolio of all three


# ---- train(..., monitor=True): the live monitor on the train pipeline --------------------------------------------------
FAST = dict(data="synthetic:planted", model="mlp", seq_len=8, epochs=3, batch_size=512, verbose=False)

def test_monitored_train_shows_every_epoch_and_returns_the_plain_report(tmp_path):
    from qtnb.pipeline import LiveTrain, Report, train
    from qtnb.widgets import TrainingMonitor
    mon = TrainingMonitor(mode="widgets", every=0)
    live = train(monitor=mon, runs_dir=tmp_path / "live", **FAST)
    assert isinstance(live, LiveTrain)
    rep = live.result()
    plain = train(runs_dir=tmp_path / "plain", **FAST)            # monitor=None outside a watched kernel: no monitor
    assert isinstance(plain, Report) and not isinstance(plain, LiveTrain)
    hist = pd.read_csv(rep.run_dir / "history.csv")
    eq([r["epoch"] for r in mon.history], [1, 2, 3]); eq(list(hist["epoch"]), [1, 2, 3])
    np.testing.assert_allclose([r["val_loss"] for r in mon.history], hist["val_loss"])   # what the run recorded
    eq(mon.loss_chart.n_points, {"train_loss": 3, "val_loss": 3}); eq(mon.state, "completed")
    eq(rep.run.status["state"], "completed")
    eq({k: rep.metrics[k] for k in ("val", "test")}, {k: plain.metrics[k] for k in ("val", "test")})   # the same fit
    eq([f | {"run_id": 0} for f in rep.metrics["folds"]], [f | {"run_id": 0} for f in plain.metrics["folds"]])
    eq(rep.run.params["parameters"] | {"runs_dir": None}, plain.run.params["parameters"] | {"runs_dir": None})

def test_the_monitors_stop_button_stops_a_monitored_train(tmp_path):
    import threading
    from qtnb.callbacks import Callback
    from qtnb.pipeline import train
    from qtnb.widgets import TrainingMonitor
    reached, clicked = threading.Event(), threading.Event()
    class HoldAtEpoch2(Callback):                                  # no clock: the fit waits for the click
        n = 0
        def on_train_epoch_end(self, trainer, *args, **kwargs):
            self.n += 1
            if self.n == 2: reached.set(); clicked.wait(60)
    mon = TrainingMonitor(mode="widgets", every=0)
    live = train(monitor=mon, callbacks=[HoldAtEpoch2()], runs_dir=tmp_path, **{**FAST, "epochs": 50})
    assert reached.wait(120)
    assert not mon.stop_button.disabled
    mon.stop_button.click(); clicked.set()
    rep = live.result(120)
    eq(rep.run.status["state"], "stopped"); eq(mon.state, "stopped")
    assert rep.metrics["fit"]["epochs"] <= 3, rep.metrics["fit"]
    eq(len(mon.history), len(pd.read_csv(rep.run_dir / "history.csv")))


# ---- the run browser on pipeline runs: names with short ids, a compact table ------------------------------------------
def test_run_browser_names_runs_with_short_ids_in_a_compact_table(panel_runs):
    from qtnb.widgets import RunBrowser, run_label
    store, bt, tr = panel_runs
    rb = RunBrowser(store, mode="widgets")
    table = rb.table.value
    eq(table.count("<tr>"), 2)                                     # one line per run, under the column names' buttons
    head = [b.description for b in rb.header.children]
    eq(head[:5], ["run", "state", "pipeline", "model", "study"]); assert "started" in head and len(head) <= 12, head
    for rep in (bt, tr):
        label = run_label(rep.run.id)
        assert label.endswith(rep.run.id[-4:]) and label in table and f'{rep.run.id}/"' in table   # shown short, linked full
    assert table.count(">linear<") == 2 and ">backtest<" in table and ">train<" in table
    assert "<br" not in table and table.count("white-space:nowrap") >= 2 * len(head)
    static = rb.last_static["text/html"]                           # the saved copy has the names as a header row
    eq(re.findall(r"<th[^>]*>([^<]*)</th>", static[static.index("qtnb-runs-table-inner"):])[:len(head)], head)
    eq(sorted(l for l, _ in rb.selector.options), sorted(run_label(r.run.id) for r in (bt, tr)))
    rb.select(bt.run.id, tr.run.id)
    eq(set(rb.equity_chart._shown()), {f"{run_label(r.run.id)} fold {k}" for r in (bt, tr) for k in (0, 1)})   # the equity legend too

def test_pipeline_form_tune_button_tunes_the_forms_values(tmp_path):
    from qtnb.pipeline import TuneParams
    from qtnb.widgets import ConfigForm
    form = ConfigForm(TuneParams)
    form.set(data="synthetic:planted", seq_len=8, model="linear", n_trials=2, sampler="random", pruner="none",
             runs_dir=str(tmp_path))
    eq(form.errors, {}); eq(form.tune_button.disabled, False)
    form.tune_button.click()
    job = form.tune_job
    job["thread"].join(300)
    assert job["error"] is None, job["error"]
    rep = job["report"]
    eq(rep.run.status["state"], "completed"); eq(len(pd.read_csv(rep.run_dir / "trials.csv")), 2)   # the form's n_trials
    eq(rep.run.params["parameters"], form.value.model_dump(mode="json", exclude={"run_id", "runs_dir", "resume"}))
    assert "tuned: run" in form.status.value

def test_live_frontend_is_on_in_a_watched_kernel_and_off_under_nbclient(tmp_path):
    "The default of train(monitor=None): a kernel whose client takes input (JupyterLab) gets the monitor, nbclient/papermill not."
    from jupyter_client.manager import start_new_kernel
    env = {k: v for k, v in os.environ.items() if k != "QTNB_WIDGETS"}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        def run(allow_stdin):
            out = []
            kc.execute_interactive("from qtnb.widgets import live_frontend, widget_frontend\n"
                                   "print(widget_frontend(), live_frontend())", allow_stdin=allow_stdin, timeout=120,
                                   output_hook=lambda m: out.append(m["content"].get("text", "")), stdin_hook=lambda m: None)
            return "".join(out).strip()
        eq(run(False), "True False")                               # as nbclient (papermill, nbconvert) runs a cell
        eq(run(True), "True True")                                 # as JupyterLab runs one
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)


# ----------------------------------------------------------------------------------------------------
# Widgets leave their final state as static output: a monitored fit executed headlessly (nbclient, as papermill runs
# pipelines), saved, and converted with nbconvert still shows the curves and the status line with no script or network.
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


# ----------------------------------------------------------------------------------------------------
# ProgressBar in a real kernel: lines where nobody watches (as papermill and nbconvert run cells), a live bar where
# someone does (as JupyterLab runs them).
PROGRESS_CELL = """
from qtnb.callbacks import ProgressBar, watched
from qtnb.trainer import Trainer, TrainConfig, toy_windows
from qtnb.models.core import create_model
w = toy_windows(256)
m = create_model({'name': 'mlp', 'hidden_sizes': [8]}, n_features=w.n_features, seq_len=w.seq_len)
print('watched', watched())
Trainer(m, TrainConfig(num_epochs=3, batch_size=64, early_stopping_patience=0), callbacks=[ProgressBar()]).fit(w, w)
"""


def test_progress_lines_under_nbclient_and_a_bar_when_watched(tmp_path):
    from jupyter_client.manager import start_new_kernel
    env = {k: v for k, v in os.environ.items() if k != "QTNB_WIDGETS"}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        def run(allow_stdin):
            out, displays = [], []
            def hook(m):
                if m["msg_type"] == "stream": out.append(m["content"]["text"])
                if m["msg_type"] in ("display_data", "update_display_data"): displays.append(m)
            kc.execute_interactive(PROGRESS_CELL, allow_stdin=allow_stdin, timeout=300, output_hook=hook, stdin_hook=lambda m: None)
            return "".join(out), displays
        text, displays = run(False)                  # as nbclient (papermill, nbconvert) runs a cell
        assert "watched False" in text, text
        eq(re.findall(r"^epoch (\d)/3 train_loss \S+ val_loss \S+", text, flags=re.M), ["1", "2", "3"])
        eq(displays, [])                             # no widget bar to freeze at 0% in the record
        text, displays = run(True)                   # as JupyterLab runs one: tqdm's widget bar, no lines
        assert "watched True" in text and "epoch 1/3" not in text, text
        assert displays, "no progress widget shown"
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
