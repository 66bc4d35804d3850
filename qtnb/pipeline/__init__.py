# Kept by hand (nbdev-export only creates a missing __init__.py): every public name of the pipeline's modules at the
# package level, so `from qtnb.pipeline import train, TrainParams, run_pipeline, ...` works, in the pipeline notebooks of
# qtnb/pipelines/ too. The modules import each other, never this package.
from .params import *
from .folds import *
from .report import *
from .steps import *
from .steps import LiveTrain   # what train(monitor=True) returns
from .notebook import *
from .sweeps import *
