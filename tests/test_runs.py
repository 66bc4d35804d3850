"""The run store: ids, status, params, history, metrics, lineage, checkpoints (atomicity under crashes and kills),
listing, comparing and deleting, and the contract other modules (export, widgets, metrics) rely on."""
import json, os, random, re, signal, subprocess, sys, textwrap, threading, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails

import qtnb.runs as runs_mod
from qtnb.errors import ConfigError, QtnbError
from qtnb.metrics import MetricTracker
from qtnb.runs import (Run, RunError, RunNotFound, compare_runs, create_run, delete_run, lineage_info, list_runs,
                       open_run, rng_state, set_rng_state)

ID = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_.-]+-[0-9a-f]{4}$")


# ---------------------------------------------------------------- ids and creation

def test_create_run_layout(tmp_path):
    run = create_run("LSTM_h5.sp500", runs_dir=tmp_path, params={"model": {"name": "lstm"}, "lr": np.float32(0.5)})
    assert ID.match(run.id), run.id
    eq(run.id.split("-", 2)[2][:-5], "LSTM_h5.sp500")
    eq(run.path, tmp_path.resolve() / run.id)
    eq(yaml.safe_load((run.path / "params.yaml").read_text()), {"model": {"name": "lstm"}, "lr": 0.5})
    st = json.loads((run.path / "status.json").read_text())
    eq((st["state"], st["name"], st["pid"], st["id"]), ("running", "LSTM_h5.sp500", os.getpid(), run.id))
    assert st["created"] and st["started"] and "ended" not in st


def test_default_runs_dir_comes_from_settings(tmp_path, monkeypatch):
    (tmp_path / "settings.ini").write_text("[storage]\nruns_dir = my_runs\n")
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "settings.ini"))
    run = create_run("x")
    eq(run.path.parent, (tmp_path / "my_runs").resolve())
    eq(open_run(run.id), run)
    eq(list_runs()["id"].tolist(), [run.id])


