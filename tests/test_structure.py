"""The shape of the package, read from the `ast` of qtnb/: which module imports which, so a change that makes two
modules lean on each other (or makes the run store reach up into models or data) fails here and names the path."""
import ast
from pathlib import Path

import pytest
from fastcore.test import test_eq as eq

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "qtnb"


def module_files(pkg: Path = PKG) -> dict[str, Path]:
    "Every module of the package by dotted name (a package's `__init__` under the package's own name)."
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__": parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _target(name: str, mods: dict) -> str | None:
    "The package module that `name` (a module, or a module's attribute) lives in."
    while name and name not in mods: name = name.rpartition(".")[0]
    return name or None


def imports_of(mod: str, path: Path, mods: dict, root: str = "qtnb") -> dict[str, int]:
    "The package modules `mod` imports, at module level or inside a function, each with the first line that does it."
    tree = ast.parse(path.read_text(), filename=str(path))
    here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import): names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else: full = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` imports mod
            names = [f"{full}.{a.name}" if f"{full}.{a.name}" in mods else full for a in node.names]
        for n in names:
            if not (n == root or n.startswith(root + ".")): continue
            t = _target(n, mods)
            if t and t != mod: found.setdefault(t, node.lineno)
    return found


def import_graph(pkg: Path = PKG) -> dict[str, dict[str, int]]:
    mods = module_files(pkg)
    return {m: imports_of(m, p, mods, pkg.name) for m, p in mods.items()}


def find_cycle(graph: dict[str, dict]) -> list[str] | None:
    "One import circle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"; stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open": return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = "done"; stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None


def describe(cycle: list[str], graph: dict) -> str:
    return " -> ".join(cycle) + "  (" + "; ".join(f"{a} imports {b} at line {graph[a][b]}" for a, b in zip(cycle, cycle[1:])) + ")"


# ---------------------------------------------------------------- the checker itself
def test_the_checker_sees_module_and_function_level_circles(tmp_path):
    pkg = tmp_path / "pk"; (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(""); (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pk.sub import c\n")
    (pkg / "sub" / "c.py").write_text("import os\nfrom .. import a\n")
    g = import_graph(pkg)
    eq(g["pk.a"], {"pk.b": 1}); eq(g["pk.b"], {"pk.sub.c": 2}); eq(g["pk.sub.c"], {"pk.a": 2})
    eq(find_cycle(g), ["pk.a", "pk.b", "pk.sub.c", "pk.a"])
    (pkg / "sub" / "c.py").write_text("import os\n")
    eq(find_cycle(import_graph(pkg)), None)


# ---------------------------------------------------------------- the rules
def test_no_import_circle():
    g = import_graph()
    assert "qtnb.export" in g and "qtnb.runs" in g, sorted(g)
    cycle = find_cycle(g)
    assert cycle is None, f"import circle: {describe(cycle, g)}"


# The layers, lowest first (README: "Where a change belongs"): a module imports from its own layer or lower ones.
LAYERS = [("errors", "io", "config", "cluster"), ("runs",), ("datasets", "data", "panelstore"), ("models",), ("metrics",),
          ("callbacks", "tracking", "trainer", "distributed"), ("tuner",),
          ("modelfile", "export", "tensorrt", "registry", "predict", "serve"), ("pipeline", "report", "cli"), ("widgets",)]
# The calls that go up a layer, each for a reason; a new one fails until it is judged and listed here.
UPWARD = {("qtnb.pipeline.steps", "qtnb.widgets.charts"): "train(monitor=True) shows the live monitor in the pipeline notebook",
          ("qtnb.pipeline.steps", "qtnb.widgets.monitor"): "the same",
          ("qtnb.serve", "qtnb.pipeline"): "the server's job queue runs pipelines",
          ("qtnb.tracking", "qtnb.export"): "MLflow logging pushes the model as ONNX when asked",
          ("qtnb.trainer.folds", "qtnb.predict"): "a fold's run keeps what prediction needs to prepare new rows"}

def layer_of(mod: str) -> int | None:
    top = mod.split(".")[1] if mod.count(".") else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)

def upward_imports(graph: dict) -> dict[tuple, int]:
    out = {}
    for a, deps in graph.items():
        for b, line in deps.items():
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la: out[(a, b)] = line
    return out

def test_modules_import_their_own_layer_or_lower():
    g = import_graph()
    placed = {m.split(".")[1] for m in g if m.count(".") and m != "qtnb._modidx"}
    assert placed <= {n for names in LAYERS for n in names}, f"{sorted(placed - {n for ns in LAYERS for n in ns})} have no layer in LAYERS"
    up = upward_imports(g)
    new = {k: v for k, v in up.items() if k not in UPWARD}
    assert not new, "; ".join(f"{a} imports {b} (line {line}), a higher layer: move the code down, or list it in UPWARD with why" for (a, b), line in new.items())
    gone = set(UPWARD) - set(up)
    assert not gone, f"{sorted(gone)} no longer go up: take them out of UPWARD"
    eq(upward_imports({"qtnb.runs.store": {"qtnb.trainer.core": 3}, "qtnb.trainer.core": {"qtnb.runs.store": 1}}),
       {("qtnb.runs.store", "qtnb.trainer.core"): 3})


# The run store observes: it sits on config, errors and file helpers, never on what produces runs.
STORE_MAY_NOT_IMPORT = ("qtnb.models", "qtnb.data", "qtnb.trainer", "qtnb.tuner")

STORE_IMPORTS = ("qtnb", "qtnb.config", "qtnb.errors", "qtnb.io")   # `qtnb` itself: its version and location, for lineage

def test_the_run_store_imports_no_models_data_trainer_or_tuner():
    g = import_graph()
    store = [m for m in g if m == "qtnb.runs" or m.startswith("qtnb.runs.")]
    assert len(store) > 1, store                         # the package and its modules
    bad = {f"{s} imports {m} (line {line})" for s in store for m, line in g[s].items()
           if any(m == b or m.startswith(b + ".") for b in STORE_MAY_NOT_IMPORT)}
    assert not bad, f"{'; '.join(sorted(bad))}; rebuild models in qtnb.registry"
    # nor anything else above the file helpers: the store's modules lean on each other, config, errors and io only
    other = {f"{s} imports {m}" for s in store for m in g[s] if m not in STORE_IMPORTS and not m.startswith("qtnb.runs")}
    assert not other, f"the run store reaches beyond config, errors and io: {sorted(other)}"


def io_helpers_imported_elsewhere(pkg: Path = PKG) -> list[str]:
    "Every `from <pkg>.X import name` of one of io's names where X is not io: the file helpers have one home."
    import qtnb.io
    names, bad = set(qtnb.io.__all__), []
    for mod, path in module_files(pkg).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom): continue
            src = ("." * node.level) + (node.module or "")
            if src.rsplit(".", 1)[-1] in ("io", "") or not (node.level or src.startswith(pkg.name)): continue
            bad += [f"{mod} imports {a.name} from {src} (line {node.lineno}): import it from qtnb.io" for a in node.names if a.name in names]
    return bad

def test_the_file_helpers_are_imported_from_io_only(tmp_path):
    pkg = tmp_path / "qtnb"; pkg.mkdir()
    (pkg / "a.py").write_text("from .config import atomic_write\nfrom .io import plain\n")
    eq(io_helpers_imported_elsewhere(pkg), ["qtnb.a imports atomic_write from .config (line 1): import it from qtnb.io"])
    assert not io_helpers_imported_elsewhere(), io_helpers_imported_elsewhere()


def test_registry_functions_come_from_the_models_package():
    from qtnb.models import create_model, list_models, model_schema
    from qtnb.models import core
    assert (create_model, list_models, model_schema) == (core.create_model, core.list_models, core.model_schema)
    assert "mlp" in [m["name"] for m in list_models()]


# Optuna's internals (its private modules, a study's storage, a trial's storage id, ...) are reached only through the
# tuner's adapter, so an Optuna upgrade that changes them is fixed in one small module.
OPTUNA_ADAPTER = "qtnb.tuner.adapter"
OPTUNA_PRIVATE_ATTRS = {"_storage", "_backend", "_trial_id", "_study_id", "_cached_frozen_trial"}

def optuna_internals(path: Path) -> list[tuple[int, str]]:
    "Lines that import a private Optuna module or name, or read a private attribute of Optuna's objects, with what they do."
    private = lambda name: name.split(".")[0] == "optuna" and any(p.startswith("_") for p in name.split(".")[1:])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(node.lineno, f"imports {a.name}") for a in node.names if private(a.name)}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if private(node.module): out.add((node.lineno, f"imports {node.module}"))
            else: out |= {(node.lineno, f"imports {node.module}.{a.name}") for a in node.names if private(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE_ATTRS:
            out.add((node.lineno, f"reads .{node.attr}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in OPTUNA_PRIVATE_ATTRS):
            out.add((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
    return sorted(out)


def test_optuna_internals_only_in_the_tuner_adapter(tmp_path):
    (tmp_path / "m.py").write_text("import optuna\nfrom optuna.storages._rdb import models\nfrom optuna.storages import _CachedStorage, RDBStorage\n"
                                   "def f(study, t):\n    return study._storage, getattr(t, '_trial_id'), study.trials, t.number\n")
    eq(optuna_internals(tmp_path / "m.py"), [(2, "imports optuna.storages._rdb"), (3, "imports optuna.storages._CachedStorage"),
                                             (5, "getattr(..., '_trial_id')"), (5, "reads ._storage")])
    mods = module_files()
    found = {m: optuna_internals(p) for m, p in mods.items() if m != OPTUNA_ADAPTER}
    found = {m: f for m, f in found.items() if f}
    assert not found, f"Optuna internals outside {OPTUNA_ADAPTER} (add a function there, with the missing public API named): {found}"
    # the adapter is where they are, each use with a comment naming the public API Optuna lacks (on its line or just above)
    lines = mods[OPTUNA_ADAPTER].read_text().splitlines()
    uses = optuna_internals(mods[OPTUNA_ADAPTER])
    assert uses, f"{OPTUNA_ADAPTER} uses no Optuna internals: the check above looks at nothing"
    bare = [(n, what) for n, what in uses if not any("missing" in l for l in lines[max(0, n - 3):n])]
    assert not bare, f"{OPTUNA_ADAPTER}: uses of Optuna internals without a '# missing: <public API>' comment: {bare}"


def bolted_methods(path: Path) -> list[int]:
    "Lines of module-level `Class.a, Class.b = f, g` assignments (methods bolted on after the class, not in it or by @patch)."
    tree = ast.parse(path.read_text())
    def on_class(t): return isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id[:1].isupper()
    lines = []
    for node in tree.body:
        if not isinstance(node, ast.Assign): continue
        targets = [e for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
        if targets and all(on_class(t) for t in targets): lines.append(node.lineno)
    return lines


# Modules that still bolt methods on with `Class.x = f` lines. Each one converted (methods in the class, or fastcore's
# @patch next to their prose) leaves this list; when it is empty the rule is simply "no such lines".
STILL_BOLTED: set[str] = set()

def test_no_new_class_attribute_assignment_lines(tmp_path):
    (tmp_path / "m.py").write_text("class A: pass\ndef f(self): pass\nA.f, A.g = f, f\nA.h = property(f)\nx = A.f\n")
    eq(bolted_methods(tmp_path / "m.py"), [3, 4])
    found = {m: bolted_methods(p) for m, p in module_files().items()}
    found = {m: ls for m, ls in found.items() if ls}
    new = {m: ls for m, ls in found.items() if m not in STILL_BOLTED}
    assert not new, f"methods bolted on with `Class.x = f` (put them in the class or use @patch): {new}"
    done = STILL_BOLTED - set(found)
    assert not done, f"{sorted(done)} no longer bolt methods on: take them out of STILL_BOLTED"


def test_trainer_exports_no_bare_method_names():
    import qtnb.trainer as T
    methods = {n for n in T.__all__ if callable(getattr(T.Trainer, n, None))}
    assert not methods, f"qtnb.trainer.__all__ exports Trainer methods as bare functions: {sorted(methods)}"
    for n in ("fit", "test", "predict", "evaluate"): assert callable(getattr(T.Trainer, n))


# ---------------------------------------------------------------- notebooks as lessons, modules of one job
NBS = ROOT / "nbs"
MIN_EXAMPLE_RATIO = 0.4      # example lines per exported line (fastcore's notebooks: 0.6-1.7)
MAX_EXPORT_CELL = 60         # lines of one exported cell
MAX_MODULE_LINES = 700

def notebook_shape(path: Path) -> tuple[int, int, list[int]]:
    "(exported lines, example lines, sizes of the exported cells over MAX_EXPORT_CELL) of a module notebook; blank and `#|` lines not counted."
    import json, re
    exported, examples, long = 0, 0, []
    for c in json.loads(path.read_text())["cells"]:
        if c["cell_type"] != "code": continue
        lines = "".join(c["source"]).splitlines()
        flags = " ".join(l for l in lines if re.match(r"\s*#\s*\|", l))
        body = [l for l in lines if l.strip() and not re.match(r"\s*#\s*\|", l)]
        if re.search(r"\|\s*exporti?\b", flags):
            exported += len(body)
            if len(body) > MAX_EXPORT_CELL: long.append(len(body))
        elif "default_exp" not in flags: examples += len(body)
    return exported, examples, long

