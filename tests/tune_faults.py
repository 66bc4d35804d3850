"""What the fault tests of `qtnb run tune` share: the command, its run store and study, and what must hold after a fault."""
import json, random, subprocess, sys, time, urllib.request
from pathlib import Path

import optuna
import psutil
from fastcore.test import test_eq as eq
from optuna.trial import TrialState

from qtnb.runs import Run, process_alive
from qtnb.tuner import StorageSpec, start_dashboard, trial_counts

QTNB = str(Path(sys.executable).parent / "qtnb")
REPO = Path(__file__).resolve().parents[1]
N = 4
STUDY = "faults"


def tune_cmd(runs, *extra, n=N, workers=1):
    return [QTNB, "run", "tune", "-q", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "seq_len", "8",
            "-p", "num_epochs", "2", "-p", "sampler", "random", "-p", "pruner", "none", "-p", "seed", "0",
            "-p", "study_name", STUDY, "-p", "n_trials", str(n), "-p", "workers", str(workers), *map(str, extra), "--runs-dir", str(runs)]


def run(cmd, timeout=400):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_dirs(runs: Path):
    return [p for p in runs.iterdir() if (p / "status.json").is_file()] if runs.is_dir() else []


def trial_runs(runs: Path):
    return [p for p in run_dirs(runs) if f"-{STUDY}-t" in p.name]


def seen_state(path: Path) -> str:
    "The state a reader reports: qtnb.runs reports `interrupted` for a running run whose recorded process is gone."
    st = Run(path).status
    if st.get("state") == "running" and process_alive(st) is False: return "interrupted"
    return st.get("state")


def no_ghosts(runs: Path):
    "No run says `running` unless its recorded process is alive (a run with no process record that says running is a ghost)."
    ghosts = [(p.name, Run(p).status) for p in run_dirs(runs) if seen_state(p) == "running" and process_alive(Run(p).status) is not True]
    assert not ghosts, ghosts


def open_study(runs: Path, name=STUDY) -> optuna.Study:
    url = json.loads((runs / "studies" / name / "study.json").read_text())["storage"]
    return optuna.load_study(study_name=name, storage=StorageSpec(url).open())


def dashboard_serves(runs: Path, name=STUDY):
    "The run store's dashboard on a free loopback port lists the study."
    url = start_dashboard(runs_dir=runs, port=0, background=True)
    try:
        assert url.startswith("http://127.0.0.1:"), url
        got = json.loads(urllib.request.urlopen(url.replace("/dashboard/", "/api/studies"), timeout=30).read())
        assert name in [s["study_name"] for s in got["study_summaries"]], got
    finally: url.stop()


def budget_complete(runs: Path, n=N):
    "Exactly n complete trials, none running, every complete trial's run completed with a best checkpoint, every failed one's run ended."
    st = open_study(runs)
    trials = st.get_trials(deepcopy=False)
    seen = [(t.number, t.state.name, t.user_attrs.get("fail_reason"), t.system_attrs.get("failed_trial"),
             t.system_attrs.get("retry_history")) for t in trials]
    assert trial_counts(st)["complete"] == n, (trial_counts(st), seen)
    eq(trial_counts(st)["finished"], n)
    eq([t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], [])
    for t in trials:
        path = runs / t.user_attrs["run_id"] if "run_id" in t.user_attrs else None
        if t.state == TrialState.COMPLETE:
            eq(Run(path).status["state"], "completed")
            assert (path / "checkpoints" / "best.pt").is_file(), path
        elif path is not None and path.is_dir():
            # "completed": the signal came after the trial's run finished but before Optuna recorded the trial; the
            # trial is failed and retried with the same parameters, so the budget still counts it once
            assert Run(path).status["state"] in ("interrupted", "failed", "stopped", "completed"), (t.number, Run(path).status)
    for p in trial_runs(runs): assert Run(p).status["state"] != "running", (p.name, Run(p).status)   # trial runs: written, not inferred
    return st


def kill_at_random_point(cmd, runs: Path, sig, target: str, seed: int):
    "Start `cmd`, wait for a random number of trial runs and a random delay, send `sig` to the command (or its whole tree)."
    rng = random.Random(seed)
    k, delay = rng.randint(1, N - 1), rng.uniform(0.0, 1.5)
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while len(trial_runs(runs)) < k:
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
        assert time.time() < deadline, f"no {k} trial runs after 300 s"
        time.sleep(0.05)
    time.sleep(delay)
    top = psutil.Process(p.pid)
    procs = [top] + top.children(recursive=True)
    for q in (procs if target == "tree" else procs[:1]):
        try: q.send_signal(sig)
        except psutil.NoSuchProcess: pass
    _, alive = psutil.wait_procs(procs, timeout=90)   # nothing the command started keeps running (no orphan workers)
    survivors = [(q.pid, q.cmdline()[-3:]) for q in alive if q.is_running()]
    for q in alive: q.kill()
    p.wait(timeout=30)
    assert not survivors, survivors
    return p.stdout.read().decode()
