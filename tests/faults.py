"""Fault-injection cases shared by the tests/test_faults*.py files: the processes, the run-store checks, the cases and
a runner that drives the selected cases of one file in parallel threads (each case its own processes and run store)."""
import json, os, random, re, resource, shutil, signal, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
import yaml

from qtnb.runs import process_alive

BIN = Path(sys.executable).parent
QTNB = str(BIN / "qtnb")
REPO = Path(__file__).resolve().parent.parent
WORKER = str(Path(__file__).with_name("fault_worker.py"))
SEED = int(os.environ.get("QTNB_FAULT_SEED", "13"))
TRAIN = ["-p", "data", "synthetic:random_walk", "-p", "seq_len", "8"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
       "OMP_NUM_THREADS": "1"}

# -- processes -------------------------------------------------------------------------------------------------

def _limited(nbytes):
    "A preexec_fn: the child (and its kernel) cannot grow a file past `nbytes`; SIGXFSZ ignored, so writes fail with EFBIG."
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.RLIM_INFINITY))
    return setup

def spawn(cmd, log: Path, fsize=None) -> subprocess.Popen:
    "Start `cmd` in its own session (so the test can clean up every process it made), output to `log`."
    f = open(log, "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=REPO, start_new_session=True,
                            preexec_fn=_limited(fsize) if fsize else None)

def qtnb_cmd(*args, runs):
    return [QTNB, *map(str, args), "--runs-dir", str(runs)]

def run_cmd(cmd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)

def wait_until(pred, timeout=300.0, what="condition"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v: return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

def finish(p: subprocess.Popen, timeout=240) -> int:
    try: return p.wait(timeout=timeout)
    finally:
        with_group(p, signal.SIGKILL)

def with_group(p: subprocess.Popen, sig) -> None:
    "Send `sig` to everything left of the process group `p` leads (a sweep's workers and kernels)."
    try: os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError): pass

# -- the run store ---------------------------------------------------------------------------------------------

def run_dirs(runs: Path) -> list[Path]:
    top = [d for d in runs.iterdir() if d.is_dir() and d.name != "sweeps" and not d.name.startswith(".")]
    return top + [d for t in top for d in (t / "folds").glob("*") if d.is_dir()]

def status(run: Path) -> dict:
    try: st = json.loads((run / "status.json").read_text())
    except (OSError, ValueError): return {}
    return st if isinstance(st, dict) else {}

def newest_run(runs: Path) -> Path | None:
    ds = [d for d in runs.iterdir() if (d / "status.json").is_file()] if runs.is_dir() else []
    return max(ds, key=lambda d: d.name) if ds else None

def valid(p: Path) -> bool:
    "Whether a run-store file is whole: parses, or (checkpoints) loads with weights_only."
    try:
        if p.suffix == ".json": return isinstance(json.loads(p.read_text()), dict)
        if p.suffix == ".yaml": return isinstance(yaml.safe_load(p.read_text()) or {}, dict)
        if p.suffix == ".csv": return p.stat().st_size == 0 or len(pd.read_csv(p).columns) > 0
        if p.suffix == ".pt": return isinstance(torch.load(p, weights_only=True, map_location="cpu"), dict)
        if p.suffix == ".ipynb":
            nbformat.validate(nbformat.read(p, as_version=4)); return True
    except Exception: return False
    return True

RUN_FILES = ("status.json", "metrics.json", "params.yaml", "lineage.json", "history.csv", "notebook.ipynb")

def check_store(runs: Path, *, damaged=(), case="") -> dict:
    "The checks every case ends with; the states of the runs by id."
    problems, states = [], {}
    for d in run_dirs(runs):           # nothing left behind: the processes the records name end (a kernel follows its parent)
        st = status(d)
        if st.get("pid") and st.get("pid") != os.getpid():
            try: wait_until(lambda: process_alive(st) is not True, timeout=30, what=f"process {st['pid']} to end")
            except AssertionError as e: problems.append(f"{d.name}: {e}")
    for d in run_dirs(runs):
        for f in [d / n for n in RUN_FILES] + sorted((d / "checkpoints").glob("[!.]*.pt")):
            if f.exists() and f not in damaged and not valid(f): problems.append(f"{f} is not valid")
        st = status(d)
        states[d.name] = st.get("state")
        if st.get("state") == "running" and not (st.get("pid") and st.get("host") and st.get("pid_start")):
            problems.append(f"{d.name} says running, and its record names no process readers can check: {st}")
    r = run_cmd([QTNB, "runs", "list", "--runs-dir", str(runs), "-n", "1000"], timeout=120)
    if r.returncode != 0 or "Traceback" in r.stderr: problems.append(f"qtnb runs list failed: {r.stderr[-800:]}")
    for rid in states:
        if rid not in r.stdout and not any(rid in str(p) for p in run_dirs(runs) if p.parent.name == "folds"):
            problems.append(f"qtnb runs list does not show {rid}")
    assert not problems, f"{case}: " + "; ".join(problems)
    return states

