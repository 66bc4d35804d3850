"""Faults during `qtnb run tune`: kill -9, SIGTERM and SIGINT at random (seeded) points with 1 and 4 workers, to the
whole process tree or to the qtnb process alone. After each no run says `running` without a live process, the study
opens, the dashboard serves it, and the same command again completes the budget with exactly n_trials complete trials.
(A file of its own so that pytest-xdist's loadfile gives these slow cases a worker apart from the other tune faults.)"""
import signal, zlib

import pytest
from fastcore.test import test_eq as eq

from tune_faults import budget_complete, dashboard_serves, kill_at_random_point, no_ghosts, open_study, run, tune_cmd

pytestmark = pytest.mark.slow   # each case runs `qtnb run tune` (a kernel, trials, sometimes 4 workers) twice

KILLS = [(sig, workers, target) for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) for workers in (1, 4) for target in ("tree",)]
KILLS += [(signal.SIGKILL, 4, "top"), (signal.SIGTERM, 4, "top")]   # the qtnb process alone: its kernel and workers must follow


@pytest.mark.parametrize("sig,workers,target", KILLS, ids=[f"{s.name}-w{w}-{t}" for s, w, t in KILLS])
def test_signal_at_a_random_point_then_rerun(tmp_path, sig, workers, target):
    runs = tmp_path / "runs"
    cmd = tune_cmd(runs, workers=workers)
    kill_at_random_point(cmd, runs, sig, target, seed=zlib.crc32(f"{sig.name}{workers}{target}".encode()) % 1000)
    no_ghosts(runs)
    open_study(runs)                       # the study still opens
    dashboard_serves(runs)
    r = run(cmd)                           # the same command completes the budget
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    no_ghosts(runs)
    st = budget_complete(runs)
    retried = [t for t in st.trials if t.system_attrs.get("failed_trial") is not None]
    for t in retried:                      # a retry kept the parameters of the trial it replaces
        first = st.trials[t.system_attrs["failed_trial"]]
        if first.params: eq(t.params, first.params)      # a trial stopped before it sampled has no parameters to repeat
