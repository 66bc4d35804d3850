"""What survives saving, in a real browser: JupyterLab runs a monitored `train(...)` (Pause, Resume, Stop clicked in the
monitor), a tuner panel and a run browser; each notebook is saved from the page, converted with nbconvert in a process
with no network, and the HTML, opened with every request off the file refused, draws each widget's final figure with the
data of the run or study. No script in it comes from a CDN beyond nbconvert's own page template (require.js, MathJax),
which the figures do not need. Screenshots and HTML land in tests/output/test_browser_saved/."""
import json
from pathlib import Path

import pandas as pd
import pytest
from fastcore.test import test_eq as eq

from lab_browser import eventually, lab, plotly_figures, plotted, script_sources, template_sources  # noqa: F401 (lab is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

def _static_outputs(nb, marker: str) -> list[dict]:
    return [o["data"] for c in nb.cells for o in c.get("outputs", []) if marker in o.get("data", {}).get("text/html", "")]

def _check_offline(lab, ctx, html: str, fig_id: str, name: str, then=None):
    "The page draws figure `fig_id` with plotly.js from the file itself; what plotly drew for it (`then(page)` runs before it closes)."
    extra = script_sources(html) - template_sources()
    assert not extra, f"scripts from outside the file beyond nbconvert's template: {extra}"
    assert "cdn.plot.ly" not in "".join(script_sources(html)) and "@jupyter-widgets/html-manager" not in html
    page, errors = lab.view_offline(ctx, html)
    try:
        eventually(lambda: page.locator(f"#{fig_id} .main-svg").count() > 0, 30, f"plotly to draw {fig_id} offline")
        page.locator(f"#{fig_id}").scroll_into_view_if_needed()
        page.screenshot(path=str(lab.out / f"{name}-offline.png"))
        drawn = page.evaluate(f"() => document.getElementById('{fig_id}').data.map(t => ({{name: t.name, x: Array.from(t.x || [])}}))")
        if then is not None: then(page)
    finally: page.close()
    mine = [e for e in errors if "net::ERR_FAILED" not in e and "require" not in e.lower() and "mathjax" not in e.lower()]
    assert not mine, mine   # nothing failed but the template's own CDN scripts, refused here
    return drawn

MONITOR = '''from qtnb.pipeline import train
job = train(dict(data="synthetic:random_walk", model="mlp", seq_len=16, epochs=300, batch_size=128, runs_dir="runs"), monitor=True)'''

def test_monitored_train_pause_resume_stop_saved_offline(lab):
    lab, ctx = lab
    with lab.notebook(ctx, "monitor.ipynb", [MONITOR], ".qtnb-training-monitor") as (page, mon):
        state = lambda s: mon.locator(f"[data-state='{s}']").count() > 0
        points = lambda: plotted(mon, "train_loss")
        eventually(lambda: points() >= 2, 120, "two epochs on the loss curve")
        mon.locator("button.qtnb-pause").click()
        eventually(lambda: state("paused"), 10, "the monitor to say paused")
        mon.scroll_into_view_if_needed(); page.screenshot(path=str(lab.out / "monitor-paused.png"))
        mon.locator("button.qtnb-resume").click()
        eventually(lambda: state("running"), 10, "the monitor to run again")
        n = points()
        eventually(lambda: points() > n, 60, "an epoch after Resume")
        mon.locator("button.qtnb-stop").click()
        eventually(lambda: state("stopped"), 60, "the monitor to say stopped")
        run = eventually(lambda: [p.parent for p in lab.root.glob("runs/*/status.json")
                                  if json.loads(p.read_text()).get("state") == "stopped"], 120, "the run to end stopped")[0]
        epochs = [int(e) for e in pd.read_csv(run / "history.csv")["epoch"]]
        assert 3 <= len(epochs) < 300, epochs              # paused, resumed and stopped well before the last epoch
        page.screenshot(path=str(lab.out / "monitor-stopped.png"))
        static = page.locator(".qtnb-static-monitor")
        assert static.count() == 1 and not static.first.is_visible()   # the live monitor shows; its static copy is hidden under it
        done = f"stopped: epoch {len(epochs)}/300"
        nb = lab.save(page, "monitor.ipynb", lambda nb: any(done in d["text/plain"] for d in _static_outputs(nb, "qtnb-static-monitor")))
    eq(len(_static_outputs(nb, "qtnb-static-monitor")), 1)    # one copy, replaced at each redraw
    html = lab.to_html("monitor.ipynb")
    assert done in html and "idle: epoch 0" not in html           # the final state, and no stale repr of the widget
    figs = [f for f in plotly_figures(html) if any(t.get("name") == "train_loss" for t in f["data"])]
    eq(len(figs), 1)
    eq([t["x"] for t in figs[0]["data"] if t["name"] == "train_loss"], [epochs])   # the run's epochs, all of them
    drawn = _check_offline(lab, ctx, html, figs[0]["id"], "monitor")
    eq([t["x"] for t in drawn if t["name"] == "train_loss"], [epochs])

TUNER = '''import optuna
from qtnb.tuner import SearchSpace, Tuner
from qtnb.widgets import TunerPanel
optuna.logging.set_verbosity(optuna.logging.WARNING)
space = SearchSpace().uniform("x", -2, 2).int("n", 0, 3)
tuner = Tuner(space, objective=lambda p, trial: (p["x"] - 1) ** 2 + p["n"], storage="sqlite:///optuna.db",
              sampler="random", pruner="none", study_name="saved-demo")
panel = TunerPanel(tuner, every=0)
display(panel)
tuner.optimize(6, callbacks=[panel], write_outputs=False);'''

