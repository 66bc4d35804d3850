"""DDP training (qtnb.distributed) in real torchrun processes on CPU (gloo): the same numbers as one process, one run
folder, an exact resume after kill -9 of a rank, and a failing rank failing the run with nothing left running."""
import json, os, platform, signal, subprocess, sys, time, zlib
from pathlib import Path

import pytest
from fastcore.test import test_close as close, test_eq as eq

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
QTNB = str(Path(sys.executable).parent / "qtnb")
MODEL = {"hidden_sizes": [16], "dropout": 0.0}
PARAMS = dict(data="synthetic:random_walk", model="mlp", model_params=MODEL, epochs=4, batch_size=64, seed=7)
CLI = [a for k, v in PARAMS.items() for a in ("-p", k, json.dumps(v) if isinstance(v, dict) else str(v))]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def runs_in(root: Path) -> list[Path]: return sorted(p.parent for p in root.glob("*/status.json"))
def status(run: Path) -> dict: return json.loads((run / "status.json").read_text())
def metrics(run: Path) -> dict: return json.loads((run / "metrics.json").read_text())


def alive(pid: int) -> bool:
    "Whether `pid` is a live process (a zombie waiting for its parent counts as gone)."
    try: state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError): return False
    return state != "Z"


def rank_pids(run: Path) -> list[int]: return [int(p.read_text()) for p in sorted((run / "ddp").glob("rank*.pid"))]


def shm_files() -> list[str]: return sorted(p.name for p in Path("/dev/shm").glob("qtnb-grad-*"))


def numbers(d: dict) -> dict: return {k: v for k, v in d.items() if isinstance(v, float)}


