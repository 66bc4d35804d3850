"""Control from anywhere, through the real command line: a background `qtnb run train` is paused, checkpointed,
resumed and stopped by `qtnb runs ...` from other processes; a run killed with SIGKILL at a random epoch is finished
by `qtnb run train --resume` with the weights of an uninterrupted run (CPU, 1e-6)."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from fastcore.test import test_eq as eq

ROOT = Path(__file__).resolve().parents[1]
QTNB = str(Path(sys.executable).parent / "qtnb")
WAIT = 5.0   # seconds a request may take to be acknowledged (a generous bound; the trainer looks every 0.2 s)
PROMISED = 2.0   # seconds within which pause and stop take effect, as qtnb's docs promise

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A settings.ini without early stopping, on the CPU, and a 3000-row random walk: 30 epochs take a few seconds."
    d = tmp_path_factory.mktemp("lab")
    ini = (ROOT / "settings.ini").read_text().replace("early_stopping_patience = 10", "early_stopping_patience = 0")
    (d / "settings.ini").write_text(ini.replace("device = auto", "device = cpu"))
    from qtnb.datasets import random_walk
    random_walk(3000).to_csv(d / "rw.csv")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QTNB_SETTINGS": str(d / "settings.ini"), "OMP_NUM_THREADS": "1"}
    return d, env

def train_args(d: Path, epochs: int) -> list[str]:
    return ["run", "train", "-p", "data", str(d / "rw.csv"), "-p", "model", "mlp", "-p", "model_params",
            '{"hidden_sizes": [8], "dropout": 0.2}', "-p", "seq_len", "8", "-p", "batch_size", "16",
            "-p", "epochs", str(epochs), "--runs-dir", str(d / "runs"), "-q"]

def start(lab, *args) -> subprocess.Popen:
    d, env = lab
    return subprocess.Popen([QTNB, *args], cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)   # its own process group: kill -9 takes the kernel with it

def qtnb(lab, *args, timeout=300) -> subprocess.CompletedProcess:
    d, env = lab
    return subprocess.run([QTNB, *args, "--runs-dir", str(d / "runs")], cwd=d, env=env, capture_output=True, text=True, timeout=timeout)

def new_run(lab, before: set, timeout=120) -> Path:
    d = lab[0] / "runs"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        new = [p for p in d.glob("*") if p.name not in before and (p / "status.json").exists()] if d.exists() else []
        if new: return new[0]
        time.sleep(0.1)
    raise AssertionError("no run folder appeared")

def epochs_done(run: Path) -> int:
    h = run / "history.csv"
    try: return max(0, len(h.read_text().strip().splitlines()) - 1)
    except FileNotFoundError: return 0

def wait_for(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v: return v
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")

def acked(run: Path, action: str):
    def f():
        try: c = json.loads((run / "control.json").read_text())
        except (FileNotFoundError, ValueError): return None
        return c if c.get("action") == action and c.get("acknowledged") else None
    return f

def kill_all(p: subprocess.Popen, run: Path) -> None:
    "SIGKILL a `qtnb run` and its kernel: jupyter_client starts the kernel in a session of its own, where it would live ~1 s."
    kernel = status(run).get("pid")            # the kernel stamps its pid once it runs
    os.killpg(p.pid, signal.SIGKILL)
    if kernel and kernel != p.pid:
        try: os.kill(kernel, signal.SIGKILL)
        except ProcessLookupError: pass
    p.wait(30)

def status(run: Path) -> dict: return json.loads((run / "status.json").read_text())
def existing(lab) -> set: return {p.name for p in (lab[0] / "runs").glob("*")} if (lab[0] / "runs").exists() else set()

def test_pause_checkpoint_resume_stop_from_other_processes(lab):
    p = start(lab, *train_args(lab[0], 100_000))
    try:
        run = new_run(lab, existing(lab))
        wait_for(lambda: epochs_done(run) >= 1, 180, "a first epoch")
        r = qtnb(lab, "runs", "pause", run.name); eq(r.returncode, 0)
        assert "pause requested" in r.stdout
        eq(wait_for(acked(run, "pause"), PROMISED, "the pause")["state"], "paused")
        wait_for(lambda: status(run).get("paused") is True, WAIT, "paused in status.json")
        n = epochs_done(run); time.sleep(1.0); eq(epochs_done(run), n)          # nothing moves while paused
        r = qtnb(lab, "runs", "checkpoint", run.name); eq(r.returncode, 0)
        ck = wait_for(acked(run, "checkpoint"), WAIT, "the checkpoint")
        eq((ck["state"], ck["path"]), ("saved", "last.pt"))
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        eq(state["epoch"], n)                                                  # saved where it paused
        r = qtnb(lab, "runs", "resume", run.name); eq(r.returncode, 0)
        wait_for(acked(run, "resume"), WAIT, "the resume")
        wait_for(lambda: epochs_done(run) > n, 60, "training to go on")
        r = qtnb(lab, "runs", "stop", run.name); eq(r.returncode, 0)
        eq(wait_for(acked(run, "stop"), PROMISED, "the stop")["state"], "stopping")
        out, err = p.communicate(timeout=120)
        eq(p.returncode, 0)
        eq(status(run)["state"], "stopped")
        assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.pt").is_file()   # a stopped run keeps its model
        r = qtnb(lab, "runs", "pause", run.name)
        eq(r.returncode, 1); assert "not running" in r.stderr and "qtnb runs resume" in r.stderr
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)

def weights(run: Path, name: str) -> dict: return torch.load(run / "checkpoints" / name, weights_only=True)["model"]

def side_by_side(lab, args: list[str]) -> tuple:
    "Two identical `qtnb run`s started together: (reference process, its run, the process to kill, its run)."
    before = existing(lab)
    whole = start(lab, *args)
    run_whole = new_run(lab, before)
    killed = start(lab, *args)
    return whole, run_whole, killed, new_run(lab, before | {run_whole.name})

def test_resume_after_kill_9_equals_an_uninterrupted_run(lab):
    d = lab[0]
    whole, run_whole, killed, run = side_by_side(lab, train_args(d, 30))
    try:
        at = random.randint(2, 15)
        wait_for(lambda: epochs_done(run) >= at, 240, f"epoch {at}")
        if random.random() < 0.5:
            # half the time a manual checkpoint from another process first. The run is paused in-process at once
            # (a command line takes seconds to start, in which a loaded machine may finish all 30 epochs), then
            # `qtnb runs checkpoint` saves last.pt and the kill lands on a paused run.
            from qtnb.runs import Run
            Run(run).request("pause"); wait_for(acked(run, "pause"), WAIT, "the pause")
            r = qtnb(lab, "runs", "checkpoint", run.name); eq(r.returncode, 0)
            wait_for(acked(run, "checkpoint"), WAIT, "the checkpoint")
        kill_all(killed, run)                                  # otherwise killed mid-epoch, the moment it passes `at`
        n = epochs_done(run)
        assert n < 30, "the run finished before it was killed"
        assert status(run)["state"] in ("running", "interrupted")   # what a killed run leaves behind
        listed = qtnb(lab, "runs", "list", timeout=10 + 60)        # 10 s, plus a command line's start on a loaded machine
        line = next(l for l in listed.stdout.splitlines() if run.name in l)
        assert "interrupted" in line, listed.stdout                # readers see the process is gone
        r = qtnb(lab, "run", "train", "--resume", run.name, "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        eq(status(run)["state"], "completed")
        assert status(run).get("pid") != killed.pid           # the resuming process took the run over
        assert (run / "notebook.ipynb").is_file()             # (a notebook papermill saved before the kill is kept as notebook.attempt1.ipynb)
        eq(whole.wait(300), 0)
        eq((epochs_done(run), epochs_done(run_whole)), (30, 30))
        for name in ("last.pt", "best.pt"):
            a, b = weights(run_whole, name), weights(run, name)
            for k in a: torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
        import pandas as pd
        ha, hb = pd.read_csv(run_whole / "history.csv"), pd.read_csv(run / "history.csv")
        cols = [c for c in ha.columns if c != "time"]
        pd.testing.assert_frame_equal(hb[cols], ha[cols], rtol=0, atol=1e-6)
    finally:
        for p in (whole, killed):
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)

def test_resume_refuses_what_it_cannot_continue(lab):
    d = lab[0]
    r = qtnb(lab, "run", "train", "--resume", "../../etc")
    eq(r.returncode, 2); assert "not allowed" in r.stderr
    r = qtnb(lab, "run", "train", "--resume", "nope-run")
    eq(r.returncode, 1); assert "not found" in r.stderr
    done = [p for p in (d / "runs").glob("*") if (p / "status.json").exists() and status(p)["state"] == "completed"]
    if done:
        r = qtnb(lab, "run", "train", "--resume", done[0].name, "-p", "epochs", "3")
        eq(r.returncode, 2); assert "drop -p" in r.stderr
        r = qtnb(lab, "runs", "resume", done[0].name)
        eq(r.returncode, 1); assert "already completed" in r.stderr

def wf_args(d: Path, epochs: int) -> list[str]:
    return train_args(d, epochs) + ["-p", "validation", "walk_forward", "-p", "n_folds", "3"]

def fold_dirs(run: Path) -> dict:
    "The run's fold runs by fold index."
    import yaml
    out = {}
    for f in (run / "folds").glob("*") if (run / "folds").is_dir() else []:
        if (f / "params.yaml").is_file(): out[yaml.safe_load((f / "params.yaml").read_text())["fold"]] = f
    return out

def test_walk_forward_resume_keeps_completed_folds_and_equals_an_uninterrupted_run(lab):
    import hashlib, pandas as pd
    d = lab[0]
    whole, run_whole, killed, run = side_by_side(lab, wf_args(d, 5))
    try:
        # killed in the second fold, after two epochs (so it continues from fold 1's last.pt)
        wait_for(lambda: 1 in fold_dirs(run) and epochs_done(fold_dirs(run)[1]) >= 2, 240, "fold 1's second epoch")
        kernel = status(run)["pid"]           # the kernel stamped its pid; jupyter_client starts it in a session of its own
        os.killpg(killed.pid, signal.SIGKILL); os.kill(kernel, signal.SIGKILL); killed.wait(30)   # (it would live on ~1 s)
        folds = fold_dirs(run)
        eq(sorted(folds), [0, 1])
        killed_folds = folds
        eq(json.loads((folds[0] / "status.json").read_text())["state"], "completed")
        n1 = epochs_done(folds[1]); assert 2 <= n1 < 5, n1
        # with their times: a fold trained again would change them (the last row may be newer than last.pt: left out)
        rows1 = pd.read_csv(folds[1] / "history.csv").iloc[:n1 - 1]
        files0 = lambda f: [*(f / "checkpoints").glob("*.pt"), *(f / n for n in ("metrics.json", "predictions.csv", "history.csv", "status.json"))]
        kept = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files0(folds[0])}
        r = qtnb(lab, "run", "train", "--resume", run.name, "-q")
        assert r.returncode == 0, r.stderr[-2000:]
        eq(status(run)["state"], "completed")
        eq(whole.wait(300), 0)
        folds, folds_whole = fold_dirs(run), fold_dirs(run_whole)
        eq(sorted(folds), [0, 1, 2]); eq(len(list((run / "folds").iterdir())), 3)   # no fold run started twice
        eq({p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files0(folds[0])},
           kept)                                              # the completed fold is kept as it was, not even rewritten
        eq((folds[0], folds[1]), (killed_folds[0], killed_folds[1]))
        pd.testing.assert_frame_equal(pd.read_csv(folds[1] / "history.csv").iloc[:len(rows1)], rows1)   # continued, not restarted
        for k in range(3):
            eq(epochs_done(folds[k]), 5)
            a, b = weights(folds_whole[k], "last.pt"), weights(folds[k], "last.pt")
            for key in a: torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
        pa, pb = pd.read_csv(run_whole / "predictions.csv"), pd.read_csv(run / "predictions.csv")
        pd.testing.assert_frame_equal(pb, pa, rtol=0, atol=1e-6)
        ma, mb = (json.loads((x / "metrics.json").read_text()) for x in (run_whole, run))
        for split in ("val", "test"):
            eq(sorted(mb[split]), sorted(ma[split]))
            for key, v in ma[split].items():
                if isinstance(v, float): assert abs(mb[split][key] - v) <= 1e-6, (split, key, mb[split][key], v)
        eq([f["epochs"] for f in mb["folds"]], [5, 5, 5])
    finally:
        for p in (whole, killed):
            if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)

def test_walk_forward_resume_after_every_fold_finished(tmp_path, monkeypatch):
    "Killed after its last fold but before the run's own files: every fold kept (one rebuilt from its checkpoint), equal results."
    import pandas as pd
    from qtnb.datasets import random_walk
    from qtnb.pipeline import train
    ini = (ROOT / "settings.ini").read_text().replace("early_stopping_patience = 10", "early_stopping_patience = 2")
    (tmp_path / "settings.ini").write_text(ini.replace("device = auto", "device = cpu"))
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "settings.ini"))
    random_walk(1500).to_csv(tmp_path / "rw.csv")
    kw = dict(data=str(tmp_path / "rw.csv"), model="mlp", model_params={"hidden_sizes": [8]}, seq_len=8, epochs=8,
              batch_size=32, validation="walk_forward", n_folds=3, runs_dir=str(tmp_path / "runs"))
    run = train(verbose=False, **kw).run
    pred, metrics = pd.read_csv(run.path / "predictions.csv"), json.loads((run.path / "metrics.json").read_text())
    assert any(f["best_epoch"] != f["epochs"] for f in metrics["folds"])   # a fold ended on weights older than its last epoch
    for f in ("predictions.csv", "metrics.json"): (run.path / f).unlink()
    run.set_status("interrupted")
    folds = fold_dirs(run.path)
    (folds[1] / "predictions.csv").unlink()             # fold 1 also died before writing its predictions
    times = {k: (f / "history.csv").stat().st_mtime_ns for k, f in folds.items()}
    train(verbose=False, run_id=run.id, resume=True, **kw)
    eq({k: (f / "history.csv").stat().st_mtime_ns for k, f in folds.items()}, times)      # no fold trained again
    pd.testing.assert_frame_equal(pd.read_csv(run.path / "predictions.csv"), pred, rtol=0, atol=1e-9)
    got = json.loads((run.path / "metrics.json").read_text())
    for split in ("val", "test"):
        for k, v in metrics[split].items():
            if isinstance(v, float): assert abs(got[split][k] - v) <= 1e-9, (split, k)
    eq(status(run.path)["state"], "completed")
    assert (run.path / "checkpoints" / "best.pt").is_file()  # the last fold's model, kept as the run's
