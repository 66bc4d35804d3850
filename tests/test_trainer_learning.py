"""Every torch family learns a planted signal and finds none in a random walk (through qtnb.data, models and the Trainer).

planted: returns follow AR(2) in their own lags; attrs['optimal_r2'] is the best one-step R^2 any model can reach.
Each family must reach half of it on the test split within 8 epochs. On a random walk no family may do better than
chance: directional accuracy on the test split within 0.5 +/- 3 standard errors.
"""
import math

import pytest
import torch

from qtnb.data import prepare
from qtnb.datasets import planted, random_walk
from qtnb.trainer import fit_fold

SEQ_LEN = 16
FAMILIES = {   # small members of each family; the CNN's kernel spans the window so its average pooling keeps the last row
    "mlp": {"hidden_sizes": [32], "dropout": 0.1},
    "lstm": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
    "gru": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
    "cnn": {"filters": [32], "kernel_sizes": [SEQ_LEN], "pool_sizes": [1], "dropout": 0.0},
    "cnn_lstm": {"filters": [16], "kernel_sizes": [3], "pool_sizes": [1], "hidden_size": 32, "dropout": 0.0},
    "transformer": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "dropout": 0.0},
}
TRAIN = dict(num_epochs=8, batch_size=64, learning_rate=3e-3, early_stopping_patience=3, importance=False, device="cpu")


def prepared(frame):
    return prepare(dict(data="synthetic:x", features=["returns"], seq_len=SEQ_LEN, cache=False), frame=frame)


@pytest.fixture(scope="module")
def planted_data():
    df = planted(3000, seed=0)
    return df.attrs["optimal_r2"], prepared(df)


@pytest.fixture(scope="module")
def walk_data():
    return prepared(random_walk(3000, seed=1))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_learns_planted_signal(family, planted_data):
    optimal, prep = planted_data
    _, res = fit_fold(prep.folds[0], {"name": family, **FAMILIES[family]}, **TRAIN)
    assert res.test_metrics["r2"] >= optimal / 2, (family, res.test_metrics["r2"], optimal, res.history[["epoch", "val_loss"]])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_edge_on_random_walk(family, walk_data):
    fold = walk_data.folds[0]
    _, res = fit_fold(fold, {"name": family, **FAMILIES[family]}, **TRAIN)
    n = len(fold.test)
    se = math.sqrt(0.25 / n)
    da = res.test_metrics["directional_accuracy"]
    assert abs(da - 0.5) <= 3 * se, (family, da, n, se)
