"""The prediction API and `qtnb predict` under load, measured side by side in one run.

The server is `qtnb serve`'s own (`create_app` run by `run_app`: uvicorn with uvloop and httptools where installed) in a
process of its own, with one extra route, `POST /floor`, that reads the body and returns a fixed 18-byte JSON reply: the
same token/body guard, FastAPI app and uvicorn, no qtnb work. The clients are separate processes (one keep-alive
connection each, raw HTTP/1.1 over a socket, so a client costs the cores little and never shares the server's GIL); each
sends the same body, one window of the registered MLP (batch 1, `{"windows": [...]}`), and checks every reply is a 200.

Figures (p50 = median latency of all requests in a block, send to last byte of the reply; "8 clients" = 8 client
processes each sending its next request as soon as its reply arrives, a closed loop):
- `ort_p50_ms`: the same ONNX Runtime session called in-process on that window (no HTTP), the baseline.
- `serve_overhead_p50_ms`: p50 over HTTP with 8 clients minus `ort_p50_ms` (goal <= 1.5 ms). With 8 requests always in
  flight, a request waits behind the others: by Little's law p50 is about 8 / rps, so this goal needs about
  8 / 1.5 ms = 5,300 requests per second from one server process.
- `serve_rps`: requests per second those 8 clients get (goal >= 500 on 2 cores).
- `serve_overhead_1client_p50_ms`: p50 with 1 client minus `ort_p50_ms`: what one request costs without queueing.
- `floor_rps`, `floor_1client_p50_ms`: the same for `/floor`: the bound this server stack sets before qtnb does anything.
- `qtnb_over_floor_ms`: `/models/NAME@production/predict` 1-client p50 minus `/floor` 1-client p50: what qtnb's predict
  adds to a request (parse, model lookup, session, outputs, encoding).
- `predict_500_symbols_s`: `qtnb predict NAME@production --data panel.csv --last 1` on 500 symbols, in-process after
  imports (goal <= 1.0 s, interpreter start excluded).
The blocks (ORT in-process; predict and floor with 8 clients; predict and floor with 1 client) run in rotating rounds
(A B C D E, B C D E A, ...) after a warm-up; the machine's load average is printed before and after, since a loaded
machine moves all of them. `--profile` adds the server side's own time per request by stage (in-process, no network).
Prints one JSON line per figure.

Run from the repo root: `.venv/bin/python tests/bench/bench_serve.py [--rounds 3] [--seconds 3] [--profile]`.
"""
import argparse, json, multiprocessing as mp, os, signal, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import pandas as pd

from _timing import Bench, emit, interleaved

REPO = Path(__file__).resolve().parents[2]
QTNB = str(Path(sys.executable).parent / "qtnb")
PREDICT, FLOOR = "/models/bench@production/predict", "/floor"

def say(figure, value, goal=None, **extra):
    print(json.dumps({"figure": figure, "value": round(float(value), 4), "goal": goal, **extra}), flush=True)

def free_port() -> int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def setup(root: Path):
    "An MLP trained on the S&P 500 registered as bench@production, and one on a 500-symbol panel as panel@production."
    from qtnb.data import load_frame
    from qtnb.pipeline import train
    from qtnb.registry import register_version
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

def serve_with_floor(port: int, runs: str) -> None:
    "The benchmark's server process: `qtnb serve`'s app and uvicorn settings, plus `/floor`, matched first like predict."
    from starlette.responses import Response
    from starlette.routing import Route
    from qtnb.serve import create_app, run_app
    app = create_app(runs)
    async def floor(request):
        await request.body()
        return Response(b'{"predictions":[]}', media_type="application/json")
    app.app.router.routes.insert(0, Route(FLOOR, floor, methods=["POST"]))
    run_app(app, "127.0.0.1", port)

