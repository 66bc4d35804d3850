"""JupyterLab and Chromium for browser tests: one server (127.0.0.1, a token, its own folder) and one headless browser per
test module (the `lab` fixture), notebooks written into that folder and run there, saved, converted to HTML with
nbconvert in a process with no network, and the HTML opened with every request off the machine refused."""
import contextlib, json, os, re, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

import nbformat
import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = Path(sys.executable).parent / "jupyter"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

def chromium() -> str:
    return shutil.which("chromium") or "/usr/bin/chromium"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

SLOW = float(os.environ.get("QTNB_BROWSER_SLOW", "3"))   # a loaded CI machine (3 test workers on 2 cores) is this much slower

def eventually(fn, timeout: float, what: str, every: float = 0.25):
    "`fn()` once it is truthy, polling every `every` s; AssertionError naming `what` after `timeout` x SLOW s."
    t0, last, timeout = time.monotonic(), None, timeout * SLOW
    while time.monotonic() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception as e: last = e   # the page is still drawing
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last})" if last else ""))

def _wait_http(url: str, proc, timeout: float = 90):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200: return
        except OSError: time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s")

def clear_dialogs(page):
    "Answer any JupyterLab dialog (a kernel choice after a failed kernel websocket, say) with its default button."
    for _ in range(3):
        d = page.locator(".jp-Dialog")
        if not d.count(): return
        try: d.locator(".jp-mod-accept").first.click(timeout=3_000)
        except Exception: page.keyboard.press("Escape")
        page.wait_for_timeout(500)

