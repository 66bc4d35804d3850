"""The model registry over the run store: register -> stage -> resolve -> load for torch and estimator runs,
registration from several processes at once, and the bad inputs a user can give it."""
import json, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq, test_close as close

from qtnb.data import prepare
from qtnb.datasets import planted
from qtnb.errors import ConfigError, QtnbError
from qtnb.models.core import create_model
from qtnb.registry import load_version, register_version, save_estimator
from qtnb.runs import (REGISTRY_FILE, RegistryError, RunError, VersionNotFound, create_run, delete_run, model_versions,
                       resolve_version, set_stage)
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


def test_archive_existing_false_keeps_both(tmp_path):
    run = fake_torch_run(tmp_path)
    for _ in range(3): register_version(run, "m")
    set_stage("m@1", "production", runs_dir=tmp_path)
    set_stage("m@2", "production", archive_existing=False, runs_dir=tmp_path)
    eq(model_versions("m", runs_dir=tmp_path)["stage"].tolist(), ["production", "production", "none"])
    eq(resolve_version("m@production", runs_dir=tmp_path)["version"], 2)      # the newest of them
    register_version(run, "m", stage="production")                            # registering into a stage archives too
    eq(model_versions("m", runs_dir=tmp_path)["stage"].tolist(), ["archived", "archived", "none", "production"])


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


# ---------------------------------------------------------------- bad inputs

def test_bad_references_and_stages(tmp_path):
    run = fake_torch_run(tmp_path)
    with pytest.raises(VersionNotFound) as e: resolve_version("m", runs_dir=tmp_path)
    assert "the registry is empty" in one_line(e)
    register_version(run, "m"); register_version(run, "m2")
    with pytest.raises(VersionNotFound) as e: resolve_version("m3", runs_dir=tmp_path)
    assert "known models: m, m2" in one_line(e)
    with pytest.raises(VersionNotFound) as e: load_version("mm", runs_dir=tmp_path)
    assert "known models" in one_line(e)
    with pytest.raises(VersionNotFound) as e: model_versions("nope", runs_dir=tmp_path)
    assert "known models: m, m2" in one_line(e)
    with pytest.raises(VersionNotFound) as e: resolve_version("m@4", runs_dir=tmp_path)
    assert "m has no version 4; versions: 1" in one_line(e)
    with pytest.raises(VersionNotFound) as e: resolve_version("m@production", runs_dir=tmp_path)
    assert "no version in stage 'production'" in one_line(e) and "set_stage('m@1', 'production')" in str(e.value)
    for bad in ("m@", "@3", "m@3@4", "m@prod", "m@-1", "my model", "", "m@v3"):
        with pytest.raises(ConfigError) as e: resolve_version(bad, runs_dir=tmp_path)
        assert "use name, name@<version>" in one_line(e)
    with pytest.raises(ConfigError) as e: set_stage("m@1", "live", runs_dir=tmp_path)
    assert "use one of none, staging, production, archived" in one_line(e)
    with pytest.raises(ConfigError) as e: register_version(run, "m", stage="prod")
    assert "stage 'prod' is unknown" in one_line(e)
    with pytest.raises(ConfigError) as e: register_version(run, "bad/name")
    assert "model name 'bad/name' is not allowed" in one_line(e)
    eq(model_versions(runs_dir=tmp_path)["name"].tolist(), ["m", "m2"])    # the refusals changed nothing


def test_unfinished_or_modelless_runs_are_refused(tmp_path):
    live = fake_torch_run(tmp_path, state="running")
    with pytest.raises(RegistryError) as e: register_version(live, "m")
    assert "is running; only a completed or stopped run" in one_line(e)
    failed = fake_torch_run(tmp_path, state="failed")
    with pytest.raises(RegistryError) as e: register_version(failed, "m")
    assert "is failed" in one_line(e)
    eq(register_version(fake_torch_run(tmp_path, state="stopped"), "m")["version"], 1)
    bare = create_run("bare", runs_dir=tmp_path, params={"model": {"name": "mlp"}}); bare.set_status("completed")
    with pytest.raises(RegistryError) as e: register_version(bare, "m")
    assert "has no model artifact" in one_line(e)
    nomodel = create_run("nomodel", runs_dir=tmp_path); nomodel.set_status("completed")
    with pytest.raises(RegistryError) as e: register_version(nomodel, "m")
    assert "names no model" in one_line(e)
    with pytest.raises(RunError) as e: register_version("20200101-000000-nothing-abcd", "m", runs_dir=tmp_path)
    assert "not found" in one_line(e)


def test_a_changed_artifact_is_refused(tmp_path):
    run = fake_torch_run(tmp_path)
    register_version(run, "m")
    ck = run.checkpoint_dir / "best.pt"
    good = ck.read_bytes()
    other = create_model({"name": "mlp", "hidden_sizes": [4]}, n_features=3, seq_len=8)   # same shape, other weights
    run.save_checkpoint({"model": other.state_dict()}, "best")
    with pytest.raises(RegistryError) as e: load_version("m", runs_dir=tmp_path)
    assert "changed since it was registered" in one_line(e)
    ck.unlink()
    with pytest.raises(RegistryError) as e: load_version("m", runs_dir=tmp_path)
    assert "is gone" in one_line(e)
    ck.write_bytes(good)
    assert load_version("m", runs_dir=tmp_path).qtnb_version["version"] == 1


def test_deleting_a_registered_run(tmp_path):
    a, b = fake_torch_run(tmp_path), fake_torch_run(tmp_path)
    register_version(a, "m"); register_version(b, "m"); register_version(a, "m2")
    with pytest.raises(RunError) as e: delete_run(a.id, runs_dir=tmp_path)
    assert "holds the registered model versions m@1, m2@1" in one_line(e) and "force=True" in str(e.value)
    assert (a.checkpoint_dir / "best.pt").is_file()                         # nothing deleted
    eq(len(model_versions(runs_dir=tmp_path)), 3)
    delete_run(a.id, runs_dir=tmp_path, force=True)
    assert not a.path.exists()
    eq(model_versions(runs_dir=tmp_path)[["name", "version"]].values.tolist(), [["m", 2]])
    eq(register_version(b, "m")["version"], 3)                              # version numbers are never reused
    with pytest.raises(VersionNotFound) as e: resolve_version("m2", runs_dir=tmp_path)
    one_line(e)
    c = fake_torch_run(tmp_path)
    delete_run(c.id, runs_dir=tmp_path)                                      # an unregistered run goes as before


def test_a_damaged_registry_is_reported(tmp_path):
    run = fake_torch_run(tmp_path)
    (tmp_path / REGISTRY_FILE).write_text("{not json")
    with pytest.raises(RunError) as e: register_version(run, "m")
    assert "is not valid JSON" in one_line(e)
    (tmp_path / REGISTRY_FILE).write_text('{"models": []}')
    with pytest.raises(RegistryError) as e: resolve_version("m", runs_dir=tmp_path)
    assert "no valid 'models' mapping" in one_line(e)
