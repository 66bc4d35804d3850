# Kept by hand, like qtnb/models/__init__.py (nbdev-export only creates a missing __init__.py): every public name of the
# tuner's modules at the package level, so `from qtnb.tuner import Tuner, SearchSpace, ...` works. The modules import
# each other, never this package. Optuna's internals stay in .adapter (only its journal storage is public here).
from .space import *
from .samplers import *
from .adapter import JournalHeartbeatStorage
from .storage import *
from .trials import *
from .core import *
from .outputs import *
from .training import *
from .symbols import *
from .dashboard import *

_PRUNING = ("PruningCallback", "report_values", "add_xgboost_pruning")

def __getattr__(name: str):
    # the pruning callback is a trainer callback, which brings torch: it is loaded when asked for, not with the tuner
    if name in _PRUNING:
        from . import pruning
        return getattr(pruning, name)
    raise AttributeError(f"module 'qtnb.tuner' has no attribute {name!r}")
