"""The widgets in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium driven by Playwright.

Runs tests/notebooks/widgets_demo.ipynb in a fresh folder (its own run store) and checks what a person would see: the
LSTM's form, a preset changing values, the monitor's curve growing during a fit, Stop ending the fit early with the
run's status `stopped`, and the tuner panel listing trials. Screenshots land in tests/output/widgets_browser/.
"""
import json, os, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "tests" / "notebooks" / "widgets_demo.ipynb"
OUT = ROOT / "tests" / "output" / "widgets_browser"
JUPYTER = Path(sys.executable).parent / "jupyter"
# what the demo notebook shows: the LSTM form's fields, the preset the test picks and the value it sets
FORM_FIELDS = ["hidden_size", "num_layers", "dropout", "bidirectional"]
PRESET, PRESET_FIELD, PRESET_VALUE = "easy", "hidden_size", "32"
N_TRIALS = 4
RUN_STATUS = True
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def _wait_http(url: str, proc, timeout: float = 90):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")

def _start_lab(root: Path, log):
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"), "QTNB_WIDGETS": "widgets",
           "PATH": f"{JUPYTER.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("QTNB_SETTINGS", None)
    cmd = [str(JUPYTER), "lab", "--no-browser", f"--ServerApp.token={token}", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0", "--allow-root",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
    return proc, port, token

def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)

def _eventually(fn, timeout: float, what: str, every: float = 0.25):
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception as e: last = e   # the page is still drawing
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))

@pytest.mark.browser
@pytest.mark.timeout(300)
def test_widgets_in_jupyterlab():
    require(shutil.which("chromium") or Path("/usr/bin/chromium").exists(), "Chromium is not installed (apt-get install chromium)")
    try: from playwright.sync_api import sync_playwright
    except ImportError: require(False, "Python Playwright is not installed (pip install -e '.[dev]')")
    require(JUPYTER.exists(), f"jupyter is not installed next to {sys.executable} (pip install -e '.[dev]')")
    if OUT.exists(): shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="qtnb-lab-"))
    shutil.copy(NB, root / NB.name)
    log = open(OUT / "jupyterlab.log", "w")
    proc, port, token = _start_lab(root, log)
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(str(root / ".chromium"), executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                                       args=CHROMIUM_ARGS, headless=True, viewport={"width": 1400, "height": 1000})
            page = ctx.new_page()
            try: _drive(page, port, token, root)
            except BaseException:
                _shot(page, "failure")
                raise
            finally: ctx.close()
    finally:
        _stop(proc); log.close()
        shutil.rmtree(root, ignore_errors=True)

def _shot(page, name):
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=False)

def _field_value(row) -> str:
    "What a field row shows: its input's value, a slider's readout, or a select's choice."
    for sel in (".widget-readout", "input", "select"):
        loc = row.locator(sel)
        if loc.count():
            return loc.first.inner_text() if sel == ".widget-readout" else loc.first.input_value()
    return row.inner_text()

def _clear_dialogs(page):
    "Answer any JupyterLab dialog (a kernel choice after a failed kernel websocket, say) with its default button."
    for _ in range(3):
        d = page.locator(".jp-Dialog")
        if not d.count(): return
        try: d.locator(".jp-mod-accept").first.click(timeout=3_000)
        except Exception: page.keyboard.press("Escape")
        page.wait_for_timeout(500)

def _run_all(page, tries: int = 3):
    "Run > Run All Cells, answering a kernel dialog if JupyterLab shows one, until the first cell has run."
    started = lambda: page.locator(".jp-InputPrompt").filter(has_text="[1]").count() + \
                      page.locator(".jp-InputPrompt").filter(has_text="[*]").count() > 0
    for _ in range(tries):
        _clear_dialogs(page)                 # a dialog left open would take the click meant for the menu
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try: page.locator(".jp-Dialog .jp-mod-accept").click(timeout=3_000)
        except Exception: pass   # no dialog: the kernel was already chosen
        try:
            _eventually(started, 15, "the first cell to start")
            return
        except AssertionError: continue
    raise AssertionError("Run All Cells did not start the notebook")

