"Parquet panels larger than memory: the memory-mapped store gives the in-memory numbers, is cached by file identity, refuses bad input."
import json, os, shutil, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qtnb.data import DataConfig, prepare
from qtnb.datasets import random_walk
from qtnb.errors import DataError, QtnbError
from qtnb.models.core import create_model
from qtnb.panelstore import StoredPrepared, open_store
from qtnb.trainer import Trainer, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def write_panel(folder: Path, n_symbols: int, n: int, *, target_bytes: int | None = None, start_seed: int = 0) -> tuple[int, int]:
    """A hive-partitioned panel of random walks (`symbol=S00000/part-0.parquet`), written one symbol (one row group) at a
    time, float64 OHLCV without compression; with `target_bytes`, symbols are added until the files reach that size.
    Returns (symbols written, bytes on disk)."""
    size, k = 0, 0
    while (k < n_symbols) if target_bytes is None else (size < target_bytes):
        df = random_walk(n, seed=start_seed + k).rename_axis("date").reset_index()
        d = folder / f"symbol=S{k:05d}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), d / "part-0.parquet", compression="none", use_dictionary=False)
        size += (d / "part-0.parquet").stat().st_size
        k += 1
    return k, size


def in_memory(folder: Path) -> pd.DataFrame:
    "The same panel read whole into memory, symbols in the store's (folder) order."
    parts = [pq.read_table(f).to_pandas().assign(symbol=f.parent.name.split("=", 1)[1])
             for f in sorted(folder.glob("symbol=*/*.parquet"))]
    return pd.concat(parts).set_index("date")


CFG = dict(features=["default", "mom_5"], seq_len=8, validation="walk_forward", n_folds=3)


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("panel") / "hive"
    write_panel(folder, 4, 400)
    return folder


def same_windows(wa, wb):
    assert len(wa) == len(wb) > 0
    xa, ya = wa[:]
    xb, yb = wb[:]
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(wa.end_dates) == list(wb.end_dates)
    assert (wa.symbols is None and wb.symbols is None) or list(wa.symbols) == list(wb.symbols)
    assert np.array_equal(wa.forward_returns, wb.forward_returns, equal_nan=True)


@pytest.mark.parametrize("extra", [dict(), dict(validation="holdout", scaler_scope="pooled"), dict(target="direction"),
                                   dict(horizons=[1, 3], purge=3, scaler="minmax")])
def test_store_equals_memory(panel, tmp_path, extra):
    "Windows, scaled features, scalers, splits and targets of the memory-mapped panel equal those of the panel in memory."
    mem = prepare(DataConfig(**{**CFG, **extra}, cache=False), in_memory(panel))
    disk = prepare(DataConfig(**{**CFG, **extra}, data=str(panel)), cache=tmp_path)
    assert isinstance(disk, StoredPrepared) and isinstance(disk._F, np.memmap)
    assert disk.feature_names == mem.feature_names and disk.plan == mem.plan
    assert np.array_equal(disk.features.to_numpy(), mem.features.to_numpy(), equal_nan=True)
    for fm, fd in zip(mem.folds, disk.folds, strict=True):
        for role in ("train", "val", "test"):
            if getattr(fm, role) is None: assert getattr(fd, role) is None; continue
            same_windows(getattr(fm, role), getattr(fd, role))
        assert not fd.train.x.numpy().flags.owndata and type(fd.train).__name__ == "StoredWindows"   # a map, not a copy
        for s in mem._symbol_names:
            assert np.array_equal(fm.symbol_scalers.get(s, fm.scaler).center, fd.symbol_scalers.get(s, fd.scaler).center)
            assert np.array_equal(fm.symbol_scalers.get(s, fm.scaler).scale, fd.symbol_scalers.get(s, fd.scaler).scale)


def test_trained_predictions_equal(panel, tmp_path):
    "An MLP trained on the store predicts exactly what the same MLP trained on the in-memory panel predicts."
    out = []
    for P in (prepare(DataConfig(**CFG, cache=False), in_memory(panel)), prepare(DataConfig(**CFG, data=str(panel)), cache=tmp_path)):
        fold = P.folds[-1]
        seed_everything(0)
        m = create_model({"name": "mlp", "hidden_sizes": [16]}, n_features=len(P.feature_names), seq_len=8)
        tr = Trainer(m, num_epochs=2, batch_size=64, early_stopping_patience=0, importance=False, device="cpu", seed=0)
        tr.fit(fold.train, fold.val)
        out.append(tr.predict(fold.test))
    assert out[0].shape == out[1].shape and np.array_equal(out[0], out[1])


