"""Optional dependencies: import on demand, with a one-line install hint when missing. Never installs anything."""

from __future__ import annotations

import importlib
from types import ModuleType

from esccs.errors import DependencyMissingError

#: import name -> the extra that installs it
EXTRAS: dict[str, str] = {
    "torch": "train", "triton": "train", "safetensors": "train", "onnx": "train", "onnxscript": "train",
    "matplotlib": "viz", "onnxruntime": "runtime", "tensorrt": "gpu", "yaml": "train", "pyarrow": "parquet",
    "cuda": "gpu",
}


def lazy_import(name: str, feature: str = "") -> ModuleType:
    """Import ``name`` or raise :class:`DependencyMissingError` with the ``pip install 'esccs[extra]'`` hint."""
    try:
        return importlib.import_module(name)
    except ImportError:
        top = name.split(".")[0]
        raise DependencyMissingError(top, EXTRAS.get(top, "dev"), feature) from None
