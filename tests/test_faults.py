"""Fault injection, each case a real process: `qtnb run train`, `qtnb sweep` and a Python-API `Trainer.fit`, killed
(-9), signalled (SIGTERM, SIGINT, SIGHUP) at random points (seeded: QTNB_FAULT_SEED), starved of disk space (a
file-size limit, which makes writes fail as a full disk does) during checkpoint, history, status, metrics, params and
notebook writes, or left with damaged run files. After each one:

- no run says `running` unless its record names a process that is alive, or one that readers can tell is gone
  (a pid, host and start time; and a heartbeat); runs stopped by a signal say `interrupted` themselves;
- every status, metrics, params, lineage, history, notebook and checkpoint file that is there is valid (parses; the
  checkpoints load with `weights_only=True`), except the one a case damaged on purpose;
- no kernel or trainer process is left behind;
- `qtnb runs list` works, and a rerun (or a resume from the last checkpoint) completes.

The cases are independent and spread over four files (this one, test_faults_kernel.py, test_faults_sweep.py and
test_faults_disk.py), which pytest-xdist runs on different workers; in each file a fixture runs the selected cases
in parallel threads (each case drives its own processes in its own run store; QTNB_FAULT_WORKERS, default 2), and each case is reported as its own test.
"""
import nbformat

from faults import CASES, fault_tests

SELECTED = [c for c in CASES if c.startswith("cli-") and "-cli-" in c]

outcomes, test_fault = fault_tests(SELECTED)

def test_there_are_enough_cases():
    "Every case is in exactly one of the test_faults*.py files."
    import test_faults_disk, test_faults_kernel, test_faults_sweep
    files = [SELECTED, test_faults_kernel.SELECTED, test_faults_sweep.SELECTED, test_faults_disk.SELECTED]
    assert sorted(c for f in files for c in f) == sorted(CASES) and len(CASES) >= 40, len(CASES)

def test_no_interrupt_reaches_a_kernel_that_is_shutting_down(tmp_path):
    """The kernel manager qtnb gives papermill sends no SIGINT before the shutdown request (jupyter_client's does, and an
    idle ipykernel then prints 'KeyboardInterrupt caught in kernel' after a successful run)."""
    import papermill as pm
    from qtnb.pipeline.notebook import _kernel_manager, _papermill_setup
    mark = tmp_path / "sigint"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        # ipykernel puts back `saved_sigint_handler` after each cell: make that a handler which leaves a mark
        f"get_ipython().kernel.saved_sigint_handler = lambda *a: open({str(mark)!r}, 'a').write('x')")])
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
    src = tmp_path / "in.ipynb"; nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_manager_class=_kernel_manager(),
                        engine_name=_papermill_setup(), progress_bar=False)
    assert not mark.exists()
