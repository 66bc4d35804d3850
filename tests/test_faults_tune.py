"""Faults during `qtnb run tune` (signals at random points: test_faults_tune_kill.py): damaged
study files, a study whose `workers` change, reproducibility, parallel launches of one study and study names that are
not slugs. After each fault no run says `running` without a live process, the study opens, the dashboard serves it,
and the same command again completes the budget with exactly n_trials complete trials."""
import json, signal, subprocess, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import yaml
from fastcore.test import test_eq as eq
from optuna.trial import TrialState

from qtnb.runs import Run
from qtnb.tuner import SearchSpace, Tuner
from tune_faults import (QTNB, REPO, STUDY, budget_complete, dashboard_serves, no_ghosts, open_study, run, run_dirs,
                         trial_runs, tune_cmd)

pytestmark = pytest.mark.slow   # each case runs `qtnb run tune` (a kernel, trials, sometimes 4 workers) once or twice


# --- damaged study files ------------------------------------------------------------------------------------------------

def _one_line_error(r, code, text):
    eq(r.returncode, code)
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("qtnb:")]
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in r.stderr, r.stderr[-3000:]


def _study_in(runs: Path, storage: str, name=STUDY, n=2):
    "A small study of plain trials in `storage`, recorded in run store `runs` (as a tune run would leave it)."
    t = Tuner(SearchSpace().uniform("x", 0, 1), lambda p, tr: p["x"], study_name=name, storage=storage, runs_dir=runs,
              sampler="random", pruner="none", seed=0)
    t.optimize(n)
    return t