def rerun_cli(runs: Path):
    r = run_cmd(qtnb_cmd("run", "train", *TRAIN, "-p", "num_epochs", "1", "-q", runs=runs))
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    assert "completed: run" in r.stdout

def resume_api(runs: Path, rid: str, epochs: int):
    r = run_cmd([sys.executable, WORKER, str(runs), "resume", rid, str(epochs)])
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
    st = status(runs / rid)
    assert st["state"] == "completed", st

def one_line(text: str) -> list[str]:
    "The lines qtnb printed about an ending (no tracebacks allowed anywhere)."
    assert "Traceback" not in text, text[-3000:]
    return [l for l in text.splitlines() if l.startswith("qtnb: ")]

# -- cases: qtnb run train, signalled or killed --------------------------------------------------------------------

SIGS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGHUP": signal.SIGHUP, "SIGKILL": signal.SIGKILL}

def case_cli_signal(tmp: Path, rng: random.Random, sig: str, target: str, when: str, validation="holdout"):
    runs = tmp / "runs"; runs.mkdir()
    extra = ["-p", "validation", "walk_forward", "-p", "n_folds", "2"] if validation == "walk_forward" else []
    p = spawn(qtnb_cmd("run", "train", *TRAIN, *extra, "-p", "num_epochs", "300", runs=runs), tmp / "log.txt")
    try:
        if when == "start":                                  # as soon as the run exists: the kernel may not be up yet
            run = wait_until(lambda: newest_run(runs), what="the run folder")
            time.sleep(rng.uniform(0, 1.0))
        else:                                                # mid-training, after a random number of epochs
            run = wait_until(lambda: newest_run(runs), what="the run folder")
            k = rng.randint(1, 3)
            def trained():
                h = [run / "history.csv"] + list((run / "folds").glob("*/history.csv"))
                return any(f.is_file() and len(f.read_text().splitlines()) > k for f in h)
            wait_until(trained, what=f"{k} epochs")
            time.sleep(rng.uniform(0, 0.5))
        st = status(run)
        pid = p.pid if target == "cli" else st["pid"]
        if target == "kernel": assert pid != p.pid and st.get("launcher_pid") == p.pid, st
        os.kill(pid, SIGS[sig])
        rc = finish(p)
    finally: with_group(p, signal.SIGKILL)
    out = (tmp / "log.txt").read_text()
    states = check_store(runs, case=f"{sig} to {target}")
    st = status(run)
    if sig == "SIGKILL" and target == "cli":
        # nothing could write: the record must let readers see the run is gone (the kernel follows its parent)
        assert st["state"] in ("running", "interrupted", "completed"), st   # completed: the kernel finished its last epoch first
        assert st["state"] == "completed" or process_alive(st) is False, st
    elif sig == "SIGKILL":
        assert rc == 1, (rc, out[-2000:])
        assert st["state"] == "interrupted" and "kernel died" in st["error"], st
        assert (run / "notebook.ipynb").is_file()           # the record of what ran is still saved
    else:
        assert rc == 128 + SIGS[sig] if target == "cli" else rc in (1, 128 + SIGS[sig]), (rc, out[-2000:])
        lines = one_line(out)
        assert len(lines) == 1 and sig in lines[0] or target == "kernel", lines
        assert st["state"] == "interrupted" and sig in st.get("error", ""), st
        # the record is saved once papermill has begun (a signal before that leaves no kernel and no notebook)
        assert (run / "notebook.ipynb").is_file() or when == "start" and not st.get("heartbeat"), st
        assert all(s != "running" for s in states.values()), states
    rerun_cli(runs)

# -- cases: qtnb sweep ------------------------------------------------------------------------------------------

