"""The prediction API and `qtnb predict` under load, measured side by side in one run.

- `serve_overhead_p50_ms`: POST /models/NAME@production/predict with one window (batch 1) from 8 concurrent clients,
  HTTP p50 minus the p50 of the same ONNX Runtime session called in-process (goal <= 1.5 ms).
- `serve_rps`: requests per second those 8 clients get (goal >= 500 on 2 cores).
- `predict_500_symbols_s`: `qtnb predict NAME@production --data panel.csv --last 1` on 500 symbols, in-process after
  imports (goal <= 1.0 s, interpreter start excluded).
In-process and HTTP blocks alternate (A B A B ...) over several rounds; the machine's load average is printed with the
figures, since a loaded machine moves all of them. Prints one JSON line per figure.

Run from the repo root: `.venv/bin/python tests/bench/bench_serve.py [--rounds 3] [--seconds 3]`.
"""
import argparse, asyncio, json, os, signal, socket, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
QTNB = str(Path(sys.executable).parent / "qtnb")

def say(figure, value, goal=None, **extra):
    print(json.dumps({"figure": figure, "value": round(float(value), 4), "goal": goal, **extra}), flush=True)

def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def setup(root: Path):
    "An MLP trained on the S&P 500 registered as bench@production, and one on a 500-symbol panel as panel@production."
    from qtnb.data import load_frame
    from qtnb.pipeline import train
    from qtnb.runs import register_version
    sp = load_frame("sp500")
    sp.iloc[:1500].to_csv(root / "sp.csv")
    run = train(model="mlp", epochs=1, seq_len=16, data=str(root / "sp.csv"), runs_dir=str(root / "runs"), verbose=False).run
    register_version(run.id, "bench", stage="production", runs_dir=root / "runs")
    rng = np.random.default_rng(0)
    base = sp.iloc[:160]
    parts = []
    for i in range(500):   # 500 symbols: the S&P 500's path, rescaled and jittered
        f = base * float(rng.uniform(0.2, 5.0))
        f["Close"] = f["Close"] * np.exp(np.cumsum(rng.normal(0, 0.01, len(f))))
        parts.append(f.assign(symbol=f"S{i:03d}"))
    panel = pd.concat(parts)
    panel.iloc[np.r_[[np.arange(i * 160, i * 160 + 120) for i in range(500)]].ravel()].to_csv(root / "panel_train.csv")
    panel.to_csv(root / "panel.csv")
    run = train(model="mlp", epochs=1, seq_len=16, data=str(root / "panel_train.csv"), symbol_col="symbol",
                runs_dir=str(root / "runs"), verbose=False).run
    register_version(run.id, "panel", stage="production", runs_dir=root / "runs")

def in_process(pred, x, n):
    "p50 (ms) of the warm ONNX Runtime session on one window."
    sess = pred.session.ort
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); sess.run([out], {name: x}); t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)

async def http_load(url, body, seconds, clients=8):
    import httpx
    lat = []
    async def client():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                r = await c.post("/models/bench@production/predict", content=body, headers={"content-type": "application/json"})
                lat.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return float(np.median(lat) * 1e3), len(lat) / (time.perf_counter() - t0)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--seconds", type=float, default=3)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    setup(root)
    from qtnb.predict import Predictor
    pred = Predictor.from_registry("bench@production", backend="onnx", runs_dir=root / "runs")
    x, _ = pred.preprocess.windows(root / "sp.csv", last=1)
    body = json.dumps({"windows": x.tolist()}).encode()
    port = free_port()
    proc = subprocess.Popen([QTNB, "serve", "--port", str(port), "--runs-dir", str(root / "runs")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx
        for _ in range(300):
            try: httpx.post(url + "/models/bench@production/predict", content=body, timeout=30); break   # warm: export + session
            except httpx.TransportError: time.sleep(0.2)
        ort, http, rps = [], [], []
        for _ in range(a.rounds):
            ort.append(in_process(pred, x, 2000))
            p50, r = asyncio.run(http_load(url, body, a.seconds)); http.append(p50); rps.append(r)
    finally:
        proc.send_signal(signal.SIGINT); proc.wait(20)
    load = os.getloadavg()
    extra = dict(ort_p50_ms=round(float(np.median(ort)), 4), http_p50_ms=round(float(np.median(http)), 4), clients=8,
                 cores=os.cpu_count(), loadavg=[round(v, 2) for v in load])
    say("serve_overhead_p50_ms", np.median(http) - np.median(ort), 1.5, **extra)
    say("serve_rps", np.median(rps), 500, cores=os.cpu_count(), loadavg=[round(v, 2) for v in load])
    from qtnb.cli import main as cli
    out, times = root / "panel_preds.csv", []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        rc = cli(["predict", "panel@production", "--data", str(root / "panel.csv"), "--last", "1", "--out", str(out),
                  "--runs-dir", str(root / "runs")])
        times.append(time.perf_counter() - t0)
        assert rc == 0 and len(pd.read_csv(out)) == 500
    say("predict_500_symbols_s", np.median(times), 1.0, rows=int(500 * 160), loadavg=[round(v, 2) for v in os.getloadavg()])

if __name__ == "__main__":
    main()
