"""A training process for tests/test_faults.py: a Python-API `Trainer.fit` with a run, which the tests kill, signal,
or starve of disk space (a file-size limit set from inside, at a chosen hook), then resume.

    python fault_worker.py RUNS_DIR fit EPOCHS [HOOK EPOCH NBYTES]   # a new run; prints its id first
    python fault_worker.py RUNS_DIR resume RUN_ID EPOCHS             # fit again from the run's last.pt
    python fault_worker.py RUNS_DIR write RUN_ID WHAT NBYTES         # one run-store write under a file-size limit
"""
import resource, signal, sys

from qtnb.runs import create_run, open_run

MODEL = {"name": "mlp", "hidden_sizes": [32, 32]}

def limit_file_size(nbytes: int) -> None:
    "From now on no file of this process grows past `nbytes` (writes fail with EFBIG, as on a full disk)."
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(nbytes), resource.RLIM_INFINITY))

def starve(hook: str, epoch: int, nbytes: int):
    "A callback that sets the file-size limit at one point of the fit (imported here: a `write` needs only the run store)."
    from qtnb.callbacks import Callback

    class Starve(Callback):
        """Set the file-size limit at one point of the fit: `epoch_start` (history is the next write), `epoch_end` (after the
        epoch's history row, before its checkpoints) or `train_end` (metrics, then status, are next)."""
        order = 50                                    # after the trainer logged the epoch, before Checkpoint (order 100)
        def __init__(self, hook: str, epoch: int, nbytes: int): self.hook, self.at, self.nbytes = hook, epoch, nbytes
        def on_train_epoch_start(self, trainer, epoch):
            if self.hook == "epoch_start" and epoch == self.at: limit_file_size(self.nbytes)
        def on_train_epoch_end(self, trainer, metrics):
            if self.hook == "epoch_end" and metrics["epoch"] == self.at: limit_file_size(self.nbytes)
        def on_train_end(self, trainer):
            if self.hook == "train_end": limit_file_size(self.nbytes)
    return Starve(hook, epoch, nbytes)

def fit(run, epochs: int, callbacks=(), resume=None):
    from qtnb.trainer import Trainer, toy_windows    # here: a `write` needs only the run store
    tr, va = toy_windows(2048, seed=0), toy_windows(512, seed=1)
    Trainer(MODEL, num_epochs=epochs, batch_size=64, learning_rate=1e-3, early_stopping_patience=0, importance=False,
            run=run, callbacks=list(callbacks)).fit(tr, va, resume=resume)

if __name__ == "__main__":
    runs, mode = sys.argv[1], sys.argv[2]
    if mode == "fit":
        run = create_run("fault", runs_dir=runs)
        print(run.id, flush=True)
        cbs = [starve(sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))] if len(sys.argv) > 4 else []
        fit(run, int(sys.argv[3]), cbs)
    elif mode == "resume":
        fit(open_run(sys.argv[3], runs_dir=runs), int(sys.argv[4]), resume="last")
    elif mode == "write":
        run, what = open_run(sys.argv[3], runs_dir=runs), sys.argv[4]
        limit_file_size(int(sys.argv[5]))
        if what == "status": run.set_status("running", note="x" * 4000)
        elif what == "params": run.write_params({**run.params, "note": "x" * 4000})
        elif what == "metrics": run.write_metrics({"val": {f"m{i}": float(i) for i in range(400)}})
        elif what == "history": run.log_epoch({"epoch": 99, **{f"c{i}": float(i) for i in range(400)}})
        elif what == "checkpoint":
            import torch
            run.save_checkpoint({"w": torch.zeros(100_000)}, "last")
    print("done", flush=True)
