"""Benchmark: `qtnb run train` (papermill, a fresh kernel, the saved notebook) against the same training called
in-process with `qtnb.pipeline.train`, side by side (A B A B), for a training of about a minute.

Prints JSON lines: pipeline_vs_inprocess (wall-time ratio, goal <= 1.3), pipeline_startup_s (the fixed cost of the
command: its wall time minus the in-process time), and the figures they come from.
Run from the repo root: .venv/bin/python tests/bench/bench_pipeline.py
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

TARGET_S = float(os.environ.get("QTNB_BENCH_TRAIN_S", 48))   # training time per run; 4 runs and calibration fit in 5 minutes
BIN = Path(sys.executable).parent
tmp = Path(tempfile.mkdtemp(prefix="qtnb-bench-pipeline-"))
settings = tmp / "settings.ini"
# no early stopping, so both sides train exactly the same number of epochs
settings.write_text(f"[storage]\nruns_dir = {tmp / 'runs'}\n[training_defaults]\nearly_stopping_patience = 0\nbatch_size = 64\n")
os.environ["QTNB_SETTINGS"] = str(settings)

from qtnb.pipeline import TrainParams, train   # noqa: E402  (after QTNB_SETTINGS)

base = dict(data="sp500", model="lstm", model_params={"hidden_size": 32}, seq_len=32)

def in_process(epochs: int) -> float:
    t0 = time.perf_counter()
    train(TrainParams(**base, epochs=epochs).check(), verbose=False)
    return time.perf_counter() - t0

def command(epochs: int) -> float:
    args = [str(BIN / "qtnb"), "run", "train", "-q", "-p", "data", base["data"], "-p", "model", base["model"],
            "-p", "model_params", json.dumps(base["model_params"]), "-p", "seq_len", str(base["seq_len"]), "-p", "epochs", str(epochs)]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=os.environ)
    dt = time.perf_counter() - t0
    if r.returncode != 0: raise SystemExit(f"qtnb run train failed: {r.stderr[-2000:]}")
    return dt

def emit(figure, value, goal=None, **extra):
    print(json.dumps({"figure": figure, "value": round(value, 4), **({"goal": goal} if goal else {}), **extra}), flush=True)

in_process(1)                                       # warms the feature cache and torch
t1, t4 = in_process(1), in_process(4)               # calibrates: seconds per epoch, and the rest
per_epoch = (t4 - t1) / 3
epochs = max(2, round((TARGET_S - (t1 - per_epoch)) / per_epoch))
a, b = [], []
for _ in range(2):                                  # A B A B
    a.append(command(epochs)); b.append(in_process(epochs))
ratio = sum(a) / sum(b)
startup = sum(x - y for x, y in zip(a, b)) / len(a)
emit("pipeline_vs_inprocess", ratio, "<= 1.3", epochs=epochs, command_s=[round(x, 2) for x in a], inprocess_s=[round(x, 2) for x in b])
emit("pipeline_startup_s", startup, None, note="qtnb run train wall time minus the same training in-process")
emit("pipeline_inprocess_train_s", sum(b) / len(b))