def module_notebooks() -> dict[str, Path]:
    return {p.stem: p for p in sorted(NBS.glob("*.ipynb")) if "default_exp" in p.read_text()}

# Every module notebook reaches MIN_EXAMPLE_RATIO and every exported cell is at most MAX_EXPORT_CELL lines; every module
# is at most MAX_MODULE_LINES. The lists of exceptions that the restructuring worked down are empty (2026-12-05), and
# the checks below keep them so: a notebook or module that falls short fails here, by name.
THIN: dict[str, float] = {}
LONG_CELLS: dict[str, int] = {}
BIG_MODULES: dict[str, int] = {}

def test_the_lesson_counter_counts_exported_and_example_lines(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| default_exp x"),
        nbformat.v4.new_code_cell("#| export\ndef f(x):\n\n    return x\n"), nbformat.v4.new_code_cell("test_eq(f(1), 1)"),
        nbformat.v4.new_code_cell("#| export\n" + "y = 1\n" * 61), nbformat.v4.new_markdown_cell("prose\nmore")])
    nbformat.write(nb, tmp_path / "x.ipynb")
    eq(notebook_shape(tmp_path / "x.ipynb"), (63, 1, [61]))

def test_notebooks_carry_examples_and_small_exported_cells():
    report, bad = [], []
    for name, path in module_notebooks().items():
        exported, examples, long = notebook_shape(path)
        if not exported: continue
        ratio = examples / exported
        report.append(f"{name}: {ratio:.2f} example lines per exported line, {len(long)} exported cells over {MAX_EXPORT_CELL} lines")
        floor = THIN.get(name)
        if floor is None and ratio < MIN_EXAMPLE_RATIO: bad.append(f"{name} has {ratio:.2f} example lines per exported line (< {MIN_EXAMPLE_RATIO})")
        if floor is not None and ratio < floor: bad.append(f"{name} fell to {ratio:.2f} example lines per exported line (its floor: {floor})")
        if floor is not None and ratio >= MIN_EXAMPLE_RATIO: bad.append(f"{name} reaches {ratio:.2f}: take it out of THIN")
        most = LONG_CELLS.get(name, 0)
        if len(long) > most: bad.append(f"{name} has {len(long)} exported cells over {MAX_EXPORT_CELL} lines {long} (at most {most})")
        if name in LONG_CELLS and not long: bad.append(f"{name} has no exported cell over {MAX_EXPORT_CELL} lines: take it out of LONG_CELLS")
    print("\n".join(report))
    assert not bad, "; ".join(bad)
    gone = (set(THIN) | set(LONG_CELLS)) - set(module_notebooks())
    assert not gone, f"{sorted(gone)} are no module notebooks: take them out of THIN / LONG_CELLS"

def test_modules_stay_under_700_lines():
    bad = []
    for mod, path in module_files().items():
        if mod == "qtnb._modidx": continue
        n = len(path.read_text().splitlines())
        most = BIG_MODULES.get(mod, MAX_MODULE_LINES)
        if n > most: bad.append(f"{mod} has {n} lines (at most {most}: split it by job)")
        if mod in BIG_MODULES and n <= MAX_MODULE_LINES: bad.append(f"{mod} is down to {n} lines: take it out of BIG_MODULES")
    assert not bad, "; ".join(bad)