def http_post(port: int, body: bytes):
    "A keep-alive connection's request function: `post(path)` sends `body`, returns the reply body (raises unless 200)."
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = f"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    buf = b""
    def post(path: str) -> bytes:
        nonlocal buf
        s.sendall(f"POST {path} HTTP/1.1\r\n".encode() + head)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                n = int(buf[:i].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) >= i + 4 + n: break
            chunk = s.recv(65536)
            if not chunk: raise ConnectionError("the server closed the connection")
            buf += chunk
        if not buf.startswith(b"HTTP/1.1 200"): raise AssertionError(buf[:300])
        reply, buf = buf[i + 4:i + 4 + n], buf[i + 4 + n:]
        return reply
    post.close = s.close
    return post

def client(conn, port: int, body: bytes) -> None:
    "A client process: per (path, start, end) sent, requests back to back on a fresh connection; the latencies (ms) go back."
    # a fresh connection per block, opened before `start` (untimed): uvicorn closes one left idle for 5 s
    while (job := conn.recv()) is not None:
        path, start, end = job
        post, lat = http_post(port, body), []
        while time.time() < start: time.sleep(0.0005)
        while time.time() < end:
            t0 = time.perf_counter(); post(path); lat.append((time.perf_counter() - t0) * 1e3)
        post.close()
        conn.send(lat)

class Clients:
    "`n` client processes (spawned, so none shares the server's or this process's interpreter), one keep-alive connection each."
    def __init__(self, n: int, port: int, body: bytes):
        ctx = mp.get_context("spawn")
        self.pipes = [ctx.Pipe() for _ in range(n)]
        self.procs = [ctx.Process(target=client, args=(b, port, body), daemon=True) for _, b in self.pipes]
        for p in self.procs: p.start()

    def block(self, path: str, k: int, seconds: float, rps: list) -> list[float]:
        "The first `k` clients for `seconds`: all latencies (ms); the requests per second go to `rps`."
        start = time.time() + 0.3
        for a, _ in self.pipes[:k]: a.send((path, start, start + seconds))
        res = [a.recv() for a, _ in self.pipes[:k]]
        rps.append(sum(map(len, res)) / seconds)
        return [x for r in res for x in r]

    def close(self):
        for a, _ in self.pipes: a.send(None)
        for p in self.procs: p.join(10)

def in_process(pred, x, n) -> list[float]:
    "Latencies (ms) of the warm ONNX Runtime session on one window, in this process."
    sess = pred.session.ort
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); sess.run([out], {name: x}); t.append((time.perf_counter() - t0) * 1e3)
    return t

def profile(runs: Path, body: bytes) -> None:
    """Where the server's own time per request goes (median us, in-process, no network): routes doing the predict handler's
    stages cumulatively, each through the whole ASGI app, so every stage is timed as it runs inside a request."""
    import asyncio
    from qtnb import serve as s
    from starlette.responses import Response
    from starlette.routing import Route
    app = s.create_app(runs)
    P = app.app.state.predictors; P.get("bench@production")
    empty = lambda: Response(b'{"predictions":[]}', media_type="application/json")
    async def floor(r): await r.body(); return empty()
    async def parse(r): s._parse(await r.body(), ""); return empty()
    async def session(r):   # the registry lookup and the bare session call, as the predict route's plan makes it
        _, x = s._parse(await r.body(), ""); P.hot("bench@production").run(x); return empty()
    async def outputs(r):   # the whole plan: checks, session, output columns and the reply's bytes
        _, x = s._parse(await r.body(), ""); return Response(P.hot("bench@production")(x), media_type="application/json")
    routes = dict(floor=floor, parse=parse, session=session, outputs=outputs)
    for k, f in routes.items(): app.app.router.routes.insert(0, Route(f"/{k}", f, methods=["POST"]))
    def asgi(path):
        sc = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
              "raw_path": path.encode(), "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
              "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
        async def receive(): return {"type": "http.request", "body": body, "more_body": False}
        async def send(m): pass
        loop = asyncio.new_event_loop()
        def calls(n=1000) -> list[float]:
            t = []
            for _ in range(n):
                t0 = time.perf_counter(); loop.run_until_complete(app(sc, receive, send)); t.append((time.perf_counter() - t0) * 1e6)
            return t
        return calls
    st = interleaved({k: asgi(f"/{k}") for k in routes} | {"predict": asgi(PREDICT)}, 3)
    m = {k: v.median for k, v in st.items()}
    emit("server_us_per_request", m["predict"], app_floor_us=m["floor"], parse_body_us=m["parse"] - m["floor"],
         model_lookup_and_session_us=m["session"] - m["parse"], outputs_and_encode_us=m["outputs"] - m["session"],
         route_us=m["predict"] - m["outputs"], note="median us per request through the ASGI app in-process (no network, "
         "no uvicorn); floor = guard + FastAPI middleware + routing + body + a fixed reply; the rest are what each stage adds; "
         "route = the predict route's own handling (a bare ASGI app) less a Request/Response route's, so it may be negative")
    app.app.state.jobs.close()