def _drive(page, port, token, root):
    page.set_default_timeout(60_000)
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{NB.name}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    _eventually(lambda: "Idle" in page.locator(".jp-Notebook-ExecutionIndicator, #jp-main-statusbar").first.inner_text()
                or page.locator("[data-status='idle']").count() > 0, 90, "the kernel to start")
    _run_all(page)

    try: page.get_by_role("button", name="No", exact=True).click(timeout=2_000)   # JupyterLab's news toast
    except Exception: pass

    # the form: the model's fields, and a preset that changes them
    form = page.locator(".qtnb-config-form").first
    try: form.wait_for(timeout=30_000)
    except Exception:   # seen once: JupyterLab's first kernel websocket failed (500) and Run All ran only the first cell
        _shot(page, "run-all-retry"); _run_all(page); form.wait_for(timeout=60_000)
    for name in FORM_FIELDS: assert form.locator(f".qtnb-field-{name}").count() == 1, f"field {name} missing from the form"
    assert form.locator(".qtnb-field-hidden_size").is_visible() and not form.locator(".qtnb-field-bidirectional").is_visible()
    form.get_by_role("button", name="Show advanced").click()   # the advanced toggle reveals the rest
    _eventually(lambda: form.locator(".qtnb-field-bidirectional").is_visible(), 10, "advanced fields to show")
    head = form.locator(".qtnb-field-head_hidden")
    head.locator("input").fill("0")   # a layer of zero units: the message shows beside the field
    _eventually(lambda: head.locator(".qtnb-error").count() > 0, 20, "a validation message beside head_hidden")
    assert "greater than or equal to 1" in head.inner_text(), head.inner_text()
    _shot(page, "1b-form-invalid")
    head.locator("input").fill("")
    _eventually(lambda: head.locator(".qtnb-error").count() == 0, 20, "the message to clear")
    row = form.locator(f".qtnb-field-{PRESET_FIELD}")
    before = _field_value(row)
    form.scroll_into_view_if_needed(); _shot(page, "1-form")
    form.locator(".widget-dropdown select").first.select_option(PRESET)
    _eventually(lambda: _field_value(row) != before, 20, f"preset {PRESET!r} to change {PRESET_FIELD}")
    assert _field_value(row) == PRESET_VALUE, (_field_value(row), PRESET_VALUE)
    _shot(page, "2-form-preset")

    # the tuner panel lists the trials
    panel = page.locator(".qtnb-tuner-panel").first
    panel.wait_for(timeout=180_000)
    _eventually(lambda: panel.locator(".qtnb-trials-table tbody tr").count() >= N_TRIALS, 120, f"{N_TRIALS} trials in the table")
    assert panel.locator("circle[data-series='objective']").count() >= 1
    panel.scroll_into_view_if_needed(); _shot(page, "3-tuner")

    # the monitor: the curve grows during the fit, Stop ends it early, the run says `stopped`
    mon = page.locator(".qtnb-training-monitor").first
    mon.wait_for(timeout=120_000)
    points = lambda: mon.locator("circle[data-series='train_loss']").count()
    first = _eventually(points, 90, "the first points of the loss curve")
    _eventually(lambda: points() > first + 1, 90, "the loss curve to gain points")
    mon.scroll_into_view_if_needed(); _shot(page, "4-monitor-running")
    mon.locator("button.qtnb-stop").click()
    _eventually(lambda: mon.locator("[data-state='stopped']").count() > 0, 60, "the monitor to show 'stopped'")
    _shot(page, "5-monitor-stopped")
    text = mon.locator(".qtnb-progress-text").inner_text()
    done = int(text.split("epoch ")[1].split("/")[0]); total = int(text.split("/")[1].split()[0])
    assert done < total, f"the fit was not stopped early: {text}"
    if not RUN_STATUS: return
    statuses = [json.loads(p.read_text()) for p in root.glob("runs/*/status.json")]
    assert any(s.get("state") == "stopped" for s in statuses), statuses
