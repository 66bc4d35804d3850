# Kept by hand (nbdev-export only creates a missing __init__.py): every public name of the run store's modules at the
# package level, so `from qtnb.runs import create_run, list_runs, RunInterrupted, ...` works. The modules import each
# other (live and catalog import store), never this package; all of them import only qtnb.config, qtnb.errors, qtnb.io.
from .store import *
from .live import *
from .catalog import *
