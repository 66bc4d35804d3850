"""Tuner storage under stress: kill -9 mid-trial and rerun, 4 worker processes on one study (journal file and
PostgreSQL), optuna-dashboard reading qtnb's study."""
import io, json, os, shutil, signal, socket, subprocess, sys, tempfile, textwrap, time
from glob import glob
from pathlib import Path

import optuna
import pytest
from fastcore.test import test_eq as eq
from optuna.trial import TrialState

from conftest import require
from qtnb.errors import ConfigError
from qtnb.tuner import SearchSpace, Tuner, trial_counts, storage_spec

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def slow_square(params, trial):
    "A plain objective that takes a little while (importable, so spawned workers can run it)."
    trial.set_user_attr("pid", os.getpid())
    if trial.number == 0:   # hold the first trial until a second worker has taken one, however slowly workers start
        deadline = time.time() + 60
        while time.time() < deadline and len({t.user_attrs.get("pid") for t in trial.study.get_trials(deepcopy=False)} - {None}) < 2:
            time.sleep(0.05)
    for step in range(3):
        time.sleep(0.05)
        trial.report(params["x"] ** 2, step)
    return params["x"] ** 2


def space():
    return SearchSpace().uniform("x", -3, 3)


# --- crash: kill -9 mid-trial, rerun the same command ---------------------------------------------------------------

CRASH_SCRIPT = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from qtnb.tuner import SearchSpace, Tuner
    folder = Path(sys.argv[1])
    marker = folder / "trial3.started"

    def objective(params, trial):
        if trial.number == 3 and not marker.exists():   # the first run is killed inside this trial
            marker.write_text("x")
            time.sleep(60)
        time.sleep(0.05)
        return (params["x"] - 1) ** 2

    tuner = Tuner(SearchSpace().uniform("x", -3, 3), objective, study_name="crash", sampler="random", pruner="none", seed=0,
                  storage=sys.argv[2], runs_dir=folder, heartbeat_interval=1, grace_period=2)
    tuner.optimize(6)
    print("DONE", flush=True)
''')


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_kill_9_mid_trial_then_rerun_finishes_the_study(tmp_path, kind):
    script = tmp_path / "tune.py"
    script.write_text(CRASH_SCRIPT)
    storage = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else str(tmp_path / "optuna.journal")
    cmd = [PY, str(script), str(tmp_path), storage]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not (tmp_path / "trial3.started").exists():
        assert p.poll() is None, p.stdout.read().decode()
        assert time.time() < deadline, "trial 3 never started"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    st = optuna.load_study(study_name="crash", storage=storage_spec(storage).open())
    before = {t.number: t.value for t in st.trials if t.state == TrialState.COMPLETE}
    eq(sorted(before), [0, 1, 2])
    eq(st.trials[3].state, TrialState.RUNNING)             # stuck, as Optuna leaves it

    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)   # the same command again
    assert out.returncode == 0 and "DONE" in out.stdout, out.stdout + out.stderr
    st = optuna.load_study(study_name="crash", storage=storage_spec(storage).open())
    trials = st.trials
    eq({t.number: t.value for t in trials if t.number in before}, before)   # complete trials kept as they were
    eq(trials[3].state, TrialState.FAIL)                                     # the stale trial is failed ...
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 3]
    eq(len(retries), 1); eq(retries[0].state, TrialState.COMPLETE)           # ... and retried with its parameters
    eq(retries[0].params, trials[3].params)
    eq(trial_counts(st)["finished"], 6)                                      # the study reaches its n_trials
    eq(sum(t.state == TrialState.RUNNING for t in trials), 0)
    stats = json.loads((tmp_path / "studies" / "crash" / "statistics.json").read_text())
    eq(stats["finished"], 6); eq(stats["retried"], 1)


# --- 4 worker processes on one study ---------------------------------------------------------------------------------

def _check_workers(tuner, study, n):
    trials = study.trials
    eq(trial_counts(study)["finished"], n)
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state, t.user_attrs) for t in trials]
    eq([t.number for t in trials], list(range(len(trials))))
    pids = {t.user_attrs["pid"] for t in trials}
    assert len(pids) >= 2, f"trials ran in one process, not in workers: {pids}"
    assert os.getpid() not in {t.user_attrs["pid"] for t in trials}


def test_four_workers_share_a_journal_study(tmp_path, monkeypatch, capfd):
    ini = tmp_path / "settings.ini"
    ini.write_text(f"[storage]\nruns_dir = {tmp_path}/runs\nstudy_storage = sqlite:///{tmp_path}/runs/optuna.db\n")
    monkeypatch.setenv("QTNB_SETTINGS", str(ini))
    tuner = Tuner(space(), slow_square, study_name="four", sampler="tpe", pruner="none", seed=0)
    study = tuner.optimize(24, workers=4)
    assert tuner.storage.url == f"journal:{tmp_path}/runs/optuna.journal"   # settings.ini's SQLite, shared as a journal
    _check_workers(tuner, study, 24)
    out = capfd.readouterr()
    assert "database is locked" not in out.out + out.err
    # and a rerun with one process sees the same study, adds nothing
    eq(trial_counts(tuner.optimize(24, workers=4))["finished"], 24)


# --- PostgreSQL for many machines ------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    initdb = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    require(bool(initdb) or bool(shutil.which("initdb")), "PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg2")
    bindir = Path(initdb[-1]).parent if initdb else Path(shutil.which("initdb")).parent
    home = Path(tempfile.mkdtemp(prefix="qtnb-pg-"))
    os.chmod(home, 0o777)
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []   # postgres refuses to run as root
    run = lambda *a: subprocess.run(as_user + [str(x) for x in a], cwd=home, check=True, capture_output=True, text=True)
    data, port = home / "data", _free_port()
    run(bindir / "initdb", "-D", data, "-U", "qtnb", "--auth=trust", "-E", "UTF8")
    run(bindir / "pg_ctl", "-D", data, "-l", home / "log", "-w", "-t", "60", "start",
        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "qtnb", "optuna")
        yield f"postgresql+psycopg2://qtnb@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], cwd=home, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_four_workers_on_postgresql(postgres, tmp_path):
    tuner = Tuner(space(), slow_square, study_name="pg", sampler="tpe", pruner="none", seed=0, storage=postgres, runs_dir=tmp_path)
    study = tuner.optimize(16, workers=4)
    _check_workers(tuner, study, 16)
    # another machine would open the same URL: the study is there with every trial
    other = optuna.load_study(study_name="pg", storage=postgres)
    eq(len(other.trials), len(study.trials))
    assert tuner.storage.is_sqlite is False and "postgresql" in json.loads((tmp_path / "studies" / "pg" / "statistics.json").read_text())["storage"]


MACHINE_SCRIPT = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from optuna.trial import TrialState
    from qtnb.tuner import SearchSpace, Tuner
    storage, runs, reps, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def objective(params, trial):   # the two processes end their trials together, so both count the budget at once
        trial.set_user_attr("pid", os.getpid())
        deadline = time.time() + 1
        while time.time() < deadline and len(trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) < 2:
            time.sleep(0.005)
        return params["x"] ** 2

    me, other = Path(runs + ".ready"), Path(sys.argv[5] + ".ready")   # start together: both imported, then go
    me.write_text("x")
    while not other.exists(): time.sleep(0.01)
    for rep in range(reps):   # both "machines" go through the same studies, each with a run store of its own
        Tuner(SearchSpace().uniform("x", -3, 3), objective, study_name=f"budget{rep}", sampler="random", pruner="none",
              storage=storage, runs_dir=runs).optimize(n, write_outputs=False)
''')


