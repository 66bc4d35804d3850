"""Bad parameters through the real `qtnb` command: each refused in one line with exit 2 before any kernel or run folder
exists; and the hints the data errors give (`-p fill ffill`, `-p date_unit`) work as typed."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qtnb.datasets import random_walk

QTNB = str(Path(sys.executable).parent / "qtnb")
REPO = Path(__file__).resolve().parent.parent


def qtnb(*args, runs, timeout=300):
    cmd = [QTNB, *map(str, args), "--runs-dir", str(runs)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=dict(os.environ))


def files(t: Path) -> dict:
    "Data files a case can point at."
    (t / "folder").mkdir()
    (t / "empty.csv").write_text("")
    (t / "dup.yaml").write_text("epochs: 2\nseq_len: 8\nepochs: 3\n")
    return {"folder": t / "folder", "empty": t / "empty.csv", "dup": t / "dup.yaml", "missing": t / "no" / "prices.csv"}


CASES = [
    # (id, arguments ({name} is a path from files()), distinctive part of the one-line error)
    ("huge-seq-len", ["run", "train", "-p", "model", "transformer", "-p", "seq_len", "4096", "-p", "batch_size", "100000"],
     "seq_len=4096 with batch_size=100000 needs"),
    ("unknown-feature", ["run", "train", "-p", "features", "logret_1,volatilty_20"], "unknown feature 'volatilty_20'; choose from presets"),
    ("kernel-longer-than-seq-len", ["run", "train", "-p", "model", "cnn", "-p", "seq_len", "4"],
     "kernel_sizes[0]=5 is longer than the window (seq_len=4)"),
    ("missing-data-path", ["run", "train", "-p", "data", "{missing}"], "no/prices.csv does not exist"),
    ("data-is-a-directory", ["run", "train", "-p", "data", "{folder}"], "folder is a directory"),
    ("empty-data-file", ["run", "train", "-p", "data", "{empty}"], "empty.csv is empty (0 bytes)"),
    ("unknown-dataset", ["run", "train", "-p", "data", "sp5000"], "data='sp5000' is neither a dataset"),
    ("duplicate-yaml-key", ["run", "train", "-f", "{dup}"], "dup.yaml repeats key 'epochs' at line 3 (first at line 1)"),
    ("repeated-p", ["run", "train", "-p", "lr", "0.1", "-p", "lr", "0.01"], "-p lr is given twice"),
    ("repeated-g", ["sweep", "train", "-g", "model", "mlp,lstm", "-g", "model", "gru"], "-g model is given twice"),
    ("p-and-g", ["sweep", "train", "-p", "seq_len", "8", "-g", "seq_len", "8,16"], "seq_len is given by -p and by -g"),
    ("sweep-combination", ["sweep", "train", "-p", "model", "cnn", "-g", "seq_len", "16,3"], "kernel_sizes[0]=5 is longer than the window (seq_len=3)"),
    ("tune-unknown-feature", ["run", "tune", "-p", "features", "rsi_0"], "feature 'rsi_0' needs a window >= 1"),
    ("bad-time-zone", ["run", "train", "-p", "tz", "Mars/Olympus"], "tz='Mars/Olympus' is not a time zone"),
    ("bad-date-unit", ["run", "train", "-p", "date_unit", "days"], "date_unit='days' is invalid"),
    ("bad-fill", ["run", "train", "-p", "fill", "bfill"], "fill='bfill' is invalid"),
]


@pytest.mark.parametrize("args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_before_any_kernel(tmp_path, args, needle):
    paths = files(tmp_path)
    runs = tmp_path / "runs"
    r = qtnb(*[a.format(**paths) for a in args], runs=runs)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    assert needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("qtnb: error: "), r.stderr
    assert not runs.exists() or not any(runs.iterdir())      # no run, no sweep folder, no kernel's work


def test_corpus_messages_are_distinct():
    assert len({c[2] for c in CASES}) == len(CASES) >= 15


@pytest.mark.slow
def test_data_hints_work_as_typed(tmp_path):
    "A CSV of epoch-millisecond dates with a gap: the NaN error says `-p fill ffill`; with it (and -p date_unit ms) the run completes on the right dates."
    df = random_walk(260, seed=3)
    df.iloc[100, df.columns.get_loc("Close")] = np.nan
    ms = ((df.index - pd.Timestamp("1970-01-01")) // pd.Timedelta(1, "ms")).to_numpy()
    (tmp_path / "gappy.csv").write_text(df.reset_index(drop=True).assign(date=ms).to_csv(index=False))
    small = ["-p", "data", tmp_path / "gappy.csv", "-p", "seq_len", "8", "-p", "epochs", "1", "-q"]
    r = qtnb("run", "train", *small, runs=tmp_path / "runs")
    assert r.returncode == 1 and "column 'Close' has 1 NaN value(s)" in r.stderr and "set -p fill ffill" in r.stderr, r.stderr[-2000:]
    r = qtnb("run", "train", *small, "-p", "fill", "ffill", "-p", "date_unit", "ms", runs=tmp_path / "runs2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = next(p for p in (tmp_path / "runs2").iterdir() if (p / "params.yaml").exists())
    pred = pd.read_csv(run / "predictions.csv", parse_dates=["date"])
    assert pred["date"].min() > df.index[150] and pred["date"].max() <= df.index[-1]   # 2000s, not 1970
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
