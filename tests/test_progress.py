"""ProgressBar in a real kernel: lines where nobody watches (as papermill and nbconvert run cells), a live bar where
someone does (as JupyterLab runs them)."""
import os, re

from fastcore.test import test_eq as eq

CELL = """
from qtnb.callbacks import ProgressBar, watched
from qtnb.trainer import Trainer, TrainConfig, toy_windows
from qtnb.models.core import create_model
w = toy_windows(256)
m = create_model({'name': 'mlp', 'hidden_sizes': [8]}, n_features=w.n_features, seq_len=w.seq_len)
print('watched', watched())
Trainer(m, TrainConfig(num_epochs=3, batch_size=64, early_stopping_patience=0), callbacks=[ProgressBar()]).fit(w, w)
"""


def test_progress_lines_under_nbclient_and_a_bar_when_watched(tmp_path):
    from jupyter_client.manager import start_new_kernel
    env = {k: v for k, v in os.environ.items() if k != "QTNB_WIDGETS"}
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:
        def run(allow_stdin):
            out, displays = [], []
            def hook(m):
                if m["msg_type"] == "stream": out.append(m["content"]["text"])
                if m["msg_type"] in ("display_data", "update_display_data"): displays.append(m)
            kc.execute_interactive(CELL, allow_stdin=allow_stdin, timeout=300, output_hook=hook, stdin_hook=lambda m: None)
            return "".join(out), displays
        text, displays = run(False)                  # as nbclient (papermill, nbconvert) runs a cell
        assert "watched False" in text, text
        eq(re.findall(r"^epoch (\d)/3 train_loss \S+ val_loss \S+", text, flags=re.M), ["1", "2", "3"])
        eq(displays, [])                             # no widget bar to freeze at 0% in the record
        text, displays = run(True)                   # as JupyterLab runs one: tqdm's widget bar, no lines
        assert "watched True" in text and "epoch 1/3" not in text, text
        assert displays, "no progress widget shown"
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