def test_single_file_and_single_series(panel, tmp_path):
    "One Parquet file sorted by symbol, and a file of one series, prepare as their frames in memory do."
    df = in_memory(panel)
    df.reset_index().to_parquet(tmp_path / "panel.parquet")
    a, b = prepare(DataConfig(**CFG, cache=False), df), prepare(DataConfig(**CFG, data=str(tmp_path / "panel.parquet")), cache=tmp_path)
    same_windows(a.folds[0].train, b.folds[0].train)
    one = random_walk(500, seed=3)
    one.to_parquet(tmp_path / "one.parquet")
    a, b = prepare(DataConfig(**CFG, cache=False), one), prepare(DataConfig(**CFG, data=str(tmp_path / "one.parquet")), cache=tmp_path)
    assert b.symbol_col is None
    same_windows(a.folds[1].val, b.folds[1].val)


def test_cache_reused_and_rebuilt(panel, tmp_path):
    "The second prepare maps the store the first built; a rewritten file builds a new one and removes the old."
    src = tmp_path / "hive"
    write_panel(src, 3, 300)
    c = DataConfig(**CFG, data=str(src))
    first = prepare(c, cache=tmp_path / "cache")
    second = prepare(c, cache=tmp_path / "cache")
    assert first.store.built and not second.store.built and first.store.folder == second.store.folder
    assert prepare(c.model_copy(update={"horizon": 2}), cache=tmp_path / "cache").store.folder == first.store.folder
    write_panel(src, 1, 300, start_seed=7)                               # S00000 rewritten with other prices
    third = prepare(c, cache=tmp_path / "cache")
    assert third.store.built and third.store.folder != first.store.folder and not first.store.folder.exists()
    fresh = in_memory(src)
    assert np.array_equal(third.frame["Close"].to_numpy(), fresh["Close"].to_numpy())
    assert not np.array_equal(third.frame["Close"].to_numpy()[:300], np.asarray(first.frame["Close"].to_numpy()[:300]))


KILL = textwrap.dedent("""
    import os, signal, sys
    import qtnb.panelstore as ps
    real, n = ps._block, [0]
    def dying(*a, **k):
        n[0] += 1
        if n[0] == 3: os.kill(os.getpid(), signal.SIGKILL)        # killed half way through the conversion
        return real(*a, **k)
    ps._block = dying
    from qtnb.data import DataConfig, prepare
    prepare(DataConfig(features=["logret_1", "vol_5"], seq_len=8, data=sys.argv[1]), cache=sys.argv[2])
""")


