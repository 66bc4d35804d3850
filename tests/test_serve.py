"""`qtnb serve` as a real server on a free loopback port, talked to over HTTP with httpx: runs started, queued, polled,
streamed and steered; the queue kept across a restart; predictions equal to `qtnb predict`; the token, the body cap and
the run-store boundary."""
import json, os, pickle, signal, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fastcore.test import test_eq as eq, test_close as close

httpx = pytest.importorskip("httpx")
from qtnb.data import load_frame
from qtnb.pipeline import train
from qtnb.registry import register_version

QTNB = str(Path(sys.executable).parent / "qtnb")
REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"

def free_port(host="127.0.0.1") -> int:
    with socket.socket() as s: s.bind((host, 0)); return s.getsockname()[1]

def start_server(runs: Path, *args, host="127.0.0.1", env=None):
    port = free_port(host)
    proc = subprocess.Popen([QTNB, "serve", "--host", host, "--port", str(port), "--runs-dir", str(runs), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://{host}:{port}"
    for _ in range(300):
        if proc.poll() is not None: raise AssertionError(proc.stdout.read().decode()[-2000:])
        try:
            httpx.get(url + "/openapi.json", timeout=1, headers={"Authorization": f"Bearer {TOKEN}"}); break
        except httpx.TransportError: time.sleep(0.2)
    return proc, url

def stop(proc):
    proc.send_signal(signal.SIGINT)
    try: proc.wait(20)
    except subprocess.TimeoutExpired: proc.kill()

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    df = load_frame("sp500")
    df.iloc[:1500].to_csv(d / "old.csv"); df.iloc[1500:1540].to_csv(d / "new.csv")
    return d

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    # no early stopping: the long second job must still be running when the test controls it, on any machine
    ini = tmp_path_factory.mktemp("settings") / "settings.ini"
    ini.write_text((REPO / "settings.ini").read_text().replace("early_stopping_patience = 10", "early_stopping_patience = 0"))
    proc, url = start_server(runs, "--slots", "1", env={"QTNB_SETTINGS": str(ini)})
    yield runs, url, httpx.Client(base_url=url, timeout=60)
    stop(proc)
    for st in runs.glob("*/status.json"):                  # runs still going (a stop the trainer did not honour)
        pid = json.loads(st.read_text()).get("pid")
        try: os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError, TypeError): pass

def wait_for(fn, timeout=300, every=0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v: return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {fn}")

def test_start_queue_stream_control_predict(server, data, tmp_path):
    runs, url, c = server
    r = c.post("/runs/train", json={"data": str(data / "old.csv"), "model": "mlp", "epochs": 3, "seq_len": 8, "run_name": "apimlp"})
    eq(r.status_code, 202); a = r.json()["job"]
    r = c.post("/runs/train", json={"data": str(data / "old.csv"), "model": "lstm", "epochs": 100_000, "seq_len": 8,
                                    "model_params": {"hidden_size": 8}})
    eq(r.status_code, 202); b = r.json()["job"]
    eq(c.get(f"/jobs/{b}").json()["state"], "queued")                   # one slot: the second run waits
    assert any(x.get("job") == b and x["state"] == "queued" for x in c.get("/runs").json())
    r = c.post("/runs/train", json={"model": "mlp", "epoch": 3})
    eq(r.status_code, 422); assert "epoch" in r.json()["detail"]

    rid = wait_for(lambda: c.get(f"/jobs/{a}").json()["run_id"])
    events = []
    with c.stream("GET", f"/runs/{rid}/events", timeout=600) as s:
        kind = None
        for line in s.iter_lines():
            if line.startswith("event: "): kind = line[7:]
            elif line.startswith("data: "): events.append((kind, json.loads(line[6:])))
    epochs = [d["epoch"] for k, d in events if k == "epoch"]
    eq(epochs, [1, 2, 3]); eq(events[-1], ("status", {"state": "completed"}))
    info = c.get(f"/runs/{rid}").json()
    eq(info["status"]["state"], "completed"); eq(len(info["history"]), 3); assert "test" in info["metrics"]

    register_version(rid, "spx", stage="production", runs_dir=runs)
    assert [m["name"] for m in c.get("/models").json()] == ["spx"]
    new = pd.read_csv(data / "new.csv")
    api = c.post("/models/spx@production/predict", json={"rows": json.loads(new.to_json(orient="records"))})
    eq(api.status_code, 200)
    got = pd.DataFrame(api.json()["predictions"])
    out = tmp_path / "cli.csv"
    res = subprocess.run([QTNB, "predict", "spx@production", "--data", str(data / "new.csv"), "--out", str(out),
                          "--runs-dir", str(runs)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    cli = pd.read_csv(out)
    eq(len(got), 40); eq(list(pd.to_datetime(got.date)), list(pd.to_datetime(cli.date)))
    close(got.y_pred.to_numpy(), cli.y_pred.to_numpy(), eps=1e-6)
    csv = c.post("/models/spx@production/predict", content=(data / "new.csv").read_bytes(), headers={"content-type": "text/csv"})
    close(pd.DataFrame(csv.json()["predictions"]).y_pred.to_numpy(), cli.y_pred.to_numpy(), eps=1e-6)
    from qtnb.predict import Predictor
    x, _ = Predictor.from_registry("spx@production", runs_dir=runs).preprocess.windows(data / "new.csv", last=2)
    win = c.post("/models/spx@production/predict", json={"windows": x.tolist()}).json()["predictions"]
    close(np.array([w["y_pred"] for w in win]), cli.y_pred.to_numpy()[-2:], eps=1e-6)
    eq([w["model_version"] for w in win], ["spx@1", "spx@1"])
    many = c.post("/models/spx@production/predict", json={"windows": np.repeat(x[-1:], 100, 0).tolist()}).json()["predictions"]
    eq(len(many), 100); close(np.array([w["y_pred"] for w in many]), np.full(100, cli.y_pred.to_numpy()[-1]), eps=1e-6)  # off the event loop
    eq(c.post("/models/spx@production/predict", json={"windows": x[:, :3].tolist()}).status_code, 422)
    bad = c.post("/models/spx@production/predict", json={"rows": json.loads(new.drop(columns=["Close"]).to_json(orient="records"))})
    eq(bad.status_code, 422); assert "'Close'" in bad.json()["detail"]

    rid_b = wait_for(lambda: c.get(f"/jobs/{b}").json()["run_id"])
    wait_for(lambda: c.get(f"/runs/{rid_b}").json()["status"]["state"] == "running")
    for action in ("pause", "resume", "checkpoint", "stop"):
        r = c.post(f"/runs/{rid_b}/{action}")
        eq(r.status_code, 202)
        eq(json.loads((runs / rid_b / "control.json").read_text())["action"], action)
    eq(c.post(f"/runs/{rid_b}/explode").status_code, 404)
    wait_for(lambda: c.get(f"/runs/{rid_b}").json()["status"]["state"] == "stopped")   # the stop was honoured

def test_paths_never_leave_the_store(server):
    runs, url, c = server
    for path in ("/runs/..%2F..%2Fetc", "/runs/%2E%2E", "/runs/..%2F..%2Fetc/events", "/runs/%2Fetc%2Fpasswd/stop"):
        r = c.post(path) if path.endswith("stop") else c.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "root:" not in r.text

def test_body_over_the_cap_is_refused(server):
    runs, url, c = server
    r = c.post("/models/spx@production/predict", content=b"x" * (10 * 2**20), headers={"content-type": "text/csv"})
    eq(r.status_code, 413)

class Boom:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))

def test_planted_pickle_never_runs_on_predict(server, data, tmp_path):
    runs, url, c = server
    run = train(model="mlp", epochs=1, seq_len=8, data=str(data / "old.csv"), runs_dir=str(runs), verbose=False).run
    marker = tmp_path / "pwned"
    (run.path / "checkpoints" / "best.pt").write_bytes(pickle.dumps({"model": Boom(marker)}))
    register_version(run.id, "evil", stage="production", runs_dir=runs)
    rows = json.loads(pd.read_csv(data / "new.csv").to_json(orient="records"))
    r = c.post("/models/evil@production/predict", json={"rows": rows})
    assert r.status_code >= 400 and not marker.exists(), (r.status_code, r.text)

def test_token_required_beyond_loopback(tmp_path):
    res = subprocess.run([QTNB, "serve", "--host", "127.0.0.2", "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, timeout=60, env={k: v for k, v in os.environ.items() if k != "QTNB_TOKEN"})
    eq(res.returncode, 2); assert "--token" in res.stderr
    proc, url = start_server(tmp_path, host="127.0.0.2", env={"QTNB_TOKEN": TOKEN})
    try:
        eq(httpx.get(url + "/runs").status_code, 401)
        eq(httpx.get(url + "/runs", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code, 401)
        eq(httpx.get(url + "/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code, 200)
    finally: stop(proc)

def test_a_restarted_server_keeps_its_queue(data, tmp_path):
    runs = tmp_path / "runs"; runs.mkdir()
    params = {"data": str(data / "old.csv"), "model": "mlp", "epochs": 1, "seq_len": 8}
    proc, url = start_server(runs, "--slots", "1")
    try:
        c = httpx.Client(base_url=url, timeout=60)
        a, b = (c.post("/runs/train", json=params).json()["job"] for _ in range(2))
        eq(c.get(f"/jobs/{b}").json()["state"], "queued")                  # one slot: b waits behind a
    finally: stop(proc)                                                      # a's `qtnb run` goes on without the server
    saved = {j["id"]: j["state"] for j in json.loads((runs / ".serve" / "jobs.json").read_text())["jobs"]}
    eq(saved[b], "queued")
    proc, url = start_server(runs, "--slots", "1")
    try:
        c = httpx.Client(base_url=url, timeout=60)
        eq([j["job"] for j in c.get("/jobs").json()], [a, b])                # the new server shows both jobs
        finished = lambda j: c.get(f"/jobs/{j}").json()["state"] not in ("queued", "running")
        wait_for(lambda: finished(a) and finished(b))                        # follows a, then starts b itself
        for j in (a, b):
            info = c.get(f"/jobs/{j}").json()
            eq(info["state"], "completed"); eq(c.get(f"/runs/{info['run_id']}").json()["status"]["state"], "completed")
    finally:
        stop(proc)
        for st in runs.glob("*/status.json"):
            pid = json.loads(st.read_text()).get("pid")
            try: os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError, TypeError): pass

def _onnx_predictor(store: Path, frame: pd.DataFrame, **data):
    "An MLP fitted for one epoch on `frame` (data config overrides `data`), as an ONNX Runtime `Predictor`."
    from qtnb.data import prepare
    from qtnb.predict import Predictor
    from qtnb.runs import create_run
    from qtnb.trainer import fit_fold
    prep = prepare(dict(data="synthetic:planted", seq_len=8, cache=False, **data), frame)
    run = create_run("plan", runs_dir=store)
    fit_fold(prep.folds[0], {"name": "mlp", "hidden_sizes": [8]}, dict(num_epochs=1, device="cpu"), run=run)
    return Predictor.from_run(run.id, runs_dir=store, backend="onnx")

def _outcome(f):
    "What `f()` gives: its value, or the type and message of what it raised."
    try: return f()
    except Exception as e: return type(e).__name__, str(e)

@pytest.mark.parametrize("data", [{}, {"horizons": [1, 5]}, {"target_scaler": "none"}, {"target": "direction"}])
def test_window_plan_replies_as_the_general_path(tmp_path, data, monkeypatch):
    "The hot path's precomputed plan gives the bytes (and the errors) of `_predict_windows`, for each kind of output."
    from qtnb import serve
    frame = load_frame("synthetic:planted").iloc[:1200]
    p = _onnx_predictor(tmp_path, frame.iloc[:1000], **data)
    x, _ = p.preprocess.windows(frame.iloc[1000:1040])
    plan = serve.WindowPlan(p)
    bad = x.copy(); bad[1, 2, 3] = np.inf
    cases = [x[:1], x, np.repeat(x, 103, 0)[:p.batch_size + 3], x.astype(np.float64), x[:0], bad, x[:, :, :3], x[0]]
    for b in cases: eq(_outcome(lambda: plan(b)), _outcome(lambda: serve._predict_windows(p, b)))
    assert b'"y_pred"' in plan(x[:1]) and _outcome(lambda: plan(bad))[0] == "ExportError"
    def general(*a): raise AssertionError("the general path was taken")
    monkeypatch.setattr(serve, "_predict_windows", general)
    eq(json.loads(plan(x))["predictions"][-1]["window"], len(x) - 1)     # the common case never leaves the plan
