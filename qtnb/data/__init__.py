# Kept by hand, like qtnb/tuner/__init__.py (nbdev-export only creates a missing __init__.py): every public name of the
# data modules at the package level, so `from qtnb.data import prepare, Windows, ...` works. The modules import each
# other one way (frames -> features -> featurize; scalers, windows, splits -> prepare; features -> regimes), never this
# package. regimes is imported for its side effect too: it registers the `trend` feature.
from .frames import *
from .features import *
from .featurize import *
from .scalers import *
from .windows import *
from .splits import *
from .prepare import *
from .regimes import *
