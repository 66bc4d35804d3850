"""Project-level checks of the foundation: settings discovery, packaged data, offline loading."""
import os, socket, subprocess, sys
from pathlib import Path

import pytest
from fastcore.test import test_eq as eq, test_fail as fails

import qtnb
from qtnb.config import TrainConfig, find_settings, load_settings, runs_dir
from qtnb.datasets import load_sp500

ROOT = Path(__file__).resolve().parents[1]

def test_settings_found_from_any_folder(monkeypatch):
    monkeypatch.delenv("QTNB_SETTINGS", raising=False)
    for sub in ["", "nbs", "tests/bench", "qtnb/pipelines"]:
        eq(find_settings(ROOT / sub), ROOT / "settings.ini")
    monkeypatch.chdir(ROOT / "nbs")
    eq(runs_dir(), ROOT / "runs")
    eq(TrainConfig.resolve().batch_size, 64)

def test_settings_env_override(tmp_path, monkeypatch):
    (tmp_path / "lab.ini").write_text("[training_defaults]\nbatch_size = 512\n[storage]\nruns_dir = /tmp/elsewhere\n")
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "lab.ini"))
    eq(TrainConfig.resolve().batch_size, 512)
    eq(runs_dir(), Path("/tmp/elsewhere"))
    monkeypatch.setenv("QTNB_SETTINGS", str(tmp_path / "missing.ini"))
    fails(lambda: load_settings(), contains="QTNB_SETTINGS")

def test_unrelated_settings_ini_is_walked_past(tmp_path, monkeypatch):
    monkeypatch.delenv("QTNB_SETTINGS", raising=False)
    (tmp_path / "settings.ini").write_text("[DEFAULT]\nlib_name = somebody_elses_nbdev2_project\n")
    eq(find_settings(tmp_path), None)
    eq(TrainConfig.resolve(settings=load_settings(start=tmp_path)).batch_size, 64)

def test_bad_settings_file_names_field_and_file(tmp_path, monkeypatch):
    ini = tmp_path / "settings.ini"
    ini.write_text("[training_defaults]\nbatch_size = sixty-four\n")
    monkeypatch.setenv("QTNB_SETTINGS", str(ini))
    with pytest.raises(qtnb.ConfigError) as e: TrainConfig.resolve()
    msg = str(e.value)
    assert "batch_size='sixty-four'" in msg and str(ini) in msg and "\n" not in msg
    ini.write_text("[hardware]\ndevise = cuda\n")
    with pytest.raises(qtnb.ConfigError, match="unknown field 'devise'.*did you mean 'device'"): TrainConfig.resolve()

def test_sp500_loads_without_network(monkeypatch):
    def no_net(*a, **k): raise AssertionError("network touched")
    monkeypatch.setattr(socket, "socket", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)
    df = load_sp500()
    eq(df.shape, (5031, 6))
    eq(list(df.columns), ["Open", "High", "Low", "Close", "Adj Close", "Volume"])

def test_data_ships_in_the_package():
    # the CSVs travel as package data, so an installed qtnb (not only a checkout) has them
    out = subprocess.run([sys.executable, "-c", "import qtnb.datasets as d; print(d.DATA_DIR)"],
                         capture_output=True, text=True, cwd="/", check=True).stdout.strip()
    assert (Path(out) / "sp500.csv.gz").is_file() and (Path(out) / "README.md").is_file()
