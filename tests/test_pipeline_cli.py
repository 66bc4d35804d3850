"""End to end through the real command line: `qtnb run`, `qtnb sweep`, `qtnb runs`, `qtnb models`, `qtnb export`,
`qtnb lab`, and plain `papermill` on a pipeline notebook. Every run goes into a temporary run store."""
import json, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from fastcore.test import test_eq as eq

BIN = Path(sys.executable).parent
QTNB = str(BIN / "qtnb")
REPO = Path(__file__).resolve().parent.parent
PIPES = REPO / "qtnb" / "pipelines"
SMALL = ["-p", "seq_len", "8", "-p", "epochs", "2"]
TRADING = {"directional_accuracy", "sharpe", "sortino", "max_drawdown", "calmar", "hit_rate", "turnover", "total_return"}

def qtnb(*args, runs=None, timeout=600, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    cmd = [QTNB, *map(str, args)] + (["--runs-dir", str(runs)] if runs is not None else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})

def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "status.json").exists()]
    assert len(found) == 1, found
    return found[0]

def status(run: Path) -> dict: return json.loads((run / "status.json").read_text())
def metrics(run: Path) -> dict: return json.loads((run / "metrics.json").read_text())

@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    "One holdout run on the planted-signal series, shared by the tests that need a trained run."
    runs = tmp_path_factory.mktemp("runs")
    r = qtnb("run", "train", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "epochs", "15", "-p", "seq_len", "16",
             "--name", "planted", runs=runs)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return runs, only_run(runs), r

def test_train_holdout_writes_the_run_store(planted_run):
    runs, run, r = planted_run
    for f in ("status.json", "params.yaml", "history.csv", "metrics.json", "lineage.json", "notebook.ipynb",
              "checkpoints/best.pt", "checkpoints/last.pt", "predictions.csv"):
        assert (run / f).is_file(), f
    eq(status(run)["state"], "completed")
    m = metrics(run)
    assert {"mse", "rmse", "mae", "r2", "corr", "snr_db"} | TRADING <= set(m["test"]), sorted(m["test"])
    p = yaml.safe_load((run / "params.yaml").read_text())
    eq(p["pipeline"], "train"); eq(p["parameters"]["num_epochs"], 15); eq(p["model"]["name"], "mlp")
    lin = json.loads((run / "lineage.json").read_text())
    assert lin["data_fingerprint"] and lin["config_hash"] and "torch" in lin["packages"]
    assert "epoch 1/15" in r.stdout and str(run / "notebook.ipynb") in r.stdout   # progress streamed, paths printed
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "synthetic:planted" in injected[0].source

def test_planted_signal_reaches_half_the_optimal_r2(planted_run):
    from qtnb.datasets import load_dataset
    _, run, _ = planted_run
    best = load_dataset("synthetic:planted").attrs["optimal_r2"]
    assert metrics(run)["test"]["r2"] >= 0.5 * best, (metrics(run)["test"]["r2"], best)

def test_saved_notebook_shows_plotly_figures_as_static_html(planted_run, tmp_path):
    _, run, _ = planted_run
    out = tmp_path / "report.html"
    r = subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "html", str(run / "notebook.ipynb"), "--output", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    html = out.read_text()
    assert html.count("Plotly.newPlot") >= 4                         # learning curves, predictions, splits, equity
    assert "plotly.js v" in html and 'src="https://cdn.plot.ly' not in html   # the library is inside the file: works offline

