"""Hostile input against the run store: deletion never leaves the store (paths, `..`, symlinked run folders, live
runs), no pickle from disk is ever executed (every estimator and checkpoint slot, every load path), and names that
become paths are slugs. Also the reader side of `interrupted`: a run whose process was killed, or whose heartbeat
from another host went stale, reads as interrupted in `qtnb runs list` and the Python API.

Every pickle planted here would create a marker file if anything unpickled it; each test first proves its payload
is live (unpickling it for real creates a marker), then asserts the marker never appears on qtnb's paths."""
import json, os, pickle, re, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastcore.test import test_eq as eq

from qtnb.errors import ConfigError, QtnbError
from qtnb.models.core import create_model
from qtnb.registry import load_estimator, load_version, register_version, save_estimator
from qtnb.runs import (ESTIMATOR_MANIFEST, Run, RunError, create_run, delete_run, list_runs, model_versions, open_run,
                       process_record)

QTNB = str(Path(sys.executable).parent / "qtnb")
REPO = Path(__file__).resolve().parent.parent
DATA = {"data": "synthetic:planted", "seq_len": 8}
N_FEATURES = 10                                     # synthetic:planted's default features


def qtnb(*args, cwd=REPO, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([QTNB, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)

def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qtnb: error: "), r.stderr[-2000:]
    return lines[0]

def exec_pickle(marker: Path) -> bytes:
    "A protocol-0 pickle whose loading runs `open(marker, 'w')`: what a hostile model.pkl looks like."
    return b"cbuiltins\nexec\n(V" + f"open({str(marker)!r}, 'w').close()".encode() + b"\ntR."

class _Exec:
    def __init__(self, code): self.code = code
    def __reduce__(self): return (exec, (self.code,))

def torch_pickle(marker: Path) -> bytes:
    "A torch.save zip whose data.pkl runs `open(marker, 'w')` when loaded without weights_only."
    import io
    buf = io.BytesIO(); torch.save({"model": _Exec(f"open({str(marker)!r}, 'w').close()")}, buf)
    return buf.getvalue()

def test_the_payloads_are_live(tmp_path):
    "If these did not run code when unpickled, the tests below could not fail."
    pickle.loads(exec_pickle(tmp_path / "a"))
    assert (tmp_path / "a").exists()
    (tmp_path / "b.pt").write_bytes(torch_pickle(tmp_path / "b"))
    torch.load(tmp_path / "b.pt", weights_only=False)
    assert (tmp_path / "b").exists()

def sentinel_project(where: Path) -> Path:
    "A DVC- or Hydra-style project folder that looks like a run: params.yaml, status.json, source files."
    p = where / "project"
    (p / "src").mkdir(parents=True)
    (p / "params.yaml").write_text("lr: 0.1\n")
    (p / "status.json").write_text('{"state": "completed"}')
    (p / "src" / "model.py").write_text("print('months of work')\n")
    return p

def intact(p: Path) -> bool:
    return (p / "params.yaml").read_text() == "lr: 0.1\n" and (p / "src" / "model.py").is_file()

def finished_run(store: Path, name: str = "done") -> Run:
    r = create_run(name, runs_dir=store); r.set_status("completed")
    return r


# ---------------------------------------------------------------- deletion only inside the store

def test_runs_rm_of_paths_and_dotdot_deletes_nothing(tmp_path):
    store, project = tmp_path / "store", sentinel_project(tmp_path)
    keep = finished_run(store)
    for bad, cwd in [(project, REPO), ("../project", store), (f"{keep.id}/../../project", store)]:   # more in the API test
        r = qtnb("runs", "rm", bad, "--runs-dir", store, cwd=cwd)
        eq(r.returncode, 2)
        assert "is not a run id" in one_line_error(r)
        assert intact(project) and keep.path.is_dir(), bad
    r = qtnb("runs", "rm", keep.id, str(project), "--runs-dir", store)        # one bad id: nothing at all is deleted
    eq(r.returncode, 2); assert keep.path.is_dir() and intact(project)
    r = qtnb("runs", "rm", "project", "--runs-dir", store, cwd=tmp_path)    # a bare name is an id of the store only
    eq(r.returncode, 1); assert "not found in" in one_line_error(r) and intact(project)
    r = qtnb("runs", "rm", keep.id, "--runs-dir", store)
    eq((r.returncode, r.stdout.strip()), (0, f"deleted {keep.id}"))
    assert not keep.path.exists() and intact(project)

def test_delete_run_python_api_refuses_paths(tmp_path):
    store, project = tmp_path / "store", sentinel_project(tmp_path)
    finished_run(store)
    for bad in (str(project), project, "../project", "x/../../project", "x\0y", "..", ".", "", "./project", "project/", "a\\b"):
        with pytest.raises(ConfigError, match="is not a run id"): delete_run(bad, runs_dir=store)
    for handle in (Run(project), open_run(str(project))):                   # a handle on a folder qtnb did not make
        with pytest.raises(ConfigError, match="is not a folder qtnb made"): delete_run(handle, force=True)
    assert intact(project)
    with pytest.raises(RunError, match="does not exist"): delete_run("20240101-000000-x-abcd", runs_dir=tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()                              # deleting creates nothing either

def test_a_symlinked_run_folder_loses_the_link_only(tmp_path):
    store, project = tmp_path / "store", sentinel_project(tmp_path)
    finished_run(store)
    link = store / "20240101-000000-linked-abcd"
    link.symlink_to(project, target_is_directory=True)
    r = qtnb("runs", "rm", link.name, "--runs-dir", store)
    eq(r.returncode, 0)
    assert "removed the link" in r.stdout and not link.exists() and not link.is_symlink() and intact(project)
    link.symlink_to(project, target_is_directory=True)                      # the Python API does the same
    eq(delete_run(link.name, runs_dir=store), link)
    assert not link.is_symlink() and intact(project)

def test_links_inside_a_deleted_run_are_not_followed(tmp_path):
    store, project = tmp_path / "store", sentinel_project(tmp_path)
    run = finished_run(store)
    (run.path / "data").symlink_to(project, target_is_directory=True)
    (run.path / "params.link").symlink_to(project / "params.yaml")
    r = qtnb("runs", "rm", run.id, "--runs-dir", store)
    eq(r.returncode, 0)
    assert not run.path.exists() and intact(project)

def test_a_store_reached_through_a_symlink_is_resolved(tmp_path):
    real, project = tmp_path / "real-store", sentinel_project(tmp_path)
    run = finished_run(real)
    (tmp_path / "store-link").symlink_to(real, target_is_directory=True)
    r = qtnb("runs", "rm", run.id, "--runs-dir", tmp_path / "store-link")
    eq(r.returncode, 0); assert not run.path.exists() and intact(project) and real.is_dir()

LIVE = textwrap.dedent("""
    import sys, time
    from qtnb.runs import create_run, process_record
    with create_run("training", runs_dir=sys.argv[1], params={"lr": 0.1}) as run:
        run.set_status("running", **process_record(), heartbeat=time.time(), heartbeat_s=1.0)
        print(run.id, flush=True)
        sys.stdin.readline()                    # trains until told to finish
        run.write_metrics({"val": {"loss": 0.5}})
    """)

def test_a_live_run_is_refused_even_with_force_and_leaves_no_zombie(tmp_path):
    store = tmp_path / "store"
    p = subprocess.Popen([sys.executable, "-c", LIVE, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        rid = p.stdout.readline().strip()
        for force in ([], ["--force"]):
            r = qtnb("runs", "rm", rid, *force, "--runs-dir", store)
            eq(r.returncode, 1)
            assert "stop it first" in one_line_error(r), r.stderr
        with pytest.raises(RunError, match="stop it first"): delete_run(rid, runs_dir=store, force=True)
        p.stdin.write("\n"); p.stdin.flush()
        eq(p.wait(timeout=60), 0)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    run = open_run(rid, runs_dir=store)                                     # whole, not a zombie
    eq((run.status["state"], run.params, run.metrics["val"]["loss"]), ("completed", {"lr": 0.1}, 0.5))
    r = qtnb("runs", "rm", rid, "--runs-dir", store)
    eq(r.returncode, 0); assert not run.path.exists()

def _estimator_run(store: Path, name: str = "linear", cfg: dict | None = None, fit_torch=None) -> tuple[Run, object]:
    "A completed run holding a fitted estimator saved by save_estimator, with data params export can prepare."
    cfg = cfg or {"name": "linear"}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8, N_FEATURES)).astype(np.float32)
    y = x[:, -1, :1] * 0.5 + 0.1 * rng.standard_normal((200, 1))
    model = create_model(cfg, n_features=N_FEATURES, seq_len=8).fit(x, y, fit_torch=fit_torch)
    run = create_run(name, runs_dir=store, params={"data": DATA, "model": cfg})
    save_estimator(run, model); run.set_status("completed")
    return run, model

def test_a_registered_run_needs_force_and_says_which(tmp_path):
    store = tmp_path / "store"
    run, _ = _estimator_run(store)
    register_version(run, "lin"); register_version(run, "lin2")
    r = qtnb("runs", "rm", run.id, "--runs-dir", store)
    eq(r.returncode, 1)
    line = one_line_error(r)
    assert "lin@1, lin2@1" in line and "--force" in line and "force=True" not in line
    with pytest.raises(RunError, match="force=True"): delete_run(run.id, runs_dir=store)
    assert run.path.is_dir()
    r = qtnb("runs", "rm", run.id, "--force", "--runs-dir", store)
    eq(r.returncode, 0); assert not run.path.exists()
    eq(len(model_versions(runs_dir=store)), 0)


# ---------------------------------------------------------------- interrupted, as every reader sees it

VICTIM = textwrap.dedent("""
    import sys, time
    from qtnb.runs import create_run, process_record
    run = create_run("victim", runs_dir=sys.argv[1])
    run.set_status("running", **process_record(), heartbeat=time.time(), heartbeat_s=1.0)
    print(run.id, flush=True)
    time.sleep(300)
    """)

def _listed_state(store: Path, rid: str) -> str:
    r = qtnb("runs", "list", "--runs-dir", store)
    assert r.returncode == 0, r.stderr
    line = [l for l in r.stdout.splitlines() if rid in l]
    assert len(line) == 1, r.stdout
    return line[0].split()[1]                    # id, state, ...

def test_a_run_killed_minus_9_reads_interrupted(tmp_path):
    store = tmp_path / "store"
    p = subprocess.Popen([sys.executable, "-c", VICTIM, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        rid = p.stdout.readline().strip()
        eq(_listed_state(store, rid), "running")
        os.kill(p.pid, signal.SIGKILL); p.wait(timeout=30)
    finally:
        if p.poll() is None: p.kill(); p.wait()
    eq(_listed_state(store, rid), "interrupted")
    r = qtnb("runs", "show", rid, "--runs-dir", store)
    st = json.loads(r.stdout.split("\n", 1)[1].rsplit("\nfiles:", 1)[0])["status"]
    eq((st["state"], st["recorded_state"]), ("interrupted", "running"))
    assert f"process {p.pid} on host" in st["problem"]
    eq(list_runs(store).set_index("id").loc[rid, "state"], "interrupted")
    eq(json.loads((store / rid / "status.json").read_text())["state"], "running")   # readers do not write
    r = qtnb("runs", "rm", rid, "--runs-dir", store)                        # gone: no --force needed
    eq(r.returncode, 0)

def test_another_hosts_heartbeat_decides(tmp_path):
    store = tmp_path / "store"
    far = create_run("far", runs_dir=store)
    beat = dict(pid=4242, host="node-that-is-not-here", pid_start=1.0, heartbeat_s=30.0)
    far.set_status("running", **beat, heartbeat=time.time())                # a beat just now (stale after 90 s)
    eq(_listed_state(store, far.id), "running")
    r = qtnb("runs", "rm", far.id, "--force", "--runs-dir", store)
    eq(r.returncode, 1); assert "stop it first" in one_line_error(r)
    far.set_status("running", heartbeat=time.time() - 400)
    eq(_listed_state(store, far.id), "interrupted")
    assert re.search(r"no heartbeat for \d+ s from process 4242 on host node-that-is-not-here", far.status["problem"])
    old = create_run("old", runs_dir=store)
    old.set_status("running", pid=None, host=None)                          # an old run: no pid, nothing tells
    eq(_listed_state(store, old.id), "running")
    r = qtnb("runs", "rm", old.id, "--runs-dir", store)
    eq(r.returncode, 1); assert "--force" in one_line_error(r)


# ---------------------------------------------------------------- no pickle from disk, anywhere

def _stub_fit(module, *a): return module.eval()

@pytest.fixture(scope="module")
def every_slot(tmp_path_factory):
    "A stacking ensemble with a linear, an XGBoost and a torch member: every estimator file kind in one manifest."
    store = tmp_path_factory.mktemp("slots")
    cfg = {"name": "ensemble", "method": "stacking", "n_folds": 2,
           "members": [{"name": "linear"}, {"name": "xgboost", "n_estimators": 5, "max_depth": 2}, {"name": "mlp", "hidden_sizes": [8]}]}
    run, model = _estimator_run(store, "ens", cfg, fit_torch=_stub_fit)
    return store, run

def _copy_run(src: Run, store: Path, name: str) -> Run:
    dst = create_run(name, runs_dir=store)
    shutil.rmtree(dst.path); shutil.copytree(src.path, dst.path)
    return open_run(dst.id, runs_dir=store)

def _rehash(run: Run, slot: str, data: bytes) -> None:
    "Put `data` into estimator file `slot` and make the manifest and lineage vouch for it, as a writer of the folder could."
    import hashlib
    mp = run.path / ESTIMATOR_MANIFEST
    man = json.loads(mp.read_text())
    (mp.parent / man["files"][slot]["path"]).write_bytes(data)
    man["files"][slot]["sha256"] = hashlib.sha256(data).hexdigest()
    mp.write_text(json.dumps(man))
    lin = json.loads((run.path / "lineage.json").read_text())
    lin["estimator"]["sha256"] = hashlib.sha256(mp.read_bytes()).hexdigest()
    (run.path / "lineage.json").write_text(json.dumps(lin))

def test_every_estimator_slot_holds_a_pickle_that_never_runs(every_slot, tmp_path):
    store, good = every_slot
    slots = sorted(json.loads((good.path / ESTIMATOR_MANIFEST).read_text())["files"])
    eq(slots, ["m0.linear.json", "m1.booster.ubj", "m1.xgboost.json", "m2.weights.npz", "meta.linear.json"])
    marker = tmp_path / "pwned"
    for payload in (exec_pickle(marker), torch_pickle(marker)):
        for i, slot in enumerate(slots):
            run = _copy_run(good, store, f"slot{i}")
            _rehash(run, slot, payload)
            for load in (lambda: load_estimator(run), lambda: register_version(run, "planted")):
                with pytest.raises(QtnbError) as e: load()
                assert "\n" not in str(e.value) and "estimator" in str(e.value), (slot, str(e.value))
            assert not marker.exists(), slot
            shutil.rmtree(run.path)
    eq(len(model_versions(runs_dir=store)), 0)

def test_a_planted_file_without_its_hash_is_refused(every_slot, tmp_path):
    store, good = every_slot
    marker = tmp_path / "pwned"
    run = _copy_run(good, store, "unhashed")
    man = json.loads((run.path / ESTIMATOR_MANIFEST).read_text())
    (run.path / "estimator" / man["files"]["m1.booster.ubj"]["path"]).write_bytes(exec_pickle(marker))
    with pytest.raises(RunError, match="changed since it was saved"): load_estimator(run)
    (run.path / ESTIMATOR_MANIFEST).write_bytes(exec_pickle(marker))       # the manifest itself
    with pytest.raises(RunError, match="changed since it was saved"): load_estimator(run)
    (run.path / "lineage.json").write_text("{}")                            # and no lineage to compare with
    with pytest.raises(RunError, match="is not JSON"): load_estimator(run)
    assert not marker.exists()

def test_load_version_never_unpickles(every_slot, tmp_path):
    store, good = every_slot
    marker = tmp_path / "pwned"
    run = _copy_run(good, store, "registered")
    v = register_version(run, "ens")
    eq(v["artifact"]["path"], ESTIMATOR_MANIFEST)
    x = np.random.default_rng(1).standard_normal((4, 8, N_FEATURES)).astype(np.float32)
    np.testing.assert_allclose(load_version("ens", runs_dir=store).predict(x), load_estimator(good).predict(x), rtol=1e-6)
    _rehash(run, "m2.weights.npz", exec_pickle(marker))                    # changes the manifest the registry hashed
    with pytest.raises(QtnbError, match="changed since it was registered"): load_version("ens", runs_dir=store)
    reg = json.loads((store / "registry.json").read_text())                # a registry forged to vouch for model.pkl
    (run.path / "model.pkl").write_bytes(exec_pickle(marker))
    import hashlib
    reg["models"]["ens"]["versions"][0]["artifact"].update(path="model.pkl", sha256=hashlib.sha256(exec_pickle(marker)).hexdigest())
    (store / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(QtnbError, match="a pickle qtnb does not load"): load_version("ens", runs_dir=store)
    assert not marker.exists()

def _torch_run(store: Path, payload: bytes, name: str = "torch") -> Run:
    run = create_run(name, runs_dir=store, params={"data": DATA, "model": {"name": "mlp"},
                                                   "inputs": {"n_features": N_FEATURES, "seq_len": 8}})
    run.checkpoint_dir.mkdir(); (run.checkpoint_dir / "best.pt").write_bytes(payload)
    (run.checkpoint_dir / "last.pt").write_bytes(payload)
    run.set_status("completed")
    return run

def test_checkpoint_slots_never_unpickle(tmp_path):
    from qtnb.callbacks import load_state
    from qtnb.export import export_run
    store, marker = tmp_path / "store", tmp_path / "pwned"
    for i, payload in enumerate((exec_pickle(marker), torch_pickle(marker))):
        run = _torch_run(store, payload, f"torch{i}")
        for name in ("best", "last"):
            with pytest.raises(RunError): run.load_checkpoint(name)
        with pytest.raises(ConfigError): load_state(run.checkpoint_dir / "last.pt")          # the trainer's resume path
        register_version(run, f"planted{i}")                               # registering hashes, never loads
        with pytest.raises(QtnbError, match="cannot be loaded"): load_version(f"planted{i}", runs_dir=store)
        with pytest.raises(QtnbError): export_run(run.id, runs_dir=store)
    assert not marker.exists()

def test_export_and_pipelines_never_unpickle(tmp_path):
    from qtnb.pipeline import export
    store, marker = tmp_path / "store", tmp_path / "pwned"
    pkl = create_run("pkl", runs_dir=store, params={"data": DATA, "model": {"name": "linear"}})
    (pkl.path / "model.pkl").write_bytes(exec_pickle(marker)); pkl.set_status("completed")
    r = qtnb("export", pkl.id, "--runs-dir", store)
    eq(r.returncode, 1); assert "a pickle qtnb does not load" in one_line_error(r)
    run, model = _estimator_run(store)
    _rehash(run, "linear.json", exec_pickle(marker))
    r = qtnb("export", run.id, "--runs-dir", store)
    eq(r.returncode, 1); assert "linear.json" in one_line_error(r)
    ckpt = _torch_run(store, torch_pickle(marker))
    with pytest.raises(QtnbError): export(source_run=ckpt.id, runs_dir=str(store), verbose=False)
    with pytest.raises(QtnbError): export(source_run=pkl.id, runs_dir=str(store), verbose=False)
    assert not marker.exists()
    good, model = _estimator_run(store, "good")                           # the safe artifact exports
    r = qtnb("export", good.id, "--runs-dir", store)
    eq(r.returncode, 0); assert (good.path / "model.onnx").is_file()

def test_no_pickle_loading_left_in_the_package():
    "Nothing in qtnb unpickles: no pickle.load(s), no torch.load without weights_only=True, no allow_pickle=True."
    import re
    bad = []
    for f in (REPO / "qtnb").rglob("*.py"):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True|joblib\.load|cloudpickle", line) or \
               ("torch.load(" in line and "weights_only=True" not in line and not line.lstrip().startswith(("#", '"'))):
                bad.append(f"{f.relative_to(REPO)}:{i}: {line.strip()}")
    eq(bad, [])


# ---------------------------------------------------------------- names that become paths are slugs

BAD_NAMES = ["../escape", "a/b", "/tmp/abs", "..", "x..y"]

def test_run_model_and_sweep_names_are_refused_from_the_command_line(tmp_path):
    store = tmp_path / "store"
    run, _ = _estimator_run(store)
    before = sorted(p.name for p in tmp_path.iterdir())
    for run_name, model_name in (("../escape", "a/b"), ("/tmp/abs", "../x")):        # every kind in the Python test
        r = qtnb("run", "train", "-p", "data", "synthetic:planted", "-p", "model", "linear", "--name", run_name, "--runs-dir", store)
        eq(r.returncode, 2); assert f"run name {run_name!r} is not allowed" in one_line_error(r)
        r = qtnb("models", "register", run.id, model_name, "--runs-dir", store)
        eq(r.returncode, 2); assert f"model name {model_name!r} is not allowed" in one_line_error(r)
    r = qtnb("sweep", "train", "-p", "data", "synthetic:planted", "-g", "model", "linear,mlp", "--name", "../sweep", "--runs-dir", store)
    eq(r.returncode, 2); assert "sweep name '../sweep' is not allowed" in one_line_error(r)
    eq(sorted(p.name for p in tmp_path.iterdir()), before)
    eq([p.name for p in store.iterdir() if not p.name.startswith(".") and p.name != "sweeps"], [run.id])
    assert not (store / "sweeps").exists() or not any((store / "sweeps").iterdir())     # no sweep folder was made

def test_run_model_and_sweep_names_are_refused_in_python(tmp_path):
    from qtnb.pipeline import run_pipeline, sweep
    store = tmp_path / "store"
    run, _ = _estimator_run(store)
    for bad in [*BAD_NAMES, "nul\0byte", str(tmp_path / "abs")]:
        with pytest.raises(ConfigError, match="run name .* is not allowed"): create_run(bad, runs_dir=store)
        with pytest.raises(ConfigError, match="model name .* is not allowed"): register_version(run, bad)
        with pytest.raises(ConfigError, match="sweep name .* is not allowed"):
            sweep("train", {"model": ["linear"]}, {"data": "synthetic:planted"}, name=bad, runs_dir=store)
        with pytest.raises(ConfigError, match="is not allowed"):
            run_pipeline("train", {"data": "synthetic:planted", "model": "linear"}, name=bad, runs_dir=store)
    eq(sorted(p.name for p in tmp_path.iterdir()), ["store"])
    eq([p.name for p in store.iterdir() if not p.name.startswith(".") and p.name != "sweeps"], [run.id])
