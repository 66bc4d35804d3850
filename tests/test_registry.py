"""The model registry over the run store: register -> stage -> resolve -> load for torch and estimator runs,
registration from several processes at once (the bad inputs a user can give it are examples in nbs/10a_registry.ipynb)."""
import json, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from fastcore.test import test_eq as eq, test_close as close

from qtnb.data import prepare
from qtnb.datasets import planted
from qtnb.errors import QtnbError
from qtnb.models.core import create_model
from qtnb.registry import load_version, register_version, save_estimator
from qtnb.runs import (REGISTRY_FILE, RegistryError, RunError, create_run, model_versions, resolve_version, set_stage)
from qtnb.trainer import Trainer, fit_fold, toy_windows

TR, VA, TE = toy_windows(256, seed=0), toy_windows(128, seed=1), toy_windows(128, seed=2)


def one_line(e: pytest.ExceptionInfo, cls=QtnbError) -> str:
    assert isinstance(e.value, cls), repr(e.value)
    s = str(e.value)
    assert s and "\n" not in s, repr(s)
    return s


def train_mlp(root, hidden=8, **kw):
    run = create_run("mlp", runs_dir=root)
    t = Trainer({"name": "mlp", "hidden_sizes": [hidden]}, run=run, num_epochs=3, batch_size=64, importance=False, **kw)
    t.fit(TR, VA, test=TE)
    return run, t


def fake_torch_run(root, state="completed"):
    "A finished run with a best checkpoint and the params a Trainer writes, without training (fast)."
    run = create_run("fake", runs_dir=root)
    run.write_params({"model": {"name": "mlp", "hidden_sizes": [4]}, "inputs": {"n_features": 3, "seq_len": 8}})
    m = create_model({"name": "mlp", "hidden_sizes": [4]}, n_features=3, seq_len=8)
    run.save_checkpoint({"model": m.state_dict(), "epoch": 1}, "best")
    run.write_metrics({"val": {"loss": 0.5}, "test": {"loss": 0.6}})
    run.set_status(state)
    return run


# ---------------------------------------------------------------- round trips

def test_torch_round_trip(tmp_path):
    (r1, t1), (r2, t2) = train_mlp(tmp_path, 8), train_mlp(tmp_path, 16)
    v1 = register_version(r1, "toy-mlp", description="small")
    v2 = register_version(r2.id, "toy-mlp", stage="staging", runs_dir=tmp_path)
    eq((v1["version"], v1["stage"], v2["version"], v2["stage"]), (1, "none", 2, "staging"))
    # what is on disk is what was returned, and it carries what a version needs to be trusted
    reg = json.loads((tmp_path / REGISTRY_FILE).read_text())
    eq(reg["format"], "qtnb-registry-1")
    eq(reg["models"]["toy-mlp"]["versions"], [v1, v2])
    eq((v1["model"], v1["description"]), ({"name": "mlp", "family": "mlp", "task": "regression"}, "small"))
    eq(v1["artifact"]["path"], "checkpoints/best.pt")
    eq(v1["metrics"]["test"]["loss"], r1.metrics["test"]["loss"])
    eq({k: v1["lineage"][k] for k in ("git_commit", "data_fingerprint", "config_hash", "seed")},
       {k: r1.lineage[k] for k in ("git_commit", "data_fingerprint", "config_hash", "seed")})
    assert "torch" in v1["lineage"]["packages"]

    set_stage("toy-mlp@1", "production", runs_dir=tmp_path)
    set_stage("toy-mlp@2", "production", runs_dir=tmp_path)
    eq(model_versions("toy-mlp", runs_dir=tmp_path)["stage"].tolist(), ["archived", "production"])
    eq(resolve_version("toy-mlp@production", runs_dir=tmp_path)["run_id"], r2.id)

    for ref, trainer in (("toy-mlp@production", t2), ("toy-mlp@1", t1), ("toy-mlp", t2)):
        m = load_version(ref, runs_dir=tmp_path)
        assert not m.training
        with torch.no_grad(): out = m(TE[:][0]).numpy()
        close(out, trainer.predict(TE), eps=1e-6)
    eq(load_version("toy-mlp@1", runs_dir=tmp_path).qtnb_version["run_id"], r1.id)

    df = model_versions(runs_dir=tmp_path)
    eq(list(df.columns[:5]), ["name", "version", "stage", "run_id", "created"])
    assert {"val.loss", "test.loss"} <= set(df.columns)
    eq(df["test.loss"].tolist(), [r1.metrics["test"]["loss"], r2.metrics["test"]["loss"]])


def test_load_without_recorded_inputs_prepares_the_data_again(tmp_path):
    data = dict(data="synthetic:planted", features=["returns"], seq_len=8, cache=False)
    prep = prepare(data, frame=planted(1200))
    run = create_run("planted", runs_dir=tmp_path, params={"data": data})
    tr, _ = fit_fold(prep.folds[0], {"name": "mlp", "hidden_sizes": [8]}, run=run, num_epochs=2, batch_size=64, importance=False)
    eq(run.params["inputs"]["n_features"], len(prep.feature_names))
    register_version(run, "planted-mlp")
    p = run.params; p.pop("inputs"); run.write_params(p)                  # a run from before `inputs` was recorded
    m = load_version("planted-mlp", runs_dir=tmp_path)
    w = prep.folds[0].test
    with torch.no_grad(): close(m(w[:][0]).numpy(), tr.predict(w), eps=1e-6)


def test_estimator_round_trip(tmp_path):
    run = create_run("linear", runs_dir=tmp_path)
    t = Trainer({"name": "linear"}, run=run, importance=False); t.fit(TR, VA, test=TE)
    with pytest.raises(RegistryError) as e: register_version(run, "toy-linear")
    assert "save_estimator(run, model)" in one_line(e)
    eq(save_estimator(run, t.model), run.path / "estimator" / "manifest.json")
    (run.path / "model.onnx").write_bytes(b"not really onnx")
    v = register_version(run, "toy-linear", stage="production")
    eq((v["artifact"]["kind"], v["artifact"]["path"], v["onnx"]["path"], v["onnx"]["bytes"]), ("estimator", "estimator/manifest.json", "model.onnx", 15))
    m = load_version("toy-linear@production", runs_dir=tmp_path)
    x = TE.numpy()[0]
    eq(m.predict(x), t.model.predict(x))
    eq(m.qtnb_version["version"], 1)
    with pytest.raises(RunError) as e: save_estimator(run, create_model({"name": "linear"}, n_features=3, seq_len=8))
    assert "is not fitted" in one_line(e)
    with pytest.raises(RunError) as e: save_estimator(run, create_model({"name": "mlp"}, n_features=3, seq_len=8))
    assert "is a torch model" in one_line(e)


# ---------------------------------------------------------------- several processes at once

def _register_many(args):
    root, run_id, n, barrier = args
    from qtnb.registry import register_version
    barrier.wait(60)                            # every process starts registering at the same moment
    return [register_version(run_id, "race", runs_dir=root)["version"] for _ in range(n)]


def test_concurrent_registration_loses_no_version(tmp_path):
    run = fake_torch_run(tmp_path)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        barrier = mgr.Barrier(4)
        with ProcessPoolExecutor(4, mp_context=ctx) as ex:
            got = list(ex.map(_register_many, [(str(tmp_path), run.id, 6, barrier)] * 4))
    eq(sorted(v for chunk in got for v in chunk), list(range(1, 25)))
    for chunk in got: eq(chunk, sorted(chunk))
    eq(model_versions("race", runs_dir=tmp_path)["version"].tolist(), list(range(1, 25)))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]   # no temporary file left behind


