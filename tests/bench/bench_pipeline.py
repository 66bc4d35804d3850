"""`qtnb run train` (papermill, a fresh kernel, the saved notebook) against the same training called in-process with
`qtnb.pipeline.train`, for a training of about TARGET_S seconds.

Both contestants train the same LSTM on the same data for the same number of epochs (no early stopping); the number of
epochs is calibrated first so the in-process training takes about TARGET_S. Each contestant is warmed up with a
1-epoch run (the command's kernel start and imports, the in-process feature cache), then measured side by side by
tests/bench/_timing.py in ROUNDS rotating rounds. Figures, defined before anything is measured:

  pipeline_vs_inprocess      kind default, goal <= 1.3: median wall time of the command over median in-process time.
  pipeline_startup_s         report: the command's median wall time minus the in-process median (its fixed cost).

Run from the repo root with no arguments: python tests/bench/bench_pipeline.py (under 5 minutes on 2 cores;
QTNB_BENCH_TRAIN_S shortens it for development).
"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path

from _timing import Bench, emit, interleaved, ratio

TARGET_S = float(os.environ.get("QTNB_BENCH_TRAIN_S", 40))   # training time per run; 4 runs, warm-ups and calibration fit in 5 minutes
ROUNDS = 2
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


def main():
    with Bench("bench_pipeline", target_train_s=TARGET_S, rounds=ROUNDS, **base):
        command(1); in_process(1)                   # warm-up: the command's first kernel start, the feature cache, torch
        t1, t4 = in_process(1), in_process(4)       # calibration: seconds per epoch, and the rest
        per_epoch = (t4 - t1) / 3
        epochs = max(2, round((TARGET_S - (t1 - per_epoch)) / per_epoch))
        st = interleaved({"command": lambda: command(epochs), "in_process": lambda: in_process(epochs)}, ROUNDS, warmup=0)
        value, q = ratio(st["command"], st["in_process"])
        emit("pipeline_vs_inprocess", value, "<= 1.3", "default", epochs=epochs, round_ratio_quartiles=q,
             command_s=st["command"].samples, inprocess_s=st["in_process"].samples)
        emit("pipeline_startup_s", st["command"].median - st["in_process"].median, None, "report",
             note="qtnb run train wall time minus the same training in-process")


if __name__ == "__main__":
    main()