def test_kill_mid_conversion_leaves_nothing_trusted(tmp_path):
    "A conversion killed half way leaves a temporary folder only; the next prepare builds a whole store and sweeps it."
    src, cache = tmp_path / "hive", tmp_path / "cache"
    write_panel(src, 5, 300)
    r = subprocess.run([sys.executable, "-c", KILL, str(src), str(cache)], cwd=ROOT, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    left = list((cache / "panels").iterdir())
    assert len(left) == 1 and ".tmp-" in left[0].name and not (left[0] / "meta.json").exists()
    P = prepare(DataConfig(features=["logret_1", "vol_5"], seq_len=8, data=str(src)), cache=cache)
    assert P.store.built and len(P.store.names) == 5
    assert [d.name for d in (cache / "panels").iterdir()] == [P.store.folder.name]


def one_line(e) -> str:
    s = str(e)
    assert s and "\n" not in s, repr(s)
    return s


def test_hostile_inputs(tmp_path):
    "Bad panels are refused with one line naming the column, symbol or file and the fix."
    def err(folder_or_file, match, **kw):
        with pytest.raises(DataError) as e:
            prepare(DataConfig(features=["default"], seq_len=8, data=str(folder_or_file), **kw), cache=tmp_path / "cache")
        assert match in one_line(e.value), str(e.value)
    base = random_walk(200, seed=0).rename_axis("date").reset_index()
    def hive(name, frames):
        for s, f in frames.items():
            (tmp_path / name / f"symbol={s}").mkdir(parents=True, exist_ok=True)
            f.to_parquet(tmp_path / name / f"symbol={s}" / "part-0.parquet")
        return tmp_path / name
    err(hive("nohigh", {"AAA": base.drop(columns="High")}), "no column 'High' (feature 'range' needs it")
    err(hive("noclose", {"AAA": base.drop(columns="Close")}), "no column 'Close' (it is the price column")
    err(hive("unsorted", {"AAA": base, "BBB": base.iloc[::-1]}), "symbol 'BBB' (symbol=BBB): timestamps of the series are not sorted")
    err(hive("mixed", {"AAA": base, "BBB": base.assign(Close=base.Close.map("{:.2f}".format))}), "symbol 'BBB' (symbol=BBB): column 'Close' is not numeric")
    (tmp_path / "twofiles" / "symbol=AAA").mkdir(parents=True)
    base.iloc[:100].to_parquet(tmp_path / "twofiles" / "symbol=AAA" / "a.parquet")
    base.iloc[100:].assign(Volume=base.Volume.iloc[100:].astype("int64")).to_parquet(tmp_path / "twofiles" / "symbol=AAA" / "b.parquet")
    err(tmp_path / "twofiles", "different column types")
    err(hive("nans", {"AAA": base.assign(Close=base.Close.where(base.index != 50))}), "symbol 'AAA' (symbol=AAA): column 'Close' has 1 NaN")
    err(hive("short", {"AAA": base.iloc[:20]}), "symbol 'AAA' has 20 rows")
    pd.concat([base.assign(symbol="A"), base.assign(symbol="B")]).sort_values("date", kind="stable").to_parquet(tmp_path / "bydate.parquet")
    err(tmp_path / "bydate.parquet", "rows of symbol 'A' in data file")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    err(tmp_path / "garbage.parquet", "cannot read data file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(QtnbError) as e: prepare(DataConfig(data=str(tmp_path / "empty")), cache=tmp_path / "cache")
    assert "is a directory" in one_line(e.value)
    (tmp_path / "two" / "symbol=A" / "day=1").mkdir(parents=True)
    (tmp_path / "two" / "market=X").mkdir(parents=True)
    err(tmp_path / "two", "partitioned by several columns")
    assert not list((tmp_path / "cache" / "panels").glob("*.tmp-*"))   # no half-built store left behind by a refusal


def test_cli_train_on_parquet_folder(tmp_path):
    "`qtnb run train -p data <folder>` trains on a partitioned Parquet panel."
    src = tmp_path / "hive"
    write_panel(src, 3, 300)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(Path(sys.executable).parent / "qtnb"), "run", "train", "-p", "data", str(src), "-p", "model", "mlp",
                        "-p", "epochs", "1", "-p", "seq_len", "8", "--runs-dir", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    runs = [d for d in (tmp_path / "runs").iterdir() if (d / "status.json").exists()]
    assert len(runs) == 1 and json.loads((runs[0] / "status.json").read_text())["state"] == "completed"
    assert json.loads((runs[0] / "metrics.json").read_text())["test"]["n"] > 0
    assert (tmp_path / "runs" / ".cache" / "panels").is_dir()


BIG = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    from qtnb.data import DataConfig, prepare
    from qtnb.models.core import create_model
    from qtnb.panelstore import RESIDENT
    from qtnb.trainer import Trainer, seed_everything
    c = DataConfig(data=sys.argv[1], features=["logret_1", "vol_20"], seq_len=8, validation="holdout",
                   train_frac=0.1, val_frac=0.02, test_frac=0.02)
    P = prepare(c, cache=sys.argv[2])
    fold = P.folds[0]
    train, val = fold.train, fold.val
    t1 = time.perf_counter()
    seed_everything(0)
    m = create_model({"name": "mlp", "hidden_sizes": [16]}, n_features=len(P.feature_names), seq_len=8)
    res = Trainer(m, num_epochs=1, batch_size=4096, early_stopping_patience=0, importance=False, device="cpu").fit(train, val)
    print(json.dumps(dict(rows=int(P.store.rows), symbols=len(P.store.names), train=len(train), val=len(val), epochs=res.epochs,
                          val_loss=float(res.history["val_loss"].iloc[-1]), prepare_s=t1 - t0, train_s=time.perf_counter() - t1,
                          trims=RESIDENT.trims, watcher_alive=RESIDENT._thread.is_alive())))
""")


def run_measured(args: list[str], tmp: Path) -> tuple[dict, int]:
    "Run BIG in a subprocess; (what it printed, its peak resident memory in bytes, from the kernel's rusage of that child)."
    with open(tmp / "out.txt", "w+b") as out, open(tmp / "err.txt", "w+b") as err:
        p = subprocess.Popen([sys.executable, "-c", BIG, *args], cwd=ROOT, stdout=out, stderr=err,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(p.pid, 0)                     # this child's own rusage (ru_maxrss: KiB on Linux)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0); err.seek(0)
        assert p.returncode == 0, err.read().decode()[-3000:]
        return json.loads(out.read().decode().strip().splitlines()[-1]), usage.ru_maxrss * 1024


@pytest.mark.slow
def test_4gb_panel_prepares_and_trains_under_1_5gb(tmp_path):
    "A 4 GB Parquet panel (random walks, thousands of symbols) prepares and trains an MLP one epoch with peak RSS < 1.5 GB."
    folder = tmp_path / "hive"
    try:
        t = time.perf_counter()
        k, size = write_panel(folder, 0, 12000, target_bytes=4 * 10**9)
        made = time.perf_counter() - t
        res, peak = run_measured([str(folder), str(tmp_path / "cache")], tmp_path)
        print(f"\n{size / 1e9:.2f} GB, {k} symbols, {res['rows']:,} rows: generated in {made:.0f} s, prepared in "
              f"{res['prepare_s']:.0f} s, one epoch of {res['train']:,} windows in {res['train_s']:.0f} s, peak RSS {peak / 1e9:.2f} GB")
        assert size >= 4 * 10**9 and res["rows"] == k * 12000 and res["symbols"] == k > 1000
        assert res["epochs"] == 1 and res["train"] > 0.08 * res["rows"] and np.isfinite(res["val_loss"])
        assert peak < 1.5e9, f"peak RSS {peak / 1e9:.2f} GB"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
