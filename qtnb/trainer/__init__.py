# Kept by hand, like qtnb/tuner/__init__.py (nbdev-export only creates a missing __init__.py): every public name of the
# trainer's modules at the package level, so `from qtnb.trainer import Trainer, fit_fold, ...` works, and every module
# that adds methods to `Trainer` (with fastcore's @patch) is loaded whenever the Trainer is. The modules import each
# other, never this package.
from ..config import TrainConfig
from .core import *
from .evaluate import *
from .state import *
from .control import *
from .loop import *
from .estimators import *
from .stateful import *
from .folds import *
from . import control, core, estimators, evaluate, folds, loop, state, stateful

__all__ = ["TrainConfig", *(n for m in (core, evaluate, state, control, loop, estimators, stateful, folds) for n in m.__all__)]
