"""A sweep on a Dask cluster against the same sweep in local worker processes (issue: beyond one process).

Both contestants run the same RUNS-run sweep of the train pipeline (a linear model on the synthetic random walk, each
run a papermill kernel writing its run folder), two runs at a time: `sweep(..., workers=2)` in local processes, and
`sweep(..., scheduler=cluster)` on a LocalCluster of 2 worker processes with 1 thread each, started once before the
measurement (a user's cluster is already running). Measured side by side by tests/bench/_timing.py in rotating
rounds after a warm-up of each. Figure, defined before anything is measured:

  dask_sweep_vs_local   kind matched (same runs, same parallelism, same threads), goal >= 0.9: median wall time of the
                        local sweep over median wall time of the Dask sweep (1.0: Dask costs nothing; 0.9: 11% slower).

Run from the repo root with no arguments: python tests/bench/bench_cluster.py (about 2-3 minutes on 2 cores, quiet).
"""
import os, sys, tempfile
from pathlib import Path

from _timing import Bench, emit, interleaved, ratio

RUNS, ROUNDS = 4, 2
os.environ.setdefault("OMP_NUM_THREADS", "1")
tmp = Path(tempfile.mkdtemp(prefix="qtnb-bench-cluster-"))

from distributed import LocalCluster   # noqa: E402
from qtnb.pipeline import sweep       # noqa: E402

GRID = {"seed": list(range(RUNS))}
PARAMS = {"data": "synthetic:random_walk", "seq_len": 8, "model": "linear"}


def local():
    table, _ = sweep("train", GRID, PARAMS, workers=2, runs_dir=tmp / "local")
    assert (table["sweep_state"] == "completed").all(), table


def on_dask():
    table, _ = sweep("train", GRID, PARAMS, runs_dir=tmp / "dask", scheduler=cluster.scheduler_address)
    assert (table["sweep_state"] == "completed").all(), table


if __name__ == "__main__":
    with Bench("cluster", runs=RUNS, rounds=ROUNDS, parallel=2, cluster="LocalCluster(2 processes x 1 thread)"):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1") as cluster:
            got = interleaved({"local": local, "dask": on_dask}, ROUNDS)
        r, q = ratio(got["local"], got["dask"])
        emit("dask_sweep_vs_local", r, ">= 0.9", "matched", quartiles=q, local_s=got["local"].summary(), dask_s=got["dask"].summary())
