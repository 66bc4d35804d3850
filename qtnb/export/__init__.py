# Kept by hand, like qtnb/tuner/__init__.py (nbdev-export only creates a missing __init__.py): every public name of the
# export modules at the package level, so `from qtnb.export import export_onnx, InferenceSession, ...` works, and the
# file format names of qtnb.modelfile that were always importable from here. The modules import each other one way
# (core <- families <- compare <- run), never this package.
from ..modelfile import (ENGINE_SUFFIXES, META_KEY, ExportMeta, backend_for, quantize_dynamic_int8, quantize_static_qdq,
                         read_meta, to_fp16)
from .core import *
from .families import *
from .compare import *
from .run import *
