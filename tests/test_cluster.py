"""Sweeps and tuner workers on a Dask cluster: a LocalCluster of 2 worker processes started here, and `dask scheduler`
/ `dask worker` processes on loopback driven through the `qtnb` command. Every run is present, no trial is lost and
none is beyond n_trials; a worker killed mid-study leaves the study to complete its budget."""
import json, os, signal, socket, subprocess, sys, time
from pathlib import Path

import optuna
import pytest
from fastcore.test import test_eq as eq
from optuna.trial import TrialState

from conftest import require

from distributed import Client, LocalCluster

from qtnb.config import DataConfig
from qtnb.datasets import planted
from qtnb.runs import Run
from qtnb.tuner import SearchSpace, Tuner, trial_counts

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DC = DataConfig(data="synthetic:planted", seq_len=8, cache=False)
TRAIN = dict(num_epochs=3, batch_size=64, early_stopping_patience=0)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1") as c:
        yield c


def check_budget(study: optuna.Study, n: int, runs_dir: Path):
    "Exactly n complete trials, none running; each complete trial's run completed."
    c = trial_counts(study)
    eq((c["complete"], c["finished"], c["running"], c["waiting"]), (n, n, 0, 0))
    for t in study.trials:
        if t.state == TrialState.COMPLETE: eq(Run(runs_dir / t.user_attrs["run_id"]).status["state"], "completed")


def test_a_study_on_a_local_cluster_with_a_worker_killed(cluster, tmp_path):
    runs = tmp_path / "runs"
    tuner = Tuner(SearchSpace(model="mlp").log_uniform("learning_rate", 1e-3, 3e-2), "val_loss", data=DC, frame=planted(500),
                  train=TRAIN, study_name="dask", sampler="random", pruner="none", seed=0, runs_dir=runs,
                  heartbeat_interval=1, grace_period=3)
    client = Client(cluster, set_as_default=False)
    pids = sorted(client.run(os.getpid).values())
    killed = []

    def kill_one():   # a worker process dies mid-study (kill -9): the nanny starts a new one, Dask reruns its task
        deadline = time.time() + 120
        while time.time() < deadline and len(list(runs.glob("*-dask-t*"))) < 3: time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL); killed.append(pids[0])
    import threading
    th = threading.Thread(target=kill_one, daemon=True); th.start()
    study = tuner.optimize(12, workers=2, scheduler=client)
    th.join(timeout=5)
    client.close()
    assert killed, "the worker was not killed"
    check_budget(study, 12, runs)
    for p in runs.glob("*-dask-t*"):   # the killed worker's run reads as interrupted, never running
        assert Run(p).status["state"] != "running", (p.name, Run(p).status)


def test_a_sweep_on_a_local_cluster(cluster, tmp_path):
    from qtnb.pipeline import sweep
    runs = tmp_path / "runs"
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "seed": [0, 1]}
    table, folder = sweep("train", grid, {"data": "synthetic:random_walk", "seq_len": 8, "epochs": 1, "model": "linear"},
                          runs_dir=runs, scheduler=cluster.scheduler_address)
    eq(len(table), 8)
    eq(sorted(table["sweep_state"]), ["completed"] * 8)
    got = {(r["lr"], r["seed"]) for _, r in table.reset_index().iterrows()}
    eq(got, {(a, b) for a in grid["lr"] for b in grid["seed"]})
    eq(len(json.loads((folder / "sweep.json").read_text())["runs"]), 8)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_qtnb_command_on_dask_scheduler_and_worker_processes(tmp_path):
    dask = BIN / "dask"
    require(dask.exists(), "the dask command is not installed (pip install 'qtnb[dask]')")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]
    try:
        Client(addr, timeout=60, set_as_default=False).close()   # the scheduler is up
        procs.append(subprocess.Popen([str(dask), "worker", addr, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                                       "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                      start_new_session=True, cwd=ROOT))
        runs = tmp_path / "runs"
        r = subprocess.run([str(BIN / "qtnb"), "run", "tune", "-q", "-p", "data", "synthetic:planted", "-p", "model", "mlp",
                            "-p", "seq_len", "8", "-p", "epochs", "2", "-p", "sampler", "random", "-p", "pruner", "none",
                            "-p", "study_name", "cli", "-p", "n_trials", "6", "-p", "workers", "2", "--scheduler", addr,
                            "--runs-dir", str(runs)], capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        url = json.loads((runs / "studies" / "cli" / "study.json").read_text())["storage"]
        from qtnb.tuner import StorageSpec
        study = optuna.load_study(study_name="cli", storage=StorageSpec(url).open())
        check_budget(study, 6, runs)
        r = subprocess.run([str(BIN / "qtnb"), "sweep", "train", "-g", "lr", "1e-3,1e-2", "-p", "data", "synthetic:random_walk",
                            "-p", "seq_len", "8", "-p", "epochs", "1", "-p", "model", "linear", "--scheduler", addr,
                            "--runs-dir", str(runs)], capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        r = subprocess.run([str(BIN / "qtnb"), "sweep", "train", "-g", "lr", "1e-3,1e-2", "--scheduler", "tcp://127.0.0.1:1",
                            "--runs-dir", str(runs)], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        eq(r.returncode, 2)
        assert "cannot be reached" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    finally:
        for p in reversed(procs):
            try: os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError: pass
        for p in procs:
            try: p.wait(timeout=30)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
