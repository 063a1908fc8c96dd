"""One rule for every fused op: the Triton kernel or the pure-PyTorch reference.

The fused path runs only when all of these hold, otherwise the reference (which is also the specification, the CPU
path and the ONNX-export path) runs, and nothing ever fails for lack of a GPU:

(a) triton is importable (``importlib.util.find_spec``; ``torch.utils._triton.has_triton()`` says False on CPU even
    with triton installed);
(b) the tensor is on CUDA, or ``TRITON_INTERPRET=1`` was set before the kernels were imported;
(c) no export is in progress (``torch.onnx.is_in_onnx_export()`` / ``torch.compiler.is_exporting()``);
(d) the user has not switched fused ops off: ``set_fused(False)`` (also a context manager) or ``ESCCS_FUSED=0``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)
ENV_SWITCH = "ESCCS_FUSED"
_state = {"enabled": os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")}
_logged: set[tuple[str, str]] = set()


def triton_available() -> bool:
    """Whether triton can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (must be set before kernel modules are imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def exporting() -> bool:
    """Whether an ONNX or ``torch.export`` trace is running (custom kernels cannot be traced)."""
    if torch.onnx.is_in_onnx_export():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting and is_exporting())


def fused_enabled() -> bool:
    """The user's switch (``set_fused`` / ``ESCCS_FUSED``)."""
    return _state["enabled"]


class set_fused(contextlib.ContextDecorator):  # noqa: N801 - reads like a function, as timm's set_layer_config
    """Switch fused ops on or off: ``set_fused(False)`` globally, or ``with set_fused(False): ...`` for a block."""

    def __init__(self, enabled: bool) -> None:
        self.prev = _state["enabled"]
        _state["enabled"] = bool(enabled)

    def __enter__(self) -> set_fused:
        return self

    def __exit__(self, *exc) -> None:
        _state["enabled"] = self.prev


def use_fused(op: str, *tensors: torch.Tensor) -> bool:
    """Decide the path for one call of ``op`` on ``tensors`` (see the module docstring); logs each choice once."""
    on_device = all(t.is_cuda for t in tensors) or interpreting()
    fused = fused_enabled() and on_device and not exporting() and triton_available()
    key = (op, "fused" if fused else "reference")
    if key not in _logged:
        _logged.add(key)
        log.debug("esccs.ops.%s: %s path", op, key[1])
    return fused


@contextlib.contextmanager
def no_fused() -> Iterator[None]:
    """Shorthand for ``with set_fused(False):``."""
    with set_fused(False):
        yield
