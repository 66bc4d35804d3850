# Kept by hand, like qtnb/__init__.py (nbdev-export only creates a missing __init__.py): the registry's entry points
# at the package level, so `from qtnb.models import create_model` works. The families import qtnb.models.core, never this.
from .core import create_model, list_models, model_schema
