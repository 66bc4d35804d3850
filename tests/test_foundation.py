"""Project-level checks of the foundation: packaged data and offline loading (settings discovery is shown in nbs/00_config.ipynb)."""
import socket, subprocess, sys
from pathlib import Path

from fastcore.test import test_eq as eq

from qtnb.datasets import load_sp500

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