class Lab:
    "A JupyterLab server in a scratch folder and a Chromium page on it."
    def __init__(self, out: Path):
        self.out, self.root = out, Path(tempfile.mkdtemp(prefix="qtnb-lab-"))
        self.port, self.token = free_port(), secrets.token_hex(16)
        env = {**os.environ, "JUPYTER_CONFIG_DIR": str(self.root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(self.root / ".runtime"),
               "JUPYTERLAB_WORKSPACES_DIR": str(self.root / ".workspaces"), "QTNB_WIDGETS": "widgets",
               "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x),
               "PATH": f"{JUPYTER.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("QTNB_SETTINGS", None)
        self.env = env
        cmd = [str(JUPYTER), "lab", "--no-browser", f"--ServerApp.token={self.token}", f"--port={self.port}", "--ip=127.0.0.1",
               f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0", "--allow-root", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        self.log = open(out / "jupyterlab.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/api/status?token={self.token}", self.proc)

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(15)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def api(self, method: str, path: str):
        req = urllib.request.Request(f"{self.url}/api/{path}?token={self.token}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r: return json.loads(r.read() or b"null")

    @contextlib.contextmanager
    def notebook(self, ctx, name: str, cells: list, selector: str, run: int | None = None):
        "A page on notebook `name` (from `cells`) run (all, or cell `run`), with its first `selector` once drawn; closed after."
        page = ctx.new_page(); page.set_default_timeout(60_000)
        try:
            self.write(name, cells)
            self.open(page, name)
            if run is None: self.run_all(page)
            else: self.run_cell(page, run)
            el = page.locator(selector).first
            el.wait_for(timeout=120_000)
            yield page, el
        finally: page.close(); self.shutdown_kernels()

    def shutdown_kernels(self):
        "Stop every kernel (the previous test's notebook), so the next test has the CPUs."
        for s in self.api("GET", "sessions") or []: self.api("DELETE", f"sessions/{s['id']}")

    # --- notebooks ---
    def write(self, name: str, cells: list[str]) -> Path:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, self.root / name)
        return self.root / name

    def open(self, page, name: str):
        "Open notebook `name` in the page and wait for its kernel."
        page.goto(f"{self.url}/lab/tree/{name}?reset&token={self.token}")   # reset: only this notebook open
        page.wait_for_selector(".jp-Notebook:visible .jp-Cell", timeout=90_000)
        eventually(lambda: page.evaluate("() => { const w = window.jupyterapp.shell.currentWidget;"
                                         " return !!(w && w.sessionContext && w.sessionContext.session"
                                         " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle'); }"),
                   90, "the kernel to start")

    def run_all(self, page, tries: int = 3):
        "Run every cell, answering a kernel dialog if JupyterLab shows one, until the first cell has started."
        started = lambda: page.locator(".jp-InputPrompt").filter(has_text="[1]").count() + \
                          page.locator(".jp-InputPrompt").filter(has_text="[*]").count() > 0
        for _ in range(tries):
            clear_dialogs(page)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            try: page.locator(".jp-Dialog .jp-mod-accept").click(timeout=2_000)
            except Exception: pass   # no dialog: the kernel was already chosen
            try:
                eventually(started, 15, "the first cell to start")
                return
            except AssertionError: continue
        raise AssertionError("Run All Cells did not start the notebook")

    def run_cell(self, page, index: int):
        "Run the notebook's cell `index` alone."
        page.evaluate(f"() => {{ window.jupyterapp.shell.currentWidget.content.activeCellIndex = {index};"
                      " return window.jupyterapp.commands.execute('notebook:run-cell'); }")

    def idle(self, page, timeout: float = 120):
        "Wait until no cell is running."
        eventually(lambda: page.locator(".jp-InputPrompt").filter(has_text="[*]").count() == 0
                   and page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status") == "idle",
                   timeout, "the notebook to finish")

    def save(self, page, name: str, check, timeout: float = 60) -> dict:
        "Save the notebook from the page until the file on disk passes `check(nb)`; the saved notebook."
        def saved():
            page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
            page.wait_for_timeout(500)
            nb = nbformat.read(self.root / name, as_version=4)
            return nb if check(nb) else None
        return eventually(saved, timeout, f"{name} saved with its final state", every=1.0)

    def to_html(self, name: str) -> str:
        "nbconvert's HTML of the saved notebook, converted in a process with no network at all."
        html = self.out / (Path(name).stem + ".html")
        cmd = [str(JUPYTER), "nbconvert", "--to", "html", str(self.root / name), "--output", str(html)]
        if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
            cmd = ["unshare", "-rn", *cmd]   # its own network namespace: loopback only, and down
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=self.env)
        assert r.returncode == 0, r.stderr[-2000:]
        return html.read_text()

    def view_offline(self, ctx, html: str):
        "A page showing `html` from a file with every request off the file refused; (page, console errors)."
        page, errors = ctx.new_page(), []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
        path = self.out / f"offline-{secrets.token_hex(4)}.html"
        path.write_text(html)
        page.goto(path.as_uri())
        return page, errors

def script_sources(html: str) -> set[str]:
    "The `src` of every script tag in `html`."
    return set(re.findall(r'<script[^>]*\bsrc="([^"]+)"', html))

def template_sources() -> set[str]:
    "The scripts nbconvert's own page template loads (require.js, MathJax): an empty notebook's HTML has them too."
    from nbconvert import HTMLExporter
    return script_sources(HTMLExporter().from_notebook_node(nbformat.v4.new_notebook())[0])

def plotted(locator, name: str | None = None) -> int:
    "Points plotly has drawn in the live charts under `locator` (JupyterLab's plotly renderer), of traces named `name` (any when None)."
    return locator.evaluate("(el, name) => Array.from(el.querySelectorAll('.js-plotly-plot')).flatMap(gd => gd.data || [])"
                            ".filter(t => name === null || t.name === name).reduce((n, t) => n + (t.x ? t.x.length : 0), 0)", name)

def plotly_figures(html: str) -> list[dict]:
    "The figures qtnb's static copies draw in `html`: their data and layout, from the `Plotly.newPlot` calls."
    out, dec = [], json.JSONDecoder()
    for m in re.finditer(r'id="(qtnb-fig-[0-9a-f]+)"', html):
        at = html.find("Plotly.newPlot(gd,", m.end())
        if at < 0: continue
        data, end = dec.raw_decode(html, at + len("Plotly.newPlot(gd,"))
        layout, _ = dec.raw_decode(html, end + 1)
        out.append({"id": m[1], "data": data, "layout": layout})
    return out

def start(out: Path):
    "Skip (fail under CI) without Chromium, Playwright or JupyterLab; else the Lab, the playwright and the browser context."
    require(Path(chromium()).exists(), "Chromium is not installed (apt-get install chromium)")
    try: from playwright.sync_api import sync_playwright
    except ImportError: require(False, "Python Playwright is not installed (pip install -e '.[dev]')")
    require(JUPYTER.exists(), f"jupyter is not installed next to {sys.executable} (pip install -e '.[dev]')")
    if out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True)
    lab = Lab(out)
    pw = sync_playwright().start()
    ctx = pw.chromium.launch_persistent_context(str(lab.root / ".chromium"), executable_path=chromium(), args=CHROMIUM_ARGS,
                                                headless=True, viewport={"width": 1400, "height": 1000})
    return lab, pw, ctx

@pytest.fixture(scope="module")
def lab(request):
    "One JupyterLab server and one Chromium per test module: (lab, browser context)."
    out = ROOT / "tests" / "output" / Path(request.module.__file__).stem
    lab, pw, ctx = start(out)
    try: yield lab, ctx
    finally:
        try: ctx.close()
        finally:
            pw.stop(); lab.close()
