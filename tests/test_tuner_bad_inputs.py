"""Bad sampler and pruner names given to the tuner: each a one-line ConfigError naming the name and the fix.
(The rest of the tuner's bad-input corpus is examples in the tuner notebooks: spaces in 07a, storage and Tuner settings
in 07f, metric objectives in 07i, the dashboard in 07k.)"""
import pytest

from qtnb.errors import ConfigError
from qtnb.tuner import SearchSpace, Tuner, make_pruner, make_sampler


def f(params, trial): return params["x"]


CASES = {
    "unknown sampler": (lambda: Tuner(SearchSpace().uniform("x", 0, 1), f, sampler="bayes"), "sampler='bayes' is unknown"),
    "unknown sampler (make)": (lambda: make_sampler("randm"), "did you mean 'random'"),
    "unknown pruner (make)": (lambda: make_pruner("hyperbnd"), "did you mean 'hyperband'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case):
    fn, text = CASES[case]
    with pytest.raises(ConfigError) as e: fn()
    msg = str(e.value)
    assert text in msg, msg
    assert "\n" not in msg and len(msg) < 600, msg