def case_sweep_signal(tmp: Path, rng: random.Random, sig: str, workers: int):
    runs = tmp / "runs"; runs.mkdir()
    p = spawn(qtnb_cmd("sweep", "train", *TRAIN, "-p", "num_epochs", "300", "-g", "seed", "1,2,3", "--workers", workers,
                       runs=runs), tmp / "log.txt")
    try:
        wait_until(lambda: any(status(d).get("heartbeat") for d in run_dirs(runs)), what="a sweep run's kernel")
        time.sleep(rng.uniform(0, 2.0))
        os.kill(p.pid, SIGS[sig])
        if sig == "SIGKILL":
            time.sleep(1.0)
            check_live = {d.name: status(d) for d in run_dirs(runs)}
            with_group(p, signal.SIGKILL)                   # the orphaned workers and kernels, as an OOM kill would
            rc = p.wait(60)
        else: rc = finish(p)
    finally: with_group(p, signal.SIGKILL)
    out = (tmp / "log.txt").read_text()
    states = check_store(runs, case=f"sweep {sig}")
    if sig == "SIGKILL":
        for d in run_dirs(runs):
            st = status(d)
            # a dead process readers can check; no heartbeat is asked for: a run the kill caught in the milliseconds
            # between its record and its kernel's first beat has none (seen once under CI)
            if st.get("state") == "running": assert process_alive(st) is False, st
    else:
        assert rc == 128 + SIGS[sig], (rc, out[-2000:])
        lines = one_line(out)
        assert lines and sig in lines[-1] and "summary.csv" in lines[-1], lines
        assert set(states.values()) <= {"completed", "interrupted"} and "interrupted" in states.values(), states
        assert all(sig in status(d).get("error", "") for d in run_dirs(runs) if status(d).get("state") == "interrupted")
        summary = next((runs / "sweeps").glob("*/summary.csv"))
        assert "interrupted" in summary.read_text()
    rerun_cli(runs)

# -- cases: a Python-API Trainer.fit ------------------------------------------------------------------------------