def test_walk_forward_on_a_random_walk_is_chance(tmp_path):
    r = qtnb("run", "train", "-p", "data", "synthetic:random_walk", "-p", "validation", "walk_forward", "-p", "n_folds", "3",
             "-p", "model", "mlp", *SMALL, runs=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = only_run(tmp_path)
    m = metrics(run)
    eq(len(m["folds"]), 3)
    eq(len([p for p in (run / "folds").iterdir() if (p / "status.json").exists()]), 3)
    n = len(pd.read_csv(run / "predictions.csv"))
    acc = m["test"]["directional_accuracy"]
    assert abs(acc - 0.5) <= 3 * (0.25 / n) ** 0.5, (acc, n)       # anything better on a random walk is leakage
    dates = [f["test_dates"] for f in m["folds"]]
    assert all(a[1] < b[0] for a, b in zip(dates, dates[1:]))       # folds' test ranges follow each other
    assert (run / "checkpoints" / "best.pt").is_file()

def test_backtest_pipeline(tmp_path):
    r = qtnb("run", "backtest", "-p", "data", "synthetic:regimes", "-p", "model", "linear", "-p", "n_folds", "3",
             "-p", "seq_len", "8", "-p", "cost_bps", "2", runs=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = only_run(tmp_path)
    bt = metrics(run)["backtest"]
    assert TRADING <= set(bt["strategy"]) and TRADING <= set(bt["buy_hold"])
    df = pd.read_csv(run / "backtest.csv", index_col=0)
    assert {"equity", "drawdown", "buy_hold", "cost"} <= set(df.columns) and len(df) > 100
    assert (run / "estimator" / "manifest.json").is_file()

def test_tune_pipeline_links_trials_and_runs(tmp_path):
    r = qtnb("run", "tune", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "n_trials", "3", "-p", "sampler", "random",
             "-p", "pruner", "none", *SMALL, runs=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = [p for p in tmp_path.iterdir() if (p / "status.json").exists()]
    tune_run = next(p for p in runs if yaml.safe_load((p / "params.yaml").read_text()).get("pipeline") == "tune")
    study = metrics(tune_run)["study"]
    eq(len(runs), 4)                                                 # the tune run and its 3 trial runs
    best = tmp_path / study["best_run_id"]
    eq(status(best)["state"], "completed")
    eq(yaml.safe_load((best / "params.yaml").read_text())["tuning"]["trial"], study["best_trial"])
    eq(len(pd.read_csv(tune_run / "trials.csv")), 3)
    assert (tmp_path / "optuna.journal").is_file() and (tmp_path / "studies" / study["name"] / "study.json").is_file()
    r2 = qtnb("run", "tune", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "n_trials", "4", "-p", "sampler", "random",
              "-p", "pruner", "none", *SMALL, runs=tmp_path)                 # the same command continues the study
    assert r2.returncode == 0, r2.stderr[-2000:]
    eq(len([p for p in tmp_path.iterdir() if (p / "status.json").exists()]), 6)   # one more trial, one more tune run

def test_failing_run_exits_non_zero_and_keeps_the_notebook(tmp_path):
    from qtnb.datasets import random_walk
    df = random_walk(200); df.iloc[50, df.columns.get_loc("Close")] = float("nan")   # found only when the kernel reads it
    df.to_csv(tmp_path / "gappy.csv")
    r = qtnb("run", "train", "-p", "data", str(tmp_path / "gappy.csv"), runs=tmp_path / "runs")
    eq(r.returncode, 1)
    assert "DataError" in r.stderr and "column 'Close' has 1 NaN" in r.stderr and "notebook.ipynb" in r.stderr
    run = only_run(tmp_path / "runs")
    st = status(run)
    eq(st["state"], "failed")
    assert "set -p fill ffill" in st["error"]
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    errs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errs and errs[0]["ename"] == "DataError"

def test_sweep_four_runs_two_workers(tmp_path):
    r = qtnb("sweep", "train", "-g", "model", "mlp,linear", "-g", "lr", "1e-3,1e-2", "--workers", "2",
             "-p", "data", "synthetic:random_walk", *SMALL, runs=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = [p for p in tmp_path.iterdir() if (p / "status.json").exists()]
    eq(len(runs), 4)
    assert all(status(p)["state"] == "completed" for p in runs)
    sweeps = list((tmp_path / "sweeps").iterdir())
    eq(len(sweeps), 1)
    table = pd.read_csv(sweeps[0] / "summary.csv")
    eq(len(table), 4)
    eq(sorted(set(zip(table["model"], table["lr"]))), [("linear", 0.001), ("linear", 0.01), ("mlp", 0.001), ("mlp", 0.01)])
    assert "test_loss" in table and (sweeps[0] / "summary.html").is_file()
    assert all((p / "log.txt").is_file() for p in runs)

def test_two_sweeps_at_once_share_a_runs_folder(tmp_path):
    cmd = [QTNB, "sweep", "train", "-g", "seed", "1,2", "-p", "data", "synthetic:random_walk", "-p", "model", "linear",
           "-p", "seq_len", "8", "--runs-dir", str(tmp_path), "--name", "same"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = [p for p in tmp_path.iterdir() if (p / "status.json").exists()]
    eq(len(runs), 4)                                                 # no id collision, no lost run
    assert all(status(p)["state"] == "completed" for p in runs)
    eq(len(list((tmp_path / "sweeps").iterdir())), 2)

def test_papermill_directly(tmp_path):
    settings = tmp_path / "settings.ini"
    settings.write_text(f"[storage]\nruns_dir = {tmp_path / 'runs'}\n[training_defaults]\nbatch_size = 64\n")
    out = tmp_path / "out.ipynb"
    r = subprocess.run([str(BIN / "papermill"), str(PIPES / "train.ipynb"), str(out), "-p", "epochs", "1"], capture_output=True,
                       text=True, timeout=600, cwd=tmp_path, env={**os.environ, "QTNB_SETTINGS": str(settings)})
    assert r.returncode == 0, r.stderr[-2000:]
    run = only_run(tmp_path / "runs")
    eq(status(run)["state"], "completed")
    eq(yaml.safe_load((run / "params.yaml").read_text())["parameters"]["num_epochs"], 1)   # -p epochs, the old name, lands as num_epochs
    assert out.is_file()

def test_parameters_cells_match_the_schemas():
    import papermill as pm
    from qtnb.pipeline import PIPELINES, PipelineParams
    base = list(PipelineParams.model_fields)   # run_name, run_id, runs_dir, resume: last in every parameters cell
    for name, cls in PIPELINES.items():
        nb = PIPES / f"{name}.ipynb"
        params = pm.inspect_notebook(str(nb))
        eq(list(params), [*[k for k in cls.model_fields if k not in base], *base])
        ns = {}
        exec(next(c.source for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])), ns)
        for k, f in cls.model_fields.items(): eq(ns[k], f.default)
        assert all(p["help"] for p in params.values()), name
    r = subprocess.run([str(BIN / "papermill"), "--help-notebook", str(PIPES / "train.ipynb")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "epochs: int (default None)" in r.stdout and "settings.ini" in r.stdout, r.stdout

def test_export_command_and_pipeline(planted_run):
    runs, run, _ = planted_run
    r = qtnb("export", run.name, "--format", "torchscript", runs=runs)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "model.ts").is_file()
    r = qtnb("run", "export", "-p", "source_run", run.name, "-p", "latency_runs", "20", runs=runs)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (run / "model.onnx").is_file()
    for step in ("wrote model.onnx", "parity on ", "timing the backends (20 calls each)"):   # never silent for long
        assert step in r.stdout, r.stdout[-2000:]
    lin = json.loads((run / "lineage.json").read_text())
    eq([e["format"] for e in lin["exports"]], ["torchscript", "onnx"])
    exp = [p for p in runs.iterdir() if (p / "params.yaml").exists() and yaml.safe_load((p / "params.yaml").read_text()).get("pipeline") == "export"]
    m = metrics(exp[0])
    assert m["export"]["parity"]["max_abs_diff"] <= 1e-5 and "onnxruntime" in m["latency"]

def test_runs_commands(planted_run, tmp_path):
    runs, run, _ = planted_run
    r = qtnb("runs", "list", runs=runs)
    assert r.returncode == 0 and run.name in r.stdout
    r = qtnb("runs", "show", run.name, runs=runs)
    assert r.returncode == 0 and '"state": "completed"' in r.stdout and "checkpoints/best.pt" in r.stdout
    r = qtnb("runs", "compare", run.name, run.name, runs=runs)
    assert r.returncode == 0 and "test_loss" in r.stdout
    r = qtnb("runs", "show", "no-such-run", runs=runs)
    eq(r.returncode, 1); assert r.stderr.startswith("qtnb: error:") and "not found" in r.stderr

def test_models_registry_round_trip(planted_run):
    runs, run, _ = planted_run
    r = qtnb("models", "register", run.name, "planted-mlp", runs=runs)
    assert r.returncode == 0 and "planted-mlp@1" in r.stdout, r.stderr
    r = qtnb("models", "register", run.name, "planted-mlp", "--stage", "staging", runs=runs)
    assert r.returncode == 0 and "planted-mlp@2" in r.stdout, r.stderr
    r = qtnb("models", "stage", "planted-mlp@1", "production", runs=runs)
    assert r.returncode == 0 and "production" in r.stdout, r.stderr
    r = qtnb("models", "show", "planted-mlp@production", runs=runs)
    v = json.loads(r.stdout)
    eq((v["version"], v["run_id"]), (1, run.name))
    assert v["lineage"]["data_fingerprint"]
    r = qtnb("models", "list", runs=runs)
    assert r.returncode == 0 and "staging" in r.stdout and "production" in r.stdout
    from qtnb.registry import load_version
    import torch
    model = load_version("planted-mlp@production", runs_dir=runs)
    x = torch.randn(4, 16, 10)
    assert model(x).shape == (4, 1)
    r = qtnb("models", "stage", "planted-mlp@9", "production", runs=runs)
    assert r.returncode != 0 and r.stderr.startswith("qtnb: error:") and "planted-mlp" in r.stderr

@pytest.mark.parametrize("args, needle", [
    (["run", "trian"], "unknown pipeline 'trian'; did you mean 'train'?"),
    (["run", "train", "-p", "epoch", "3"], "unknown field 'epoch'"),
    (["run", "train", "-p", "epochs", "ten"], "epochs='ten' is invalid"),
    (["run", "train", "-p", "model", "resnet"], "model='resnet'"),
    (["run", "train", "-p", "model_params", "{hiden_size: 3}"], "model_params.hiden_size is not a field of mlp"),
    (["run", "train", "-f", "/nonexistent/params.yaml"], "cannot read config file /nonexistent/params.yaml"),
    (["run", "train", "-p", "run_id", "x"], "run_id is set by qtnb run"),
    (["sweep", "train", "-g", "epochs", "1,ten"], "epochs='ten' is invalid"),
    (["run", "tune", "-p", "objective", "val_accuracy"], "val_accuracy"),
])
def test_bad_input_is_one_line_before_any_kernel(tmp_path, args, needle):
    r = qtnb(*args, runs=tmp_path / "runs", timeout=120)
    eq(r.returncode, 2)
    assert needle in r.stderr, r.stderr
    eq(len(r.stderr.strip().splitlines()), 1)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())   # nothing ran, no run made

def test_unknown_parameter_lists_the_valid_ones(tmp_path):
    r = qtnb("run", "train", "-p", "n_epochs", "3", runs=tmp_path)
    assert "valid fields:" in r.stderr and "epochs" in r.stderr and "seq_len" in r.stderr

def test_params_file_that_is_not_yaml(tmp_path):
    f = tmp_path / "p.yaml"; f.write_text("epochs: [1,\n")
    r = qtnb("run", "train", "-f", f, runs=tmp_path / "runs")
    eq(r.returncode, 2); assert "is not valid YAML" in r.stderr

def test_runs_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"; blocker.write_text("")
    r = qtnb("run", "train", runs=blocker / "runs")      # a path under a regular file cannot be created, even by root
    eq(r.returncode, 2); assert "is not writable" in r.stderr and "--runs-dir" in r.stderr

def test_help_follows_conventions():
    r = qtnb("--help")
    assert r.returncode == 0 and all(c in r.stdout for c in ("run", "sweep", "runs", "models", "export", "lab"))
    r = qtnb("run", "--help")
    assert r.returncode == 0 and "train:" in r.stdout and "n_trials" in r.stdout and "examples:" in r.stdout
    r = qtnb("--version")
    assert r.returncode == 0 and r.stdout.startswith("qtnb ")
    eq(qtnb().returncode, 2)

def _free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def test_lab_opens_jupyterlab_at_the_tutorial(tmp_path):
    r = qtnb("lab", "--print-command")
    assert r.returncode == 0 and "jupyterlab" in r.stdout and "tutorial.ipynb" in r.stdout, r.stdout
    port, token = _free_port(), "qtnb-test"
    p = subprocess.Popen([QTNB, "lab", "--no-browser", "--port", str(port), f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                         env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path)})
    try:
        deadline, body = time.time() + 90, None
        while time.time() < deadline and body is None:
            try: body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/nbs/tutorial.ipynb?content=0&token={token}", timeout=2).read()
            except OSError: time.sleep(0.5)
        assert body is not None, "JupyterLab did not answer"
        eq(json.loads(body)["name"], "tutorial.ipynb")
    finally:
        p.terminate()
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill()
