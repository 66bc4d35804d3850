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

import qtnb.runs.store as runs_mod
from qtnb.errors import ConfigError, QtnbError
from qtnb.metrics import MetricTracker
from qtnb.runs import (Run, RunError, RunNotFound, compare_runs, create_run, delete_run, lineage_info, list_runs,
                       open_run)
from qtnb.trainer import rng_state, set_rng_state

ID = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9_.-]+-[0-9a-f]{4}$")


# ---------------------------------------------------------------- ids and creation

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
