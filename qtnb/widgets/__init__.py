# Kept by hand, like qtnb/models/__init__.py (nbdev-export only creates a missing __init__.py): every panel's public
# names at the package level, so `from qtnb.widgets import ConfigForm, TrainingMonitor, RunBrowser` works. The panel
# modules import qtnb.widgets.charts, never this.
from .charts import *
from .forms import *
from .monitor import *
from .tuner_panel import *
from .run_browser import *