@pytest.fixture(scope="module")
def det_env(tmp_path_factory):
    "The environment of a run in deterministic mode: the project's settings.ini with deterministic = true."
    ini = tmp_path_factory.mktemp("settings") / "settings.ini"
    ini.write_text((REPO / "settings.ini").read_text().replace("[hardware]\n", "[hardware]\ndeterministic = true\n", 1))
    return {**ENV, "QTNB_SETTINGS": str(ini)}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, det_env):
    "A 2-process DDP training run through the CLI, in deterministic mode; the gradient-sum files in /dev/shm before it."
    runs = tmp_path_factory.mktemp("ddp")
    (runs.parent / "shm_before").write_text(json.dumps(shm_files()))
    r = subprocess.run([QTNB, "run", "train", *CLI, "-p", "nproc", "2", "--runs-dir", str(runs)], capture_output=True,
                       text=True, timeout=600, cwd=REPO, env=det_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return runs


def test_two_processes_give_the_single_process_metrics(ddp_run, det_env, tmp_path, monkeypatch):
    from qtnb.pipeline import train
    monkeypatch.setenv("QTNB_SETTINGS", det_env["QTNB_SETTINGS"])
    single = train(**PARAMS, runs_dir=str(tmp_path), verbose=False, monitor=False)    # one process, the same global batch
    [run] = runs_in(ddp_run)                                   # one run folder: rank 0 wrote it, rank 1 nothing of its own
    eq(status(run)["state"], "completed")
    import yaml
    train_cfg = yaml.safe_load((run / "params.yaml").read_text())["train"]
    eq((train_cfg["strategy"], train_cfg["nproc"], train_cfg["deterministic"]), ("ddp", 2, True))
    eq(sorted(p.name for p in (run / "checkpoints").iterdir()), ["best.pt", "last.pt"])
    if sys.platform == "linux" and platform.machine() == "x86_64" and len(os.sched_getaffinity(0)) >= 2:
        assert "2 ranks sum gradients through shared memory" in (run / "ddp" / "torchrun.log").read_text()
        eq(shm_files(), json.loads((ddp_run.parent / "shm_before").read_text()))   # the ranks' file is gone
    got, want = numbers(metrics(run)["test"]), numbers(single.metrics["test"])
    eq(sorted(got), sorted(want))
    for k in want: close(got[k], want[k], eps=1e-5)
    import pandas as pd
    h1, h2 = pd.read_csv(run / "history.csv"), pd.read_csv(single.run_dir / "history.csv")
    close(h1[["train_loss", "val_loss"]].values, h2[["train_loss", "val_loss"]].values, eps=1e-5)


def test_exact_resume_after_kill_9_of_rank_1(ddp_run, det_env, tmp_path):
    epoch = 1 + zlib.crc32(b"test_ddp kill rank 1") % (PARAMS["epochs"] - 1)     # a random epoch, the same on every run
    proc = subprocess.Popen([QTNB, "run", "train", *CLI, "-p", "nproc", "2", "--runs-dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO, env=det_env)
    try:
        events = None
        for _ in range(6000):
            found = list(tmp_path.glob("*/ddp/events.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= epoch: events = found[0]; break
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        assert events is not None, "rank 0 never reported the epoch"
        run = events.parent.parent
        os.kill(int((run / "ddp" / "rank1.pid").read_text()), signal.SIGKILL)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode != 0, out[-2000:]
    st = status(run)
    eq(st["state"], "failed"); eq(st["failed_rank"], 1)
    assert "rank 1" in st["error"] and "SIGKILL" in st["error"], st["error"]
    assert not any(alive(p) for p in rank_pids(run)), "a rank outlived the failed run"
    r = subprocess.run([QTNB, "run", "train", "--resume", run.name, "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=600, cwd=REPO, env=det_env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    eq(status(run)["state"], "completed")
    [ref] = runs_in(ddp_run)
    import pandas as pd
    cols = ["epoch", "train_loss", "val_loss", "lr"]
    eq(pd.read_csv(run / "history.csv")[cols].values.tolist(), pd.read_csv(ref / "history.csv")[cols].values.tolist())
    eq(numbers(metrics(run)["test"]), numbers(metrics(ref)["test"]))       # exact: the uninterrupted run's numbers


def test_a_rank_that_raises_fails_the_run_naming_it(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import ddp_faulty  # noqa: F401  (registers faulty_mlp)
    from qtnb.errors import TrainingError
    from qtnb.runs import create_run
    from qtnb.trainer import Trainer, toy_windows
    run = create_run("faulty", runs_dir=tmp_path)
    t = Trainer({"name": "faulty_mlp", "hidden_sizes": [8], "fail_after": 12}, run=run, strategy="ddp", nproc=2, num_epochs=5,
                batch_size=64, importance=False, device="cpu")
    with pytest.raises(TrainingError, match="in rank 1: TrainingError: training failed at epoch 2: ValueError: injected failure in rank 1"):
        t.fit(toy_windows(600, seed=1), toy_windows(200, seed=2))
    st = run.status
    eq(st["state"], "failed"); eq(st["failed_rank"], 1)
    assert "injected failure in rank 1" in st["error"]
    assert not any(alive(p) for p in rank_pids(Path(run.path))), "a rank outlived the failed run"


def test_two_nodes_meet_through_the_c10d_rendezvous_on_loopback(tmp_path):
    import socket
    from qtnb.distributed import torchrun_command
    from qtnb.runs import create_run
    from qtnb.trainer import Trainer, fit_in_background, toy_windows
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    data = toy_windows(600, seed=1), toy_windows(200, seed=2)
    kw = dict(num_epochs=3, batch_size=64, learning_rate=1e-2, importance=False, early_stopping_patience=0, device="cpu")
    model = {"name": "mlp", "hidden_sizes": [16], "dropout": 0.0}
    one = Trainer(model, **kw).fit(*data, test=data[1])
    run = create_run("nodes", runs_dir=tmp_path)
    node = dict(nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}")
    h = fit_in_background(Trainer(model, run=run, strategy="ddp", **node, **kw), *data, test=data[1])   # the first node
    job = Path(run.path) / "ddp"
    for _ in range(1200):
        if (job / "job.json").is_file() or h.done: break
        time.sleep(0.05)
    other = subprocess.run(torchrun_command(job, rdzv_id=run.id, **node), capture_output=True, text=True, timeout=300,
                           cwd=REPO, env=ENV)                        # the second node runs the command the first prints
    res = h.join(300)
    assert other.returncode == 0, other.stdout[-2000:] + other.stderr[-2000:]
    for k in ("mse", "mae", "corr"): close(res.test_metrics[k], one.test_metrics[k], eps=1e-5)
    eq(run.status["state"], "completed")


def test_a_stop_and_a_pruned_trial_stop_every_rank_after_the_same_epoch_and_a_resume_is_exact(tmp_path):
    import optuna
    from qtnb.callbacks import Callback
    from qtnb.runs import create_run
    from qtnb.trainer import Trainer, fit_in_background, toy_windows
    data = toy_windows(600, seed=1), toy_windows(200, seed=2)
    model = {"name": "mlp", "hidden_sizes": [8], "dropout": 0.3}     # dropout: every rank's random state must come back
    kw = dict(strategy="ddp", nproc=2, num_epochs=30, batch_size=64, importance=False, early_stopping_patience=0, device="cpu")
    ref = Trainer(model, **kw).fit(*data, test=data[1])               # uninterrupted
    run = create_run("stop", runs_dir=tmp_path)                       # a stop through the run's control file (qtnb runs stop)
    h = fit_in_background(Trainer(model, run=run, **kw), *data, test=data[1])
    events = Path(run.path) / "ddp" / "events.jsonl"
    while not (events.is_file() and events.read_text()) and not h.done: time.sleep(0.05)
    run.request("stop")
    res = h.join(300)
    eq(res.state, "stopped"); assert res.epochs < 30
    eq(run.status["state"], "stopped")
    eq(len(run.history), res.epochs)
    done = Trainer(model, run=run, **kw).fit(*data, test=data[1], resume="last")
    cols = ["epoch", "train_loss", "val_loss", "lr"]
    eq(done.history[cols].values.tolist(), ref.history[cols].values.tolist())
    eq(numbers(done.test_metrics), numbers(ref.test_metrics))

    class Prune(Callback):                                       # what a tuner's pruning callback does in the controller
        def on_validation_end(self, trainer, metrics):
            if metrics["epoch"] == 2: raise optuna.TrialPruned("pruned at epoch 2")
    run = create_run("prune", runs_dir=tmp_path)
    with pytest.raises(optuna.TrialPruned):
        Trainer(model, run=run, callbacks=[Prune()], **kw).fit(*data)
    eq(run.status["state"], "pruned")
    assert 2 <= len(run.history) < 30
    assert not any(alive(p) for p in rank_pids(Path(run.path)))


def test_no_rank_outlives_a_controller_killed_with_9(tmp_path):
    "kill -9 of a Python process whose Trainer(strategy='ddp') launched torchrun: the ranks and torchrun end within seconds."
    script = tmp_path / "fit.py"
    script.write_text("from qtnb.runs import create_run\nfrom qtnb.trainer import Trainer, toy_windows\n"
                      f"run = create_run('ddp', runs_dir={str(tmp_path)!r})\n"
                      "Trainer({'name': 'mlp', 'hidden_sizes': [8]}, run=run, strategy='ddp', nproc=2, num_epochs=100000,"
                      " early_stopping_patience=0, batch_size=64,"
                      " importance=False, device='cpu').fit(toy_windows(600, seed=1), toy_windows(200, seed=2))\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=ENV)
    try:
        pids = []
        for _ in range(6000):
            found = list(tmp_path.glob("*/ddp/events.jsonl"))
            if found and found[0].read_text().strip():
                pids = rank_pids(found[0].parent.parent)
                if len(pids) == 2: break
            assert proc.poll() is None, "the fit ended before its first epoch"
            time.sleep(0.05)
        assert len(pids) == 2, "the ranks never started"
        proc.kill(); proc.wait()
        for _ in range(600):
            if not any(alive(p) for p in pids): break
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "a rank outlived its controller"
    finally:
        if proc.poll() is None: proc.kill()


def test_a_pause_through_the_control_file_holds_every_rank_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path):
    from qtnb.runs import create_run
    from qtnb.trainer import Trainer, fit_in_background, toy_windows
    data = toy_windows(600, seed=1), toy_windows(200, seed=2)
    model = {"name": "mlp", "hidden_sizes": [8], "dropout": 0.3}
    kw = dict(strategy="ddp", nproc=2, num_epochs=4, batch_size=64, importance=False, early_stopping_patience=0, device="cpu")
    ref = Trainer(model, **kw).fit(*data, test=data[1])                 # uninterrupted
    run = create_run("pause", runs_dir=tmp_path)
    h = fit_in_background(Trainer(model, run=run, **kw), *data, test=data[1])
    job = Path(run.path) / "ddp"
    events = job / "events.jsonl"
    def wait(cond, what):
        for _ in range(6000):
            if cond(): return
            assert not h.done, f"the fit ended before {what}: {h.join(1)}"
            time.sleep(0.05)
        raise AssertionError(f"never {what}")
    wait(lambda: events.is_file() and events.read_text(), "its first epoch")
    run.request("pause")                                                 # what qtnb runs pause writes
    marks = [job / "rank0.paused", job / "rank1.paused"]
    wait(lambda: all(m.is_file() for m in marks), "every rank paused")
    eq(run.control.get("state"), "paused"); eq(run.status.get("paused"), True)
    held = [m.read_text() for m in marks]
    eq(held[0], held[1])                                                 # both wait after the same epoch
    n = len(events.read_text().splitlines())
    eq(n, int(held[0]))
    time.sleep(1.0)
    eq(len(events.read_text().splitlines()), n); assert not h.done       # no rank went on meanwhile
    eq([m.read_text() for m in marks], held)
    run.request("resume")
    res = h.join(300)
    assert not any(m.exists() for m in marks)
    eq((res.state, run.status["state"]), ("completed", "completed"))
    cols = ["epoch", "train_loss", "val_loss", "lr"]
    eq(res.history[cols].values.tolist(), ref.history[cols].values.tolist())
    eq(numbers(res.test_metrics), numbers(ref.test_metrics))


def test_shared_memory_and_gloo_sum_the_gradients_alike(tmp_path):
    "The Python API's 2-rank fit equals a single-process fit whether shared memory or gloo sums the gradients."
    from qtnb.trainer import Trainer, toy_windows
    tr, va = toy_windows(400, seed=1), toy_windows(100, seed=2)
    kw = dict(num_epochs=2, batch_size=64, learning_rate=1e-2, importance=False, early_stopping_patience=0, device="cpu",
              seed=3, deterministic=True, optimizer="sgd", gradient_clip_norm=0.0)   # a gradient off by a factor shows (Adam or clipping would hide it)
    mlp = {"name": "mlp", "hidden_sizes": [8], "dropout": 0.0}
    one = Trainer(mlp, **kw).fit(tr, va)
    for shared in (True, False):
        two = Trainer(mlp, strategy="ddp", nproc=2, ddp_shared_memory=shared, **kw).fit(tr, va)
        close(two.history["val_loss"].values, one.history["val_loss"].values, eps=1e-5)