def test_an_id_collision_draws_new_hex(tmp_path, monkeypatch):
    draws = iter(["aaaa", "aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(runs_mod.secrets, "token_hex", lambda n: next(draws))
    monkeypatch.setattr(runs_mod.time, "localtime", lambda t=None: time.struct_time((2024, 5, 1, 12, 0, 0, 2, 122, 0)))
    a, b = create_run("same", runs_dir=tmp_path), create_run("same", runs_dir=tmp_path)
    eq((a.id, b.id), ("20240501-120000-same-aaaa", "20240501-120000-same-bbbb"))


def _make_runs(args):
    root, n = args
    return [create_run("race", runs_dir=root).id for _ in range(n)]


def test_processes_creating_runs_at_once_get_distinct_folders(tmp_path):
    with ProcessPoolExecutor(4) as ex:
        ids = [i for chunk in ex.map(_make_runs, [(tmp_path, 40)] * 4) for i in chunk]
    eq(len(ids), 160)
    eq(len(set(ids)), 160)
    eq(len([p for p in tmp_path.iterdir() if p.is_dir()]), 160)
    assert all((tmp_path / i / "status.json").is_file() for i in ids)


# ---------------------------------------------------------------- status

def test_status_lifecycle(tmp_path):
    run = create_run("s", runs_dir=tmp_path)
    time.sleep(0.02)
    st = run.set_status("running", epoch=1, trial=np.int64(4))
    eq((st["epoch"], st["trial"]), (1, 4))
    started = st["started"]
    st = run.set_status("stopped", error="stopped by the user")
    eq((st["state"], st["started"], st["error"]), ("stopped", started, "stopped by the user"))
    assert st["ended"] >= started and st["duration_s"] >= 0.02
    st = run.set_status("running")                                        # resumed
    assert "ended" not in st and "error" not in st and st["resumed"] >= started
    for state in ("completed", "failed", "pruned"): eq(run.set_status(state)["state"], state)
    with pytest.raises(ConfigError, match="run state 'finished' is invalid; use one of queued, running, completed"):
        run.set_status("finished")


def test_run_as_context_manager(tmp_path):
    with create_run("ok", runs_dir=tmp_path) as run: pass
    eq(run.status["state"], "completed")
    with pytest.raises(KeyboardInterrupt):
        with create_run("ctrl-c", runs_dir=tmp_path) as run: raise KeyboardInterrupt
    eq(run.status["state"], "stopped")
    with pytest.raises(RuntimeError):
        with create_run("bad", runs_dir=tmp_path) as run: raise RuntimeError("loss exploded\nat epoch 3")
    eq((run.status["state"], run.status["error"]), ("failed", "RuntimeError: loss exploded at epoch 3"))
    with create_run("pruned", runs_dir=tmp_path) as run: run.set_status("pruned")
    eq(run.status["state"], "pruned")                                     # an explicit final state is kept


# ---------------------------------------------------------------- params, history, metrics

def test_params_accept_pydantic_configs(tmp_path):
    from qtnb.config import TrainConfig
    cfg = TrainConfig.resolve()
    run = create_run("p", runs_dir=tmp_path, params={"train": cfg})
    eq(run.params["train"], cfg.model_dump(mode="json"))
    run.write_params({"a": 1})
    eq(run.params, {"a": 1})
    with pytest.raises(ConfigError): run.write_params([1, 2])
    (run.path / "params.yaml").write_text("a: [1,\n")
    with pytest.raises(RunError, match="params.yaml is not valid YAML"): run.params


def test_history_grows_columns_and_round_trips(tmp_path):
    run = create_run("h", runs_dir=tmp_path)
    eq(len(run.history), 0)
    rows = [{"epoch": e, "train_loss": float(np.float32(1 / (e + 1))), "lr": 1e-3 * 0.9 ** e, "time": 0.1 * e}
            for e in range(5)]
    for r in rows: run.log_epoch(r)
    run.log_epoch({"val_sharpe": np.float64(1.25), "epoch": 5, "train_loss": torch.tensor(0.125), "note": "lr drop"})
    h = run.history
    eq(list(h.columns), ["epoch", "train_loss", "lr", "time", "val_sharpe", "note"])
    eq(h["epoch"].tolist(), list(range(6)))
    eq(h["lr"].tolist()[:5], [r["lr"] for r in rows])                    # exact floats, not rounded text
    eq(h["val_sharpe"].isna().tolist(), [True] * 5 + [False])
    eq(h["note"].iloc[-1], "lr drop")
    assert not list(run.path.glob(".*.tmp"))


def test_history_readers_never_see_a_torn_file(tmp_path):
    run = create_run("h", runs_dir=tmp_path)
    done, seen, errors = threading.Event(), [], []
    def reader():
        while not done.is_set():
            try: seen.append(len(run.history))
            except Exception as e: errors.append(e)
    t = threading.Thread(target=reader); t.start()
    for e in range(150): run.log_epoch({"epoch": e, "train_loss": 1.0 / (e + 1), **({"val_loss": 0.5} if e % 3 else {})})
    done.set(); t.join()
    eq(errors, [])
    eq(seen, sorted(seen))                                                # rows only ever grow
    eq(len(run.history), 150)


def test_metrics_are_json_safe(tmp_path):
    run = create_run("m", runs_dir=tmp_path)
    run.write_metrics({"val": {"mse": np.float32(0.5), "n": np.int64(3), "corr": float("nan"), "snr_db": float("inf"),
                               "confusion_matrix": np.array([[1, 2], [3, 4]]), "auc": torch.tensor(0.75)},
                       "test": {"sharpe": -0.5}})
    text = (run.path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    eq(json.loads(text), {"val": {"mse": 0.5, "n": 3, "corr": None, "snr_db": None, "confusion_matrix": [[1, 2], [3, 4]],
                                  "auc": 0.75}, "test": {"sharpe": -0.5}})
    run.write_metrics({"test": {"sharpe": 0.1}}, merge=True)
    eq((run.metrics["val"]["mse"], run.metrics["test"]), (0.5, {"sharpe": 0.1}))
    run.write_metrics({"test": {"sharpe": 0.2}})
    eq(run.metrics, {"test": {"sharpe": 0.2}})


# ---------------------------------------------------------------- lineage

def test_lineage_records_the_repository_commit(tmp_path):
    repo = tmp_path / "repo"; repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
    try:
        git("init", "-q"); (repo / "f.txt").write_text("x")
        git("add", "f.txt"); git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    except (OSError, subprocess.CalledProcessError): pytest.skip("git is not usable here")
    head = git("rev-parse", "HEAD")
    info = lineage_info(cwd=repo, seed=7)
    eq((info["git_commit"], info["git_dirty"], info["seed"]), (head, False, 7))
    (repo / "f.txt").write_text("changed")
    eq(lineage_info(cwd=repo)["git_dirty"], True)
    eq(lineage_info(cwd=tmp_path)["git_commit"], None)                     # not a repository


def test_lineage_never_fails_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                              # no git executable to find
    info = lineage_info(seed=1)
    eq((info["git_commit"], info["git_dirty"]), (None, None))
    assert {"qtnb", "numpy", "pandas", "torch"} <= set(info["packages"]), info["packages"]
    assert info["python"] and info["hostname"] and info["time"]


def test_write_lineage_keeps_what_others_recorded(tmp_path):
    run = create_run("l", runs_dir=tmp_path)
    (run.path / "lineage.json").write_text(json.dumps({"exports": [{"path": "model.onnx"}]}))
    lin = run.write_lineage(seed=3, data_fingerprint="fp", config_hash="ch", extra={"fold": np.int64(2)})
    eq((lin["exports"], lin["seed"], lin["data_fingerprint"], lin["config_hash"], lin["fold"]),
       ([{"path": "model.onnx"}], 3, "fp", "ch", 2))
    eq(run.lineage, json.loads((run.path / "lineage.json").read_text()))


# ---------------------------------------------------------------- checkpoints

def _model_state():
    torch.manual_seed(0)
    m = torch.nn.LSTM(4, 8, batch_first=True)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(2, 5, 4))[0].sum().backward(); opt.step()
    return m, opt


def test_checkpoint_round_trip_with_rng_states_and_tracker(tmp_path):
    run = create_run("ck", runs_dir=tmp_path)
    m, opt = _model_state()
    tracker = MetricTracker("val_sharpe")
    for e, v in enumerate([0.1, np.float32(0.4), 0.3]): tracker.update(e, {"val_sharpe": v, "val_loss": 1.0 - e / 10})
    torch.manual_seed(11); np.random.seed(11); random.seed(11)
    state = dict(model=m.state_dict(), optimizer=opt.state_dict(), epoch=np.int64(2), best=np.float64(0.4),
                 rng=rng_state(), tracker=tracker.state_dict(), config={"hidden": 8, "layers": [1, 2]})
    p = run.save_checkpoint(state, "last.pt")
    eq(p, run.checkpoint_dir / "last.pt")
    expected = (torch.randn(3), np.random.standard_normal(3), np.random.randint(0, 1000, 3), random.random())
    got = torch.load(p, weights_only=True)                                 # the contract: weights_only loads it
    eq(got["epoch"], 2); assert type(got["epoch"]) is int
    for k, v in m.state_dict().items(): eq(got["model"][k], v)
    eq(got["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    set_rng_state(run.load_checkpoint("last")["rng"])
    again = (torch.randn(3), np.random.standard_normal(3), np.random.randint(0, 1000, 3), random.random())
    eq(again[0], expected[0]); eq(again[1], expected[1]); eq(again[2], expected[2]); eq(again[3], expected[3])
    t2 = MetricTracker(); t2.load_state_dict(got["tracker"])
    eq((t2.best, t2.best_epoch, t2.mode), (tracker.best, 1, "maximize"))
    eq(run.checkpoints(), ["last"])


def test_numpy_gaussian_cache_survives(tmp_path):
    run = create_run("g", runs_dir=tmp_path)
    np.random.seed(5); np.random.standard_normal()                         # leaves a cached gaussian in the legacy state
    run.save_checkpoint({"rng": rng_state()}, "r")
    nxt = np.random.standard_normal(4)
    set_rng_state(run.load_checkpoint("r")["rng"])
    eq(np.random.standard_normal(4), nxt)


def test_checkpoint_refuses_what_weights_only_cannot_load(tmp_path):
    run = create_run("ck", runs_dir=tmp_path)
    fails(lambda: run.save_checkpoint({"rng": {"numpy": ("MT19937", np.zeros(3))}}, "bad"),
          contains="state['rng']['numpy'][1] is a numpy.ndarray")
    fails(lambda: run.save_checkpoint({"f": lambda x: x}, "bad"), contains="state['f'] is a builtins.function")
    fails(lambda: run.save_checkpoint({}, "../x"), contains="checkpoint name '../x' is invalid")
    eq(run.checkpoints(), [])
    # a file written by someone else with a pickled object: a RunError, not arbitrary code
    run.checkpoint_dir.mkdir(exist_ok=True)
    torch.save({"x": np.zeros(2)}, run.checkpoint_dir / "foreign.pt")
    with pytest.raises(RunError, match="weights_only=True"): run.load_checkpoint("foreign")


def test_a_failing_write_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    run = create_run("ck", runs_dir=tmp_path)
    good = run.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, "best")
    before = good.read_bytes()
    real_save = torch.save
    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip file")                            # some bytes, then the writer dies
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError): run.save_checkpoint({"epoch": 2, "w": torch.zeros(1000)}, "best")
    monkeypatch.setattr(torch, "save", real_save)
    eq(good.read_bytes(), before)
    eq(run.load_checkpoint("best")["epoch"], 1)
    eq(sorted(p.name for p in run.checkpoint_dir.iterdir()), ["best.pt"])  # no temp file left behind


def test_killing_a_writer_mid_checkpoint_leaves_a_loadable_best(tmp_path):
    run = create_run("kill", runs_dir=tmp_path)
    run.save_checkpoint({"epoch": -1, "w": torch.zeros(4)}, "best")
    script = textwrap.dedent(f"""
        import sys, torch
        from qtnb.runs import open_run
        run = open_run({str(run.path)!r})
        e = 0
        while True:
            run.save_checkpoint({{"epoch": e, "w": torch.full((3_000_000,), float(e))}}, "best")   # ~12 MB each
            print(e, flush=True); e += 1
    """)
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()                                           # at least one save completed
        time.sleep(delay)                                                # then kill it at some point mid-loop
        proc.send_signal(signal.SIGKILL); proc.wait()
        ck = run.load_checkpoint("best")
        assert ck["epoch"] >= 0 and bool((ck["w"] == float(ck["epoch"])).all()) and ck["w"].numel() == 3_000_000
    leftovers = [p.name for p in run.checkpoint_dir.iterdir() if p.name != "best.pt"]
    assert all(n.startswith(".best.pt.") for n in leftovers), leftovers  # only hidden temp files, never listed
    eq(run.checkpoints(), ["best"])


def test_corrupt_checkpoints_name_the_file(tmp_path):
    run = create_run("ck", runs_dir=tmp_path)
    good = run.save_checkpoint({"w": torch.randn(100, 100)}, "best").read_bytes()
    for name, data in (("truncated", good[: len(good) // 2]), ("empty", b""), ("noise", os.urandom(2000)),
                       ("cut_short", good[:-10])):
        (run.checkpoint_dir / f"{name}.pt").write_bytes(data)
        with pytest.raises(RunError) as e: run.load_checkpoint(name)
        assert f"{name}.pt" in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(RunError, match=r"has no checkpoint 'epoch_9'.*available: best"): run.load_checkpoint("epoch_9")


def test_checkpoint_listing_orders_epochs(tmp_path):
    run = create_run("ck", runs_dir=tmp_path)
    for n in ("epoch_10", "best", "epoch_2", "last", "epoch_1"): run.save_checkpoint({"n": n}, n)
    eq(run.checkpoints(), ["best", "last", "epoch_1", "epoch_2", "epoch_10"])


# ---------------------------------------------------------------- open, list, compare, delete

def test_open_run_errors_name_the_id_and_close_matches(tmp_path):
    a = create_run("lstm", runs_dir=tmp_path); create_run("mlp", runs_dir=tmp_path)
    with pytest.raises(RunNotFound) as e: open_run(a.id[:-1] + "z", runs_dir=tmp_path)
    msg = str(e.value)
    assert a.id[:-1] + "z" in msg and a.id in msg and "\n" not in msg, msg
    assert isinstance(e.value, QtnbError) and isinstance(e.value, LookupError)
    with pytest.raises(RunNotFound, match="close matches"): open_run("lstm", runs_dir=tmp_path)
    with pytest.raises(RunNotFound, match="2 runs there"): open_run("zzzzzz", runs_dir=tmp_path)
    eq(open_run(str(a.path)), a)
    eq(open_run(a), a)


def test_list_runs_newest_first_and_tolerant(tmp_path):
    made = []
    for name in ("a", "b", "c"):
        made.append(create_run(name, runs_dir=tmp_path)); time.sleep(0.01)
    made[0].write_metrics({"val": {"loss": 0.3, "sharpe": 1.0, "confusion_matrix": [[1]]}, "test": {"sharpe": 0.5}})
    made[0].set_status("completed")
    made[1].set_status("failed", error="NonFiniteLoss: nan")
    (made[2].path / "status.json").write_text("{")                       # damaged
    (tmp_path / "optuna.db").write_text(""); (tmp_path / "notes").mkdir(); (tmp_path / ".hidden").mkdir()
    df = list_runs(tmp_path)
    eq(df["id"].tolist(), [m.id for m in reversed(made)])
    eq(df["state"].tolist(), ["unknown", "failed", "completed"])
    eq(df["error"].iloc[1], "NonFiniteLoss: nan")
    assert "status.json" in df["error"].iloc[0]
    eq((df["val_sharpe"].iloc[2], df["test_sharpe"].iloc[2], df["val_loss"].iloc[2]), (1.0, 0.5, 0.3))
    assert "val_confusion_matrix" not in df
    assert {"id", "name", "state", "started", "duration"} <= set(df.columns)
    assert df["duration"].iloc[2] >= 0
    eq(len(list_runs(tmp_path / "nowhere")), 0)


def test_compare_and_delete(tmp_path):
    a = create_run("a", runs_dir=tmp_path, params={"model": "lstm", "seed": 1, "data": {"seq_len": 32, "h": 1}})
    b = create_run("b", runs_dir=tmp_path, params={"model": "lstm", "seed": 2, "data": {"seq_len": 64, "h": 1}})
    a.write_metrics({"val": {"mse": 0.2, "sharpe": 0.1}, "test": {"mse": 0.3}}); a.set_status("completed")
    b.write_metrics({"val": {"mse": 0.1, "sharpe": 0.4}}); b.set_status("completed")
    c = compare_runs([a.id, b], runs_dir=tmp_path)
    eq(list(c.index), [a.id, b.id])
    eq(c.loc[a.id, "test_mse"], 0.3); assert pd.isna(c.loc[b.id, "test_mse"])
    eq([k for k in c.columns if k.startswith("params.")], ["params.seed", "params.data.seq_len"])
    c = compare_runs([a.id, b.id], metrics=["val_mse"], runs_dir=tmp_path)
    eq([k for k in c.columns if "_" in k and not k.startswith("params.")], ["val_mse"])
    with pytest.raises(RunNotFound): delete_run("nothing", runs_dir=tmp_path)
    (tmp_path / "keep").mkdir(); (tmp_path / "keep" / "data.csv").write_text("x")
    with pytest.raises(RunNotFound, match="not a run"): delete_run("keep", runs_dir=tmp_path)
    assert (tmp_path / "keep" / "data.csv").exists()
    delete_run(a.id, runs_dir=tmp_path)
    eq(list_runs(tmp_path)["id"].tolist(), [b.id])
    live = create_run("live", runs_dir=tmp_path)                             # this process runs it: live
    with pytest.raises(RunError, match="stop it first"): delete_run(live.id, runs_dir=tmp_path, force=True)
    assert live.path.exists()
    live.set_status("running", pid=None)                                    # an old run: no pid, nothing tells
    with pytest.raises(RunError, match="marked running"): delete_run(live.id, runs_dir=tmp_path)
    delete_run(live, runs_dir=tmp_path, force=True)
    assert not live.path.exists()


# ---------------------------------------------------------------- what other modules rely on

def test_export_contract(tmp_path):
    "qtnb.export.export_run reads open_run(id, runs_dir=...).path/.params and load_checkpoint('best')."
    run = create_run("train", runs_dir=tmp_path, params={"model": "lstm", "seq_len": 16})
    m = torch.nn.Linear(3, 1)
    run.save_checkpoint({"model": m.state_dict(), "epoch": 3}, "best")
    again = open_run(run.id, runs_dir=tmp_path)
    eq((again.path, again.params["model"]), (run.path, "lstm"))
    eq(again.load_checkpoint("best")["model"]["weight"], m.weight.detach())


def test_run_browser_reads_the_real_store(tmp_path):
    W = pytest.importorskip("qtnb.widgets")
    a = create_run("mlp", runs_dir=tmp_path)
    for e in range(3): a.log_epoch({"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 0.5 + e / 10})
    a.write_metrics({"val": {"mse": 0.25}}); a.set_status("completed")
    rb = W.RunBrowser(tmp_path)
    assert a.id in rb.table.value
    rb.select(a.id)
    assert "0.25" in rb.compare.value and "completed" in rb.compare.value