def test_tuner_panel_saved_offline(lab):
    lab, ctx = lab
    with lab.notebook(ctx, "tuner.ipynb", [TUNER], ".qtnb-tuner-panel") as (page, panel):
        eventually(lambda: panel.locator(".qtnb-trials-table tbody tr").count() == 6, 120, "six trials in the table")
        lab.idle(page)
        nb = lab.save(page, "tuner.ipynb", lambda nb: any("6 trials" in d["text/html"] for d in _static_outputs(nb, "qtnb-static")))
    html = lab.to_html("tuner.ipynb")
    figs = [f for f in plotly_figures(html) if any(t.get("name") == "objective" for t in f["data"])]
    eq(len(figs), 1)
    eq([t["x"] for t in figs[0]["data"] if t["name"] == "objective"], [list(range(6))])   # every trial of the study
    drawn = _check_offline(lab, ctx, html, figs[0]["id"], "tuner")
    eq([t["x"] for t in drawn if t["name"] == "objective"], [list(range(6))])

BROWSER = '''import numpy as np, pandas as pd
from qtnb.runs import create_run
from qtnb.widgets import RunBrowser
dates = pd.bdate_range("2020-01-01", periods=60)
for name, lr in [("alpha", 1e-3), ("beta", 3e-4), ("gamma", 1e-2)]:
    r = create_run(name, runs_dir="store", params={"model": "mlp", "learning_rate": lr})
    for e in range(1, 6): r.log_epoch({"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e + lr})
    ret = np.random.default_rng(int(lr * 1e4)).normal(0, 0.01, 60)
    pd.DataFrame({"date": dates, "fold": 0, "y_true": ret, "y_pred": ret / 2, "signal": np.sign(ret + 0.005),
                  "forward_return": ret}).to_csv(r.path / "predictions.csv", index=False)
    r.write_metrics({"val": {"loss": 0.2 + lr}, "test": {"sharpe": lr * 100}}); r.set_status("completed")
RunBrowser("store")'''   # its own store: the monitor test's run is not in it

def test_run_browser_saved_offline(lab):
    lab, ctx = lab
    with lab.notebook(ctx, "browser.ipynb", [BROWSER], ".qtnb-run-browser") as (page, rb):
        lab.idle(page)
        ids = sorted(p.name for p in (lab.root / "store").iterdir() if p.is_dir())
        picked = [i for i in ids if "-alpha-" in i or "-gamma-" in i]
        rb.locator("select[multiple]").first.select_option(value=None, label=[_label(i) for i in picked])   # a person's pick
        eventually(lambda: plotted(rb.locator(".qtnb-chart").first) >= 10, 30, "two runs' curves overlaid")
        first = lambda: rb.locator(".qtnb-runs-table-inner tbody tr").first.inner_text()
        rb.locator("button.qtnb-sort-val_loss").click()                  # a click on a column's name sorts by it
        eventually(lambda: "beta" in first(), 30, "the lowest val_loss first")
        rb.locator("button.qtnb-sort-val_loss").click()                  # again: reversed
        eventually(lambda: "gamma" in first(), 30, "the highest val_loss first")
        rb.scroll_into_view_if_needed(); page.screenshot(path=str(lab.out / "browser-selected.png"))
        nb = lab.save(page, "browser.ipynb", lambda nb: any(all(_label(i) in d["text/html"] for i in picked) and _sorted(d["text/html"])
                                                             and "qtnb-compare-table" in d["text/html"] for d in _static_outputs(nb, "qtnb-static")))
    html = lab.to_html("browser.ipynb")
    assert _sorted(html)                                            # the saved copy keeps the order shown
    figs = plotly_figures(html)
    curves = [f for f in figs if {t.get("name") for t in f["data"]} == {_label(i) for i in picked} and f["data"][0]["x"] == [1, 2, 3, 4, 5]]
    equity = [f for f in figs if "equity" in json.dumps(f["layout"].get("title", "")) and len(f["data"]) == 2]
    predictions = [f for f in figs if "predictions" in json.dumps(f["layout"].get("title", ""))   # each run's own target
                   and {t.get("name") for t in f["data"]} == {*(f"actual {_label(i)}" for i in picked), *(_label(i) for i in picked)}]
    assert curves and equity and predictions, [(f["layout"].get("title"), [t.get("name") for t in f["data"]]) for f in figs]
    drawn = _check_offline(lab, ctx, html, curves[0]["id"], "browser", then=_sorts_offline)
    eq(sorted(t["name"] for t in drawn), sorted(_label(i) for i in picked))

def _sorts_offline(page):
    "The saved run table sorts with no kernel: a click on val_loss reverses the saved order (highest first), a second restores it."
    table = page.locator(".qtnb-static-copy table.qtnb-runs-table-inner")
    eq(table.count(), 1)
    first = lambda: table.locator("tbody tr").first.inner_text()
    assert "gamma" in first()
    table.locator("th", has_text="val_loss").click()
    eventually(lambda: "beta" in first(), 10, "the saved table sorted by val_loss, lowest first")
    table.locator("th", has_text="val_loss").click()
    eventually(lambda: "gamma" in first(), 10, "the saved table sorted by val_loss, highest first")

def _sorted(html: str) -> bool:
    "Whether the run table in `html` lists gamma, alpha, beta: highest val_loss first."
    table = html[html.rindex("qtnb-runs-table-inner"):]
    return table.index("gamma") < table.index("alpha") < table.index("beta")

def _label(run_id: str) -> str:
    from qtnb.widgets import run_label
    return run_label(run_id)