def case_api_signal(tmp: Path, rng: random.Random, sig: str):
    runs = tmp / "runs"; runs.mkdir()
    p = subprocess.Popen([sys.executable, WORKER, str(runs), "fit", "400"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, cwd=REPO, start_new_session=True)
    try:
        rid = p.stdout.readline().strip()
        run = runs / rid
        k = rng.randint(1, 4)
        # k epochs logged and a checkpoint saved: the signal then lands while training goes on, and the case resumes
        # from last.pt (a signal between the first history row and the first checkpoint leaves none to resume from)
        wait_until(lambda: (run / "history.csv").is_file() and len((run / "history.csv").read_text().splitlines()) > k
                   and (run / "checkpoints" / "last.pt").is_file(), what=f"{k} epochs and a checkpoint")
        time.sleep(rng.uniform(0, 0.3))
        os.kill(p.pid, SIGS[sig])
        _, err = p.communicate(timeout=120)
    finally: with_group(p, signal.SIGKILL)
    check_store(runs, case=f"fit {sig}")
    st = status(run)
    if sig == "SIGKILL":
        assert st["state"] == "running" and process_alive(st) is False and st["pid"] == p.pid and st["heartbeat"], st
    else:
        assert st["state"] == "interrupted" and sig in st["error"], st
        assert "RunInterrupted" in err, err[-1000:]
    assert (run / "checkpoints" / "last.pt").is_file()
    resume_api(runs, rid, k + 3)

STARVE = {   # what the file-size limit hits first: (hook, epoch, bytes, file it must name)
    "checkpoint": ("epoch_end", 2, 4096, "last.pt"),              # status (~1 kB) still fits: the run says failed
    "checkpoint-first": ("epoch_end", 1, 4096, "last.pt"),
    "history": ("epoch_start", 3, 1, "history.csv"),             # nothing fits, not even status: the record tells
    "history-first": ("epoch_start", 1, 1, "history.csv"),
    "metrics": ("train_end", 0, 600, "metrics.json"),             # ~850 B; status may or may not fit
    "everything": ("train_end", 0, 1, "metrics.json"),
}

def case_api_full_disk(tmp: Path, rng: random.Random, what: str):
    runs = tmp / "runs"; runs.mkdir()
    hook, epoch, nbytes, name = STARVE[what]
    r = run_cmd([sys.executable, WORKER, str(runs), "fit", "4", hook, str(epoch), str(nbytes)])
    rid = r.stdout.splitlines()[0].strip()
    run = runs / rid
    assert r.returncode != 0
    last = [l for l in r.stderr.splitlines() if l.strip()][-1]
    assert re.search(rf"DiskFull: no space left on device writing \S*{re.escape(name)}", last), r.stderr[-2000:]
    assert "unexpected pos" not in r.stderr
    check_store(runs, case=f"full disk at {what}")
    st = status(run)
    if nbytes >= 4096:
        assert st["state"] == "failed" and "no space left on device" in st["error"] and name in st["error"], st
    else: assert st["state"] in ("running", "failed") and process_alive(st) is False, st
    assert not [f for f in run.rglob(".*.tmp")], "a temporary file was left behind"
    if (run / "checkpoints" / "last.pt").is_file(): resume_api(runs, rid, 5)
    else:
        r = run_cmd([sys.executable, WORKER, str(runs), "fit", "2"])
        assert r.returncode == 0, r.stderr[-1500:]

def case_api_write_full(tmp: Path, rng: random.Random, what: str, template: Path):
    "One write of each kind over a finished run, under a 1 kB limit: DiskFull naming the file, the old file intact."
    runs = tmp / "runs"; shutil.copytree(template, runs)
    run = newest_run(runs)
    name = {"status": "status.json", "params": "params.yaml", "metrics": "metrics.json", "history": "history.csv",
            "checkpoint": "checkpoints/last.pt"}[what]
    before = (run / name).read_bytes()
    r = run_cmd([sys.executable, WORKER, str(runs), "write", run.name, what, "1024"])
    assert r.returncode != 0 and f"no space left on device writing {run / name}" in r.stderr, r.stderr[-2000:]
    assert (run / name).read_bytes() == before
    assert not [f for f in run.rglob(".*.tmp")]
    check_store(runs, case=f"full disk writing {what}")
    resume_api(runs, run.name, 5)

def case_cli_full_disk(tmp: Path, rng: random.Random, what: str):
    runs = tmp / "runs"; runs.mkdir()
    nbytes = {"notebook": 1 << 20, "checkpoint": 30_000}[what]   # the first save of the record is ~8 kB
    p = spawn(qtnb_cmd("run", "train", *TRAIN, "-p", "num_epochs", "2", runs=runs), tmp / "log.txt", fsize=nbytes)
    rc = finish(p)
    out = (tmp / "log.txt").read_text()
    assert rc == 1, out[-2000:]
    lines = one_line(out)
    run = newest_run(runs)
    st = status(run)
    check_store(runs, case=f"qtnb run with a full disk at the {what}")
    assert st["state"] == "failed" and "no space left on device" in st["error"], st
    if what == "notebook":
        assert lines == [f"qtnb: error: {st['error']}"] and "notebook.ipynb" in st["error"], (lines, st)
        assert not (run / "notebook.ipynb").exists() or valid(run / "notebook.ipynb")   # an earlier save, never half a one
        assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.json").is_file()
    else:
        assert "last.pt" in st["error"] or "best.pt" in st["error"], st
        assert len(lines) == 1 and ("failed" in lines[0] or "no space left on device" in lines[0]), lines
    assert not [f for f in run.rglob(".*.tmp")]
    rerun_cli(runs)

# -- cases: damaged run files ---------------------------------------------------------------------------------------

DAMAGE = {
    "status-garbage": ("status.json", lambda b: b"{garbage"),
    "status-truncated": ("status.json", lambda b: b[: len(b) // 2]),
    "status-not-object": ("status.json", lambda b: b"[1, 2]"),
    "status-empty": ("status.json", lambda b: b""),
    "params-bad-yaml": ("params.yaml", lambda b: b"model: [unclosed\n  - x: {"),
    "history-garbage": ("history.csv", lambda b: bytes(range(256)) * 4),
    "metrics-truncated": ("metrics.json", lambda b: b[: len(b) // 3]),
    "lineage-garbage": ("lineage.json", lambda b: b"\x00\x01not json"),
    "last-truncated": ("checkpoints/last.pt", lambda b: b[: len(b) // 2]),
    "best-truncated": ("checkpoints/best.pt", lambda b: b[:100]),
}

def case_damaged(tmp: Path, rng: random.Random, what: str, template: Path):
    runs = tmp / "runs"; shutil.copytree(template, runs)
    run = newest_run(runs)
    name, damage = DAMAGE[what]
    f = run / name
    f.write_bytes(damage(f.read_bytes()))
    check_store(runs, damaged={f}, case=f"damaged {name}")
    r = run_cmd([QTNB, "runs", "show", run.name, "--runs-dir", str(runs)], timeout=120)
    assert "Traceback" not in r.stderr and (r.returncode == 0 or len(r.stderr.strip().splitlines()) == 1), r.stderr[-2000:]
    if name.startswith("checkpoints/last"):                  # resuming from it: one clear line naming the file
        r = run_cmd([sys.executable, WORKER, str(runs), "resume", run.name, "5"])
        assert r.returncode != 0 and f"checkpoint {f} cannot be loaded" in r.stderr.splitlines()[-1], r.stderr[-1500:]
    r = run_cmd([sys.executable, WORKER, str(runs), "fit", "2"])   # a new run in the same store
    assert r.returncode == 0, r.stderr[-1500:]
    check_store(runs, damaged={f}, case=f"damaged {name}, after a rerun")

# -- the cases -------------------------------------------------------------------------------------

CASES = {}
for sig in ("SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"):
    for when in ("start", "training"):
        CASES[f"cli-{sig}-cli-{when}"] = (case_cli_signal, dict(sig=sig, target="cli", when=when))
    CASES[f"cli-{sig}-kernel"] = (case_cli_signal, dict(sig=sig, target="kernel", when="training"))
    CASES[f"api-{sig}"] = (case_api_signal, dict(sig=sig))
CASES["cli-SIGTERM-cli-walk-forward"] = (case_cli_signal, dict(sig="SIGTERM", target="cli", when="training", validation="walk_forward"))
CASES["cli-SIGKILL-kernel-walk-forward"] = (case_cli_signal, dict(sig="SIGKILL", target="kernel", when="training", validation="walk_forward"))
for sig, workers in (("SIGTERM", 1), ("SIGINT", 1), ("SIGTERM", 2), ("SIGINT", 2), ("SIGHUP", 2), ("SIGKILL", 2)):
    CASES[f"sweep-{sig}-workers{workers}"] = (case_sweep_signal, dict(sig=sig, workers=workers))
for what in STARVE: CASES[f"full-disk-fit-{what}"] = (case_api_full_disk, dict(what=what))
for what in ("status", "params", "metrics", "history", "checkpoint"):
    CASES[f"full-disk-write-{what}"] = (case_api_write_full, dict(what=what, template=None))
for what in ("notebook", "checkpoint"): CASES[f"full-disk-cli-{what}"] = (case_cli_full_disk, dict(what=what))
for what in DAMAGE: CASES[f"damaged-{what}"] = (case_damaged, dict(what=what, template=None))


def make_template(tmp_path_factory) -> Path:
    "A run store holding one finished Python-API run, copied by the cases that damage or overwrite its files."
    runs = tmp_path_factory.mktemp("template")
    r = run_cmd([sys.executable, WORKER, str(runs), "fit", "3"])
    assert r.returncode == 0, r.stderr[-2000:]
    return runs

def run_cases(request, tmp_path_factory) -> dict:
    """Run every selected case of the calling test file at once (threads; each drives its own processes) and keep each
    one's exception. The case files are separate so that pytest-xdist's `loadfile` gives each its own worker."""
    selected = [it.callspec.params["case"] for it in request.session.items
                if it.originalname == "test_fault" and hasattr(it, "callspec") and it.module is request.module]
    template = make_template(tmp_path_factory) if any("template" in CASES[c][1] for c in selected) else None
    def one(cid):
        fn, kw = CASES[cid]
        kw = {k: (template if k == "template" else v) for k, v in kw.items()}
        tmp = tmp_path_factory.mktemp(cid)
        try: fn(tmp, random.Random(f"{SEED}-{cid}"), **kw); return None
        except BaseException as e: return e
    with ThreadPoolExecutor(max_workers=int(os.environ.get("QTNB_FAULT_WORKERS", "2"))) as ex:
        return dict(zip(selected, ex.map(one, selected)))


def fault_tests(selected: list[str]):
    """The module fixture and the parametrized `test_fault` of one test file running the cases `selected`: each case is
    reported as its own test, all of them driven at once by `run_cases`."""
    @pytest.fixture(scope="module")
    def outcomes(request, tmp_path_factory) -> dict:
        return run_cases(request, tmp_path_factory)

    @pytest.mark.timeout(3600)
    @pytest.mark.parametrize("case", selected)
    def test_fault(case, outcomes):
        e = outcomes[case]
        if e is not None: raise e
    return outcomes, test_fault
