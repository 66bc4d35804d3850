"""Bad input to the tuner: each case is a one-line ConfigError or TuningError naming what is wrong."""
import socket

import pytest

from qtnb.config import DataConfig
from qtnb.errors import ConfigError, TuningError
from qtnb.tuner import SearchSpace, Tuner, make_pruner, make_sampler, start_dashboard

DC = DataConfig(data="synthetic:planted", seq_len=16)


def f(params, trial): return params["x"]


def lstm(**kw): return SearchSpace(model="lstm").log_uniform("learning_rate", 1e-4, 1e-2)


CASES = {
    "empty space (Tuner)": (lambda tmp: Tuner(SearchSpace(), f, storage=f"sqlite:///{tmp}/a.db"), ConfigError, "search space is empty"),
    "empty space (check)": (lambda tmp: SearchSpace(model="lstm").check(), ConfigError, "search space is empty"),
    "empty space (YAML)": (lambda tmp: Tuner({"params": {}}, f), ConfigError, "search space is empty"),
    "low > high": (lambda tmp: SearchSpace().uniform("dropout", 0.5, 0.1), ConfigError, "low=0.5 > high=0.1"),
    "int low > high": (lambda tmp: SearchSpace().int("hidden_size", 64, 8), ConfigError, "low=64 > high=8"),
    "log range low = 0": (lambda tmp: SearchSpace().log_uniform("learning_rate", 0, 1e-2), ConfigError, "log range needs low > 0"),
    "log range low < 0": (lambda tmp: SearchSpace().int("hidden_size", -4, 64, log=True), ConfigError, "log range needs low > 0"),
    "log with step": (lambda tmp: SearchSpace.from_dict({"params": {"n": {"type": "int", "low": 1, "high": 8, "step": 2, "log": True}}}),
                      ConfigError, "cannot have a step"),
    "unknown sampler": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, sampler="bayes"), ConfigError, "sampler='bayes' is unknown"),
    "unknown sampler (make)": (lambda tmp: make_sampler("randm"), ConfigError, "did you mean 'random'"),
    "unknown pruner": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, pruner="asha"), ConfigError, "pruner='asha' is unknown"),
    "unknown pruner (make)": (lambda tmp: make_pruner("hyperbnd"), ConfigError, "did you mean 'hyperband'"),
    "objective not produced by the task": (lambda tmp: Tuner(lstm(), "val_accuracy", data=DC), ConfigError, "val_accuracy' is a classification metric"),
    "objective regression metric on classification": (
        lambda tmp: Tuner(lstm(), "val_r2", data=DataConfig(data="synthetic:planted", target="direction")), ConfigError, "is a regression metric"),
    "objective unknown metric": (lambda tmp: Tuner(lstm(), ["val_loss", "val_sharpie"], data=DC), ConfigError, "did you mean 'val_sharpe'"),
    "objective without split": (lambda tmp: Tuner(lstm(), "sharpe", data=DC), ConfigError, "needs a split prefix"),
    "parameter the model lacks": (lambda tmp: Tuner(SearchSpace(model="lstm").int("n_heads", 1, 4), "val_loss", data=DC),
                                  ConfigError, "model 'lstm' has no field 'n_heads'"),
    "value the config refuses": (lambda tmp: Tuner(SearchSpace(model="lstm").uniform("dropout", 0, 2), "val_loss", data=DC),
                                 ConfigError, "dropout=2"),
    "unknown architecture": (lambda tmp: Tuner(SearchSpace().conditional("model", {"lstm": None, "resnet": None}), "val_loss", data=DC),
                             ConfigError, "unknown model 'resnet'"),
    "unknown spec type": (lambda tmp: SearchSpace.from_dict({"params": {"x": {"type": "normal", "low": 0, "high": 1}}}), ConfigError, "type 'normal' is unknown"),
    "direction": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, direction="down"), ConfigError, "direction='down' is invalid"),
    "pruning several objectives": (lambda tmp: Tuner(lstm(), ["val_loss", "val_sharpe"], data=DC, pruner="median"), ConfigError, "cannot prune 2 objectives"),
    "cmaes several objectives": (lambda tmp: Tuner(lstm(), ["val_loss", "val_sharpe"], data=DC, sampler="cmaes"), ConfigError, "optimises one objective"),
    "grid over a continuous range": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, sampler="grid"), ConfigError, "grid sampler needs a step"),
    "n_trials = 0": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, storage=f"sqlite:///{tmp}/b.db", runs_dir=tmp).optimize(0),
                     ConfigError, "n_trials=0 must be a positive integer"),
    "storage that is neither URL nor journal": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, storage="optuna.txt"),
                                                ConfigError, "neither a URL"),
    "grace period shorter than heartbeat": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, heartbeat_interval=5, grace_period=3),
                                            ConfigError, "grace_period=3 must exceed"),
    "unreachable PostgreSQL": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, storage="postgresql+psycopg2://u@127.0.0.1:1/db").study,
                               TuningError, "cannot open study storage"),
    "dashboard of a missing journal": (lambda tmp: start_dashboard(tmp / "missing.journal", port=0), TuningError, "does not exist"),
    "dashboard of a damaged SQLite file": (lambda tmp: start_dashboard(_garbage(tmp / "x.db"), port=0), ConfigError, "cannot be read"),
    "dashboard of a damaged journal": (lambda tmp: start_dashboard(_garbage(tmp / "x.journal"), port=0), ConfigError, "damaged at line 1"),
    "study in a damaged SQLite file": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, storage=_garbage(tmp / "x.db"), runs_dir=tmp).study,
                                       ConfigError, "cannot open study storage"),
    "study in a damaged journal": (lambda tmp: Tuner(SearchSpace().uniform("x", 0, 1), f, storage=_garbage(tmp / "x.journal"), runs_dir=tmp).study,
                                   ConfigError, "cannot be read"),
    **{f"study_name {bad!r}": (lambda tmp, bad=bad: Tuner(SearchSpace().uniform("x", 0, 1), f, study_name=bad, runs_dir=tmp),
                               ConfigError, "study_name") for bad in ("../../../x", "/tmp/x", "a/b", "x\0y", "..", "")},
}


def _garbage(path):
    path.write_bytes(b"\x00garbage, not a study storage\n" * 64)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, tmp_path):
    fn, cls, text = CASES[case]
    with pytest.raises(cls) as e: fn(tmp_path)
    msg = str(e.value)
    assert text in msg, msg
    assert "\n" not in msg and len(msg) < 600, msg


def test_study_direction_mismatch(tmp_path):
    Tuner(SearchSpace().uniform("x", 0, 1), f, study_name="s", storage=f"sqlite:///{tmp_path}/s.db", runs_dir=tmp_path).optimize(1)
    with pytest.raises(TuningError, match="optimises \\['minimize'\\], not \\['maximize'\\]"):
        Tuner(SearchSpace().uniform("x", 0, 1), f, study_name="s", direction="maximize", storage=f"sqlite:///{tmp_path}/s.db").study


def test_dashboard_port_in_use(tmp_path):
    Tuner(SearchSpace().uniform("x", 0, 1), f, storage=f"sqlite:///{tmp_path}/d.db", runs_dir=tmp_path).optimize(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        with pytest.raises(TuningError, match="pass another port"):
            start_dashboard(f"sqlite:///{tmp_path}/d.db", port=s.getsockname()[1])
