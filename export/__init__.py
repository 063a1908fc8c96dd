"""Model export: ONNX, INT8 ONNX and TensorRT, each with metadata and a parity check against PyTorch.

Installed as ``esccs.export``. Front door: :func:`export_model` (the CLI is ``esccs export``); the formats and the
options each accepts live in one table, :data:`FORMATS`. Heavy packages (torch, onnx, onnxruntime, tensorrt) are
imported inside functions, so importing this package is cheap.
"""

from esccs.export.api import ExportResult as ExportResult
from esccs.export.api import export_model as export_model
from esccs.export.errors import EngineMismatchError as EngineMismatchError
from esccs.export.errors import ExportError as ExportError
from esccs.export.errors import ParityError as ParityError
from esccs.export.formats import FORMATS as FORMATS
from esccs.export.formats import Format as Format
from esccs.export.formats import get_format as get_format

__all__ = ["FORMATS", "EngineMismatchError", "ExportError", "ExportResult", "Format", "ParityError", "export_model",
           "get_format"]