def http_figures(root: Path, a) -> None:
    from qtnb.predict import Predictor
    pred = Predictor.from_registry("bench@production", backend="onnx", runs_dir=root / "runs")
    x, _ = pred.preprocess.windows(root / "sp.csv", last=1)
    body = json.dumps({"windows": x.tolist()}).encode()
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-on", str(port), str(root / "runs")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if proc.poll() is not None: raise RuntimeError(proc.stderr.read().decode()[-2000:])
            try: post = http_post(port, body); break
            except ConnectionRefusedError: time.sleep(0.2)
        got = json.loads(post(PREDICT))["predictions"]                         # warm: export + session; and the reply is right
        want = pred.columns(pred.raw(x))["y_pred"][0]
        assert len(got) == 1 and abs(got[0]["y_pred"] - want) < 1e-6, (got, want)
        post.close()
        rps = {k: [] for k in ("predict8", "floor8")}
        clients = Clients(a.clients, port, body)
        try:
            blocks = dict(ort=lambda: in_process(pred, x, 2000),
                          predict8=lambda: clients.block(PREDICT, a.clients, a.seconds, rps["predict8"]),
                          floor8=lambda: clients.block(FLOOR, a.clients, a.seconds, rps["floor8"]),
                          predict1=lambda: clients.block(PREDICT, 1, a.seconds, []),
                          floor1=lambda: clients.block(FLOOR, 1, a.seconds, []))
            st = interleaved(blocks, a.rounds)
        finally: clients.close()
        for v in rps.values(): del v[0]                                         # the warm-up round
    finally:
        proc.send_signal(signal.SIGINT); proc.wait(20)
    ort, c = st["ort"].median, a.clients
    rp, rf = statistics.median(rps["predict8"]), statistics.median(rps["floor8"])
    emit("serve_overhead_p50_ms", st["predict8"].median - ort, "<= 1.5", http_p50_ms=st["predict8"].median, ort_p50_ms=ort,
         clients=c, little_law_p50_ms=c / rp * 1e3, rps_needed_for_goal=c / (1.5 + ort) * 1e3)
    emit("serve_rps", rp, ">= 500", clients=c, per_round=rps["predict8"], cores=os.cpu_count())
    emit("serve_overhead_1client_p50_ms", st["predict1"].median - ort, http_p50_ms=st["predict1"].median, ort_p50_ms=ort)
    emit("floor_rps", rf, clients=c, floor_p50_ms=st["floor8"].median, serve_over_floor_rps_ratio=rp / rf)
    emit("floor_1client_p50_ms", st["floor1"].median)
    emit("qtnb_over_floor_ms", st["predict1"].median - st["floor1"].median, predict_1client_p50_ms=st["predict1"].median,
         floor_1client_p50_ms=st["floor1"].median)
    if a.profile: profile(root / "runs", body)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--rounds", type=int, default=3); ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--clients", type=int, default=8); ap.add_argument("--profile", action="store_true")
    ap.add_argument("--serve-on", nargs=2, metavar=("PORT", "RUNS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_on: return serve_with_floor(int(a.serve_on[0]), a.serve_on[1])
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    setup(root)
    with Bench("serve_http", rounds=a.rounds, seconds=a.seconds, clients=a.clients): http_figures(root, a)
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
