"""MLflow tracking against a real `mlflow server` on loopback (SQLite store, temporary artifact folder): the trainer's
MLflowLogger, `qtnb run train -p tracking mlflow`, and pushing a registered qtnb model to MLflow's model registry.
Everything is read back through `MlflowClient`, as a researcher's MLflow UI would read it."""
import hashlib, importlib.util, json, os, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import require
from fastcore.test import test_eq as eq

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
HAVE = importlib.util.find_spec("mlflow") is not None

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "A real MLflow tracking server on a free loopback port; stopped (its whole process group) after the module."
    require(HAVE, "mlflow is not installed (pip install -e '.[dev,mlflow]')")
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(d / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None: pytest.fail(f"mlflow server exited: {(d / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                    if r.status == 200: break
            except OSError: time.sleep(0.5)
        else: pytest.fail("mlflow server did not answer /health")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(20)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
        log.close()

def client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)

def download(c, run_id: str, path: str, dst: Path) -> Path:
    return Path(c.download_artifacts(run_id, path, str(dst)))

@pytest.mark.slow
def test_logger_logs_params_every_epoch_and_the_onnx_model(server, tmp_path):
    import onnxruntime as ort, torch
    from qtnb.trainer import Trainer, toy_windows
    from qtnb.tracking import MLflowLogger
    w = toy_windows(256, seq_len=8, n_features=3)
    log = MLflowLogger(server, experiment="unit", run_name="toy")
    tr = Trainer({"name": "mlp", "hidden_sizes": [16]}, callbacks=[log], num_epochs=4, batch_size=64, learning_rate=3e-3,
                 early_stopping_patience=0)
    res = tr.fit(w, w)
    c = client(server)
    r = c.get_run(log.run_id)
    eq(r.info.status, "FINISHED"); eq(r.info.run_name, "toy")
    eq(r.data.params["train.num_epochs"], "4"); eq(r.data.params["train.learning_rate"], "0.003")
    eq(r.data.params["model.hidden_sizes"], "[16]")
    for key in ("train_loss", "val_loss"):
        hist = c.get_metric_history(log.run_id, key)
        eq([m.step for m in hist], [1, 2, 3, 4])
        np.testing.assert_allclose([m.value for m in hist], res.history[key].to_numpy(), rtol=1e-6)
    eq(r.data.metrics["best_epoch"], res.best_epoch)
    onnx = download(c, log.run_id, "model/model.onnx", tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 8, 3)).astype("float32")
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    with torch.no_grad(): want = tr.model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, atol=1e-5)

@pytest.fixture(scope="module")
def tracked_run(server, tmp_path_factory):
    "`qtnb run train -p tracking mlflow` through the real command line, exported, into a temporary store."
    runs = tmp_path_factory.mktemp("runs")
    r = subprocess.run([str(BIN / "qtnb"), "run", "train", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "epochs", "3",
                        "-p", "seq_len", "8", "-p", "export", "true", "-p", "tracking", "mlflow", "-p", "tracking_uri", server,
                        "--name", "tracked", "--runs-dir", str(runs)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = next(p for p in runs.iterdir() if (p / "status.json").exists())
    return runs, run, r

@pytest.mark.slow
def test_pipeline_run_is_tracked_with_its_notebook_and_model(server, tracked_run, tmp_path):
    runs, run, r = tracked_run
    t = json.loads((run / "tracking.json").read_text())
    c = client(server)
    m = c.get_run(t["mlflow_run_id"])
    eq(m.data.tags["qtnb.run_id"], run.name); eq(m.data.tags["qtnb.pipeline"], "train")
    eq(m.data.params["train.num_epochs"], "3")
    hist = pd.read_csv(run / "history.csv")
    eq([x.step for x in c.get_metric_history(m.info.run_id, "val_loss")], hist["epoch"].tolist())
    final = json.loads((run / "metrics.json").read_text())["test"]
    for k in ("mse", "sharpe", "directional_accuracy"): np.testing.assert_allclose(m.data.metrics[f"final_test_{k}"], final[k])
    arts = {a.path for folder in ("qtnb", "notebook", "model") for a in c.list_artifacts(m.info.run_id, folder)}
    assert {"qtnb/params.yaml", "qtnb/metrics.json", "qtnb/history.csv", "notebook/notebook.ipynb", "model/model.onnx"} <= arts, arts
    got = download(c, m.info.run_id, "model/model.onnx", tmp_path)
    eq(hashlib.sha256(got.read_bytes()).hexdigest(), hashlib.sha256((run / "model.onnx").read_bytes()).hexdigest())
    nb = json.loads(download(c, m.info.run_id, "notebook/notebook.ipynb", tmp_path).read_text())
    assert any("injected-parameters" in cell["metadata"].get("tags", []) for cell in nb["cells"])   # the executed record

@pytest.mark.slow
def test_registered_model_is_pushed_to_the_mlflow_registry(server, tracked_run, tmp_path):
    from qtnb.registry import register_version
    from qtnb.tracking import push_version
    runs, run, _ = tracked_run
    register_version(run.name, "planted-mlp", stage="production", runs_dir=runs)
    out = push_version("planted-mlp@production", tracking_uri=server, runs_dir=runs)
    c = client(server)
    mv = c.get_model_version("planted-mlp", str(out["mlflow_version"]))
    eq(mv.tags["qtnb.run_id"], run.name); eq(mv.tags["qtnb.version"], "1")
    eq(c.get_model_version_by_alias("planted-mlp", "production").version, mv.version)
    got = download(c, mv.run_id, "model/model.onnx", tmp_path)
    eq(got.read_bytes(), (run / "model.onnx").read_bytes())
    again = push_version("planted-mlp@1", tracking_uri=server, runs_dir=runs)      # a second push is the next MLflow version
    eq(again["mlflow_version"], out["mlflow_version"] + 1)