def test_two_machines_on_one_postgresql_study_keep_its_budget(postgres, tmp_path):
    "Two tuner processes with run stores of their own (as two machines have) share a PostgreSQL study: exactly n_trials, 10 times."
    script, reps, n = tmp_path / "machine.py", 10, 5   # odd: the last trial is the one both would start
    script.write_text(MACHINE_SCRIPT)
    procs = [subprocess.Popen([PY, str(script), postgres, str(tmp_path / f"runs{i}"), str(reps), str(n),
                              str(tmp_path / f"runs{1 - i}")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    shared = 0
    for rep in range(reps):
        study = optuna.load_study(study_name=f"budget{rep}", storage=postgres)
        eq((rep, trial_counts(study)["complete"], len(study.trials)), (rep, n, n))
        shared += len({t.user_attrs.get("pid") for t in study.trials}) == 2
    assert shared >= reps // 2, f"the two processes shared only {shared} of {reps} studies: the race was not run"


def test_sqlite_url_with_workers_is_refused(tmp_path):
    # qtnb's own refusal, before any worker starts: not SQLite's error from two processes writing at once
    with pytest.raises(ConfigError, match=r"lives in SQLite .*which 2 worker processes cannot share") as info:
        Tuner(space(), slow_square, storage=f"sqlite:///{tmp_path}/x.db", runs_dir=tmp_path).optimize(4, workers=2)
    assert info.value.__cause__ is None and "\n" not in str(info.value), info.value
    eq(list(tmp_path.glob("*.journal")), [])


# --- optuna-dashboard ------------------------------------------------------------------------------------------------

def _get(app, path):
    status = {}
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    body = b"".join(app(env, lambda s, h, exc=None: status.setdefault("s", s)))
    assert status["s"].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def run_id_objective(params, trial):
    trial.set_user_attr("run_id", f"20260101-000000-demo-{trial.number:04x}")
    return params["x"] ** 2


def test_dashboard_lists_the_study_and_trial_run_ids(tmp_path):
    import optuna_dashboard
    from qtnb.tuner import dashboard_storage, start_dashboard
    import urllib.request
    tuner = Tuner(space(), run_id_objective, study_name="dash", sampler="random", pruner="none",
                  storage=f"sqlite:///{tmp_path}/optuna.db", runs_dir=tmp_path)
    tuner.optimize(3)
    app = optuna_dashboard.wsgi(dashboard_storage(tuner.storage.url))
    studies = _get(app, "/api/studies")["study_summaries"]
    eq([s["study_name"] for s in studies], ["dash"])
    detail = _get(app, f"/api/studies/{studies[0]['study_id']}")
    runs = [{a["key"]: a["value"] for a in t["user_attrs"]}["run_id"] for t in detail["trials"]]
    eq(runs, [f"20260101-000000-demo-{i:04x}" for i in range(3)])
    # the same through a real server on loopback
    url = start_dashboard(tuner.storage.url, port=0, background=True)
    try:
        assert url.startswith("http://127.0.0.1:")
        got = json.loads(urllib.request.urlopen(url.replace("/dashboard/", "/api/studies"), timeout=10).read())
        eq([s["study_name"] for s in got["study_summaries"]], ["dash"])
    finally: url.stop()


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_the_tuner_panel_serves_its_study_on_the_one_dashboard(tmp_path, kind):
    "TunerPanel's button starts qtnb.tuner's start_dashboard for the open study (an RDB one by URL, a journal by its storage)."
    import urllib.request
    from qtnb.widgets import TunerPanel
    where = f"sqlite:///{tmp_path}/optuna.db" if kind == "sqlite" else tmp_path / "optuna.journal"
    tuner = Tuner(space(), run_id_objective, study_name="panel", sampler="random", pruner="none", storage=where, runs_dir=tmp_path)
    tuner.optimize(2)
    url = TunerPanel(tuner, mode="text").open_dashboard()
    try:
        assert url.startswith("http://127.0.0.1:")
        got = json.loads(urllib.request.urlopen(url.replace("/dashboard/", "/api/studies"), timeout=10).read())
        eq([s["study_name"] for s in got["study_summaries"]], ["panel"])
    finally: url.stop()


def test_qtnb_dashboard_command_serves_the_study(tmp_path):
    "`qtnb dashboard` on a free loopback port lists the study and its trials' run ids, and stops on SIGINT."
    import signal, urllib.request
    tuner = Tuner(space(), run_id_objective, study_name="cli-dash", sampler="random", pruner="none",
                  storage=f"sqlite:///{tmp_path}/optuna.db", runs_dir=tmp_path)
    tuner.optimize(2)
    qtnb = Path(sys.executable).parent / "qtnb"
    p = subprocess.Popen([str(qtnb), "dashboard", "--storage", tuner.storage.url, "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("optuna-dashboard: http://127.0.0.1:"), line + (p.stdout.read() if p.poll() is not None else "")
        base = line.split()[1].replace("/dashboard/", "")
        got = json.loads(urllib.request.urlopen(base + "/api/studies", timeout=20).read())
        eq([s["study_name"] for s in got["study_summaries"]], ["cli-dash"])
        detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/{got['study_summaries'][0]['study_id']}", timeout=20).read())
        eq(sorted({a["key"]: a["value"] for a in t["user_attrs"]}["run_id"] for t in detail["trials"]),
           [f"20260101-000000-demo-{i:04x}" for i in range(2)])
    finally:
        p.send_signal(signal.SIGINT)
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill(); raise
    eq(p.returncode, 0)


SECOND_SIGNAL = textwrap.dedent('''
    import os, signal, sys
    import optuna
    import qtnb.tuner as T
    from optuna.trial import TrialState
    storage = T.StorageSpec(sys.argv[1]).open()
    study = optuna.create_study(storage=storage, study_name="second")
    def objective(trial):
        trial.suggest_float("x", 0, 1)
        raise KeyboardInterrupt          # the first signal, mid-trial
    import qtnb.tuner.storage as S       # where fail_trial looks it up
    marked = S.mark_interrupted
    def mark_and_signal(*a):             # a second one while the trial is being failed (a parent forwarding its own)
        os.kill(os.getpid(), signal.SIGINT)
        return marked(*a)
    S.mark_interrupted = mark_and_signal
    try: T.run_trials(study, objective, 1)
    except KeyboardInterrupt: pass
    print(sorted(t.state.name for t in study.trials))
''')


def test_a_second_signal_while_a_trial_is_failed_still_queues_its_retry(tmp_path):
    "A worker told to stop twice (SIGINT, then its parent's SIGINT) leaves its trial failed and queued again, never failed alone."
    script = tmp_path / "second.py"
    script.write_text(SECOND_SIGNAL)
    r = subprocess.run([PY, str(script), f"sqlite:///{tmp_path}/s.db"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    eq(r.stdout.strip().splitlines()[-1], "['FAIL', 'WAITING']")
