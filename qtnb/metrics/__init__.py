# Kept by hand (nbdev-export only creates a missing __init__.py): every public name of the metrics modules at the
# package level, so `from qtnb.metrics import compute_metrics, MetricTracker, ...` works. The modules import each
# other (trading imports scores), never this package.
from .scores import *
from .trading import *
