"""The tune pipeline's saved report through the real command line: a 6-trial study's notebook has the objective column,
slice, contour and parallel-coordinate plots and a best-trial section; the streamed output has no ANSI codes and no
Optuna log lines next to the pipeline's own one line per trial (k/n with an ETA)."""
import re, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from fastcore.test import test_eq as eq

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent

@pytest.mark.slow
def test_tune_report_of_six_trials(tmp_path):
    r = subprocess.run([str(BIN / "qtnb"), "run", "tune", "-p", "data", "synthetic:planted", "-p", "model", "mlp", "-p", "epochs", "1",
                        "-p", "seq_len", "8", "-p", "n_trials", "6", "--runs-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "\x1b[" not in out, [l for l in out.splitlines() if "\x1b[" in l][:3]
    assert "Trial 0 finished with value" not in out                       # Optuna's own INFO line
    done = [int(k) for k in re.findall(r"^trial (\d+)/6 #\d+ ", r.stdout, flags=re.M)]
    eq(done, [1, 2, 3, 4, 5, 6])                                          # the pipeline's line, once per trial, k/n
    assert len(re.findall(r"ETA \d+", r.stdout)) == 5, r.stdout[-2000:]   # every line but the last has an ETA
    run = next(p for p in tmp_path.iterdir() if (p / "status.json").exists() and p.name.startswith("2") and "tune" in p.name)
    nb = nbformat.read(run / "notebook.ipynb", as_version=4)
    def outputs_after(heading: str) -> list:
        i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith(heading))
        return [o for c in nb.cells[i + 1:i + 3] if c.cell_type == "code" for o in c.get("outputs", [])]
    def plotly(heading: str) -> list:
        return [o["data"]["application/vnd.plotly.v1+json"] for o in outputs_after(heading) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    for h in ("## Slices", "## Contours", "## Parallel coordinates", "## Best trial"): assert plotly(h) or h == "## Best trial", h
    eq(len(plotly("## Best trial")), 1)                                   # the best trial's learning curves
    table = next(o["data"]["text/html"] for o in outputs_after("## Trials") if "text/html" in o.get("data", {}))
    assert "value_val_loss" in table or ">value<" in table, table[:500]
    imp = "".join(o.get("text", "") for o in outputs_after("## Parameter importances"))
    assert "too few for parameter importances" in imp