def _dashboard_cmd(*args):
    "`qtnb dashboard ARGS --port 0`: (exit code, stderr) when it refuses, else the study names it serves (then stopped)."
    p = subprocess.Popen([QTNB, "dashboard", *map(str, args), "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("optuna-dashboard: http://127.0.0.1:"):
            p.wait(timeout=60)
            return p.returncode, p.stderr.read()
        got = json.loads(urllib.request.urlopen(line.split()[1].replace("/dashboard/", "/api/studies"), timeout=30).read())
        return sorted(s["study_name"] for s in got["study_summaries"])
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try: p.wait(timeout=30)
            except subprocess.TimeoutExpired: p.kill(); raise


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_damaged_study_storage_is_a_one_line_error_and_the_rest_is_served(tmp_path, kind):
    runs = tmp_path / "runs"
    path = runs / ("optuna.db" if kind == "sqlite" else f"{STUDY}.journal")
    _study_in(runs, f"sqlite:///{path}" if kind == "sqlite" else str(path))
    _study_in(runs, str(runs / "other.journal"), name="other")                       # a healthy study beside it
    damaged = b"\x00" * 100 + path.read_bytes()[100:] if kind == "sqlite" else path.read_bytes().replace(b"\n", b"\n!garbage\n", 1)
    path.write_bytes(damaged)
    before = {p.name for p in runs.iterdir()}
    r = run(tune_cmd(runs))
    _one_line_error(r, 2, str(path))                                                 # found before a kernel starts
    eq(path.read_bytes(), damaged); eq({p.name for p in runs.iterdir()}, before)     # nothing written, nothing changed
    code, err = _dashboard_cmd("--storage", path)
    eq(code, 2); assert "cannot be read" in err or "damaged" in err, err
    eq(_dashboard_cmd("--runs-dir", runs), ["other"])                                # the run store's other study is served
    no_ghosts(runs)


def test_torn_journal_tail_is_cut_and_the_study_continues(tmp_path):
    runs = tmp_path / "runs"
    r = run(tune_cmd(runs, n=2))
    assert r.returncode == 0, r.stderr[-3000:]
    journal = runs / "optuna.journal"
    before = {t.number: t.params for t in open_study(runs).trials}
    with open(journal, "ab") as f: f.write(b'{"op_code": 6, "worker_id": "x", "trial_id": 1, "st')   # a killed append
    dashboard_serves(runs)
    r = run(tune_cmd(runs))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    st = budget_complete(runs)
    eq({t.number: t.params for t in st.trials if t.number in before}, before)
    assert (runs / "optuna.journal.torn").read_bytes().startswith(b'{"op_code": 6')
    no_ghosts(runs)


def test_a_trial_whose_process_died_before_it_recorded_itself_is_retried(tmp_path):
    "A kill between Optuna creating a trial and the trial recording its process leaves a RUNNING trial with no process and no"
    " heartbeat; the next command retries it within seconds (it once waited for it forever)."
    runs = tmp_path / "runs"
    r = run(tune_cmd(runs, n=1, workers=4))
    assert r.returncode == 0, r.stderr[-3000:]
    orphan = open_study(runs).ask()                 # what the killed process left: RUNNING, nothing else
    time.sleep(11)                                  # older than the claim's orphan age
    t0 = time.time()
    r = run(tune_cmd(runs, n=3, workers=4), timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert time.time() - t0 < 100
    st = budget_complete(runs, n=3)
    eq(st.trials[orphan.number].state, TrialState.FAIL)


def test_damaged_study_record_is_a_one_line_error(tmp_path):
    runs = tmp_path / "runs"
    rec = runs / "studies" / STUDY / "study.json"
    rec.parent.mkdir(parents=True); rec.write_text('{"storage": ')
    _one_line_error(run(tune_cmd(runs)), 2, str(rec))
    eq(rec.read_text(), '{"storage": ')


# --- one study, one storage ------------------------------------------------------------------------------------------

def test_changing_workers_keeps_one_study_in_one_storage(tmp_path):
    runs = tmp_path / "runs"
    for n, w in ((2, 1), (4, 4), (5, 1)):
        r = run(tune_cmd(runs, n=n, workers=w))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    url = json.loads((runs / "studies" / STUDY / "study.json").read_text())["storage"]
    eq(url, f"journal:{runs.resolve()}/optuna.journal")
    tune_runs = set(run_dirs(runs)) - set(trial_runs(runs))
    eq(len(tune_runs), 3)
    for p in tune_runs:                    # params.yaml and metrics.json name the same storage, every time
        eq(yaml.safe_load((p / "params.yaml").read_text())["study"]["storage"], url)
        eq(json.loads((p / "metrics.json").read_text())["study"]["storage"], url)
    assert not (runs / "optuna.db").exists()
    budget_complete(runs, n=5)


def test_a_study_begun_in_sqlite_is_continued_there(tmp_path):
    "A study qtnb put in optuna.db before storages were recorded is found there and continued, not forked."
    runs = tmp_path / "runs"
    runs.mkdir()
    old = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{runs}/optuna.db")
    old.enqueue_trial({"learning_rate": 1e-3, "dropout": 0.125}); del old
    r = run(tune_cmd(runs, n=2))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    eq(json.loads((runs / "studies" / STUDY / "study.json").read_text())["storage"], f"sqlite:///{runs.resolve()}/optuna.db")
    st = budget_complete(runs, n=2)
    eq(st.trials[0].params["dropout"], 0.125)
    assert not (runs / "optuna.journal").exists()
    r = run(tune_cmd(runs, n=3, workers=2))                     # SQLite cannot take parallel writers: said in one line
    _one_line_error(r, 2, "database is locked")


@pytest.mark.parametrize("name", ["../../../x", "/tmp/qtnb-abs-study", "a/b", "..", "x y"])
def test_study_names_that_are_not_slugs_are_refused_before_anything_is_written(tmp_path, name):
    runs = tmp_path / "deep" / "er" / "runs"
    cmd = tune_cmd(runs)
    cmd[cmd.index(STUDY)] = name
    _one_line_error(run(cmd), 2, "study_name")
    eq(run_dirs(runs), [])
    assert not (runs / "studies").exists() and not (tmp_path / "x").exists() and not Path("/tmp/qtnb-abs-study").exists()


# --- reproducible tuning ------------------------------------------------------------------------------------------------

def _trials(runs: Path):
    return [(t.number, t.state.name, t.params, t.value) for t in open_study(runs).trials]


def test_the_same_command_twice_gives_identical_trials(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda r: run(tune_cmd(r, n=3)), (a, b)))
    for r in outs: assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    ta, tb = _trials(a), _trials(b)
    eq(len(ta), 3); eq(ta, tb)
    eq(len({json.dumps(t[2], sort_keys=True) for t in ta}), 3)


def test_a_one_point_space_gives_one_value_in_every_process(tmp_path):
    "The first trial of each process used to differ (its model was built before seeding): here 4 trials, 2 workers, 1 value."
    runs = tmp_path / "runs"
    space = '{"learning_rate": {"type": "categorical", "choices": [0.003]}}'
    r = run(tune_cmd(runs, "-p", "search_space", space, workers=2))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    st = budget_complete(runs)
    values = [t.value for t in st.trials]
    pids = {Run(runs / t.user_attrs["run_id"]).status.get("pid") for t in st.trials}
    assert len(pids) == 2, pids            # both workers ran trials, each its own first
    eq(len(set(values)), 1)


def test_two_parallel_launches_never_repeat_a_point(tmp_path):
    "Two `qtnb run tune` of one study at once, on a grid with one point per trial: every point once."
    runs = tmp_path / "runs"
    lrs = [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    space = json.dumps({"learning_rate": {"type": "categorical", "choices": lrs}})
    grid = tune_cmd(runs, "-p", "search_space", space, n=len(lrs))
    grid[grid.index("random")] = "grid"
    rnd = tune_cmd(tmp_path / "rnd", n=6)
    rnd[rnd.index(STUDY)] = "random-pair"
    def launch(i_cmd):   # a second apart: kernels started in the same instant can draw the same free port (jupyter_client)
        time.sleep(1.5 * i_cmd[0]); return run(i_cmd[1])
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(launch, enumerate([grid, grid, rnd, rnd])))
    for r in outs: assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    st = budget_complete(runs, n=len(lrs))
    eq(sorted(t.params["learning_rate"] for t in st.trials), lrs)
    pts = [json.dumps(t.params, sort_keys=True) for t in open_study(tmp_path / "rnd", "random-pair").trials]
    eq(len(pts), 6); eq(len(set(pts)), 6)   # seeds per trial number: the two launches do not replay each other's draws
