"""Load an exported model: the artifact picks the backend, its metadata (bands, normalisation, classes) drives the rest.

``load_model(path)`` returns a :class:`Model`: a :class:`ModelInfo` read from the artifact (ONNX ``metadata_props``,
the TensorRT engine's sidecar, or a checkpoint's config) and one :class:`Backend`. A model without that metadata is
refused: the runtime cannot know band order, units or class names without it, and guessing silently mislabels maps.

| artifact | backend | device |
|---|---|---|
| ``.onnx`` | ``onnxruntime`` (CPU EP; CUDA EP when onnxruntime-gpu is installed) | cpu, cuda |
| ``.engine`` / ``.plan`` | ``tensorrt`` (named tensors, CUDA graphs; buffers from cuda-python, no torch) | cuda |
| ``.safetensors`` | ``torch`` (optional; the only runtime module that imports torch, lazily) | cpu, cuda |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from esccs.errors import ConfigError, DataError
from esccs.spec import ARTIFACT_SCHEMA_VERSION, INPUT_NAMES, OUTPUT_NAMES, REQUIRED_METADATA_KEYS

#: artifact suffix -> backend that runs it
SUFFIX_BACKEND = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".safetensors": "torch",
                  ".json": "torch"}
BACKENDS = ("onnxruntime", "tensorrt", "torch")


class ModelError(DataError):
    """A model artifact the runtime cannot use (no metadata, wrong inputs, unknown suffix)."""


class BackendUnavailableError(ConfigError):
    """The requested backend or device cannot run here (package missing, no GPU); the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about a model, from the artifact's metadata.

    Attributes:
        path: the artifact.
        classes: class names, index = class id.
        optical_bands, sar_bands: band names of each input, in channel order.
        patch_size: the input height and width in pixels.
        preprocessing_baked: True when the graph cleans, clips and normalises itself (feed raw DN / dB).
        normalization: ``{"optical": Normalizer dict, "sar": ...}`` (applied here when not baked).
        precision: ``fp32``, ``fp16``, ``int8`` ...
        dynamic_spatial: whether the graph accepts other sizes than ``patch_size``.
        metadata: every metadata entry, JSON values decoded.
    """

    path: Path
    classes: tuple[str, ...]
    optical_bands: tuple[str, ...]
    sar_bands: tuple[str, ...]
    patch_size: int
    preprocessing_baked: bool
    normalization: dict | None = None
    precision: str = "fp32"
    dynamic_spatial: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_metadata(cls, path: str | os.PathLike, raw: Mapping[str, Any]) -> ModelInfo:
        """Build from ``metadata_props``-style entries (strings holding JSON, or decoded values).

        Raises:
            ModelError: a required entry is missing or malformed (one line naming the artifact and the key).
        """
        meta = {k: _decode(v) for k, v in raw.items()}
        missing = [k for k in REQUIRED_METADATA_KEYS if k not in meta]
        if missing:
            raise ModelError(path, f"no esccs metadata ({', '.join(missing)} missing): the runtime needs the bands, "
                                   "units and classes; export the model with `esccs export`")
        schema = meta["esccs_schema_version"]
        if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= ARTIFACT_SCHEMA_VERSION:
            raise ModelError(path, f"esccs metadata schema {schema!r}: this esccs reads schema 1 to "
                                   f"{ARTIFACT_SCHEMA_VERSION}; upgrade esccs or export the model again")
        try:
            info = cls(Path(path), tuple(meta["classes"]), tuple(meta["optical_bands"]), tuple(meta["sar_bands"]),
                       int(meta["patch_size"]), bool(meta["preprocessing_baked"]), meta.get("normalization"),
                       str(meta.get("precision", "fp32")), "height" in json.dumps(meta.get("inputs", "")), meta)
        except (TypeError, ValueError) as err:
            raise ModelError(path, f"malformed esccs metadata ({err})") from None
        if not info.classes or not info.optical_bands or not info.sar_bands:
            raise ModelError(path, "esccs metadata lists no classes or no bands")
        if not info.preprocessing_baked and not info.normalization:
            raise ModelError(path, "graph expects normalised inputs but the metadata has no normalization")
        return info

    def describe(self) -> str:
        """One line: bands, patch size, classes, precision, units."""
        units = "raw DN / dB (preprocessing in the graph)" if self.preprocessing_baked else "normalised here"
        return (f"{len(self.optical_bands)} optical + {len(self.sar_bands)} SAR bands, {self.patch_size} px, "
                f"{len(self.classes)} classes, {self.precision}, inputs {units}")


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


class Backend(Protocol):
    """One inference engine behind the runtime.

    ``run`` takes float32 ``optical`` ``(B, C_o, H, W)`` and ``sar`` ``(B, C_s, H, W)`` (already in the units the
    graph expects) and returns ``{"logits", "probs", "modality_weights"}`` as numpy arrays with ``B`` rows.
    """

    name: str
    device: str
    max_batch: int | None
    settings: dict[str, Any]

    def run(self, optical: np.ndarray, sar: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch."""
        ...

    def close(self) -> None:
        """Free the engine's resources."""
        ...


class Model:
    """A loaded model: preprocessing from its metadata, then its backend; ``predict`` splits oversize batches."""

    def __init__(self, info: ModelInfo, backend: Backend) -> None:
        self.info, self.backend = info, backend
        self._norm = None
        if not info.preprocessing_baked:
            from esccs.data.transforms import Normalizer  # numpy only

            self._norm = {k: Normalizer.from_dict(info.normalization[k]) for k in INPUT_NAMES}

    @property
    def metadata(self) -> dict[str, Any]:
        """The artifact's metadata, decoded."""
        return self.info.metadata

    @property
    def precision(self) -> str:
        """The artifact's precision."""
        return self.info.precision

    def preprocess(self, optical: np.ndarray, sar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw DN / dB -> what the graph takes (identity when preprocessing is baked into it)."""
        if self._norm is None:
            return optical, sar
        return self._norm["optical"](optical), self._norm["sar"](sar)

    def predict(self, optical: np.ndarray | Mapping[str, np.ndarray], sar: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
        """Classify raw tiles: ``optical`` ``(B, C_o, P, P)`` DN and ``sar`` ``(B, 2, P, P)`` dB (or one dict).

        Returns:
            ``{"logits": (B, K), "probs": (B, K), "modality_weights": (B, 2)}`` (weights: optical, SAR).
        """
        if isinstance(optical, Mapping):
            optical, sar = optical["optical"], optical["sar"]
        self.check_inputs(optical, sar)
        optical, sar = self.preprocess(optical, sar)
        n = max(len(optical), 1)  # an empty batch still runs once (and returns empty outputs)
        step = self.backend.max_batch or n
        parts = [self.backend.run(optical[i:i + step], sar[i:i + step]) for i in range(0, n, step)]
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}

    __call__ = predict

    def check_inputs(self, optical: np.ndarray, sar: np.ndarray) -> None:
        """Raise a one-line :class:`ModelError` when the arrays do not fit the model."""
        want = {"optical": len(self.info.optical_bands), "sar": len(self.info.sar_bands)}
        for name, arr in (("optical", optical), ("sar", sar)):
            if arr.ndim != 4 or arr.shape[1] != want[name]:
                raise ModelError(self.info.path, f"{name} input must be (B, {want[name]}, H, W), got {arr.shape}")
        if optical.shape[0] != sar.shape[0] or optical.shape[2:] != sar.shape[2:]:
            raise ModelError(self.info.path, f"optical {optical.shape} and SAR {sar.shape} do not pair up")
        if not self.info.dynamic_spatial and optical.shape[2:] != (self.info.patch_size,) * 2:
            p = self.info.patch_size
            raise ModelError(self.info.path, f"inputs must be {p}x{p} px, got {optical.shape[2]}x{optical.shape[3]}")

    def describe(self) -> str:
        """One line: artifact, backend, device, and what the model takes."""
        return f"{self.info.path.name} on {self.backend.name} ({self.backend.device}): {self.info.describe()}"

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def backend_for(path: str | os.PathLike, backend: str = "auto") -> str:
    """The backend that runs ``path`` (``auto`` = by suffix), checked against the artifact.

    Raises:
        ModelError: unknown suffix, or a backend that cannot run this kind of artifact.
    """
    path = Path(path)
    native = SUFFIX_BACKEND.get(path.suffix.lower())
    if native is None:
        raise ModelError(path, f"unknown model type {path.suffix!r}; expected .onnx, .engine/.plan or .safetensors")
    if backend not in ("auto", *BACKENDS):
        raise ConfigError(f"unknown backend {backend!r}; expected auto, {', '.join(BACKENDS)}")
    if backend not in ("auto", native):
        raise ModelError(path, f"the {backend} backend cannot run a {path.suffix} file (it needs the "
                               f"{native} backend; export with `esccs export --format ...` first)")
    return native


def load_model(path: str | os.PathLike, backend: str = "auto", device: str = "auto", threads: int | None = None,
               **options: Any) -> Model:
    """Load a model for inference.

    Args:
        path: ``.onnx``, ``.engine`` / ``.plan`` (with its ``.json`` sidecar) or ``.safetensors`` checkpoint.
        backend: ``auto`` (by suffix), ``onnxruntime``, ``tensorrt`` or ``torch``.
        device: ``auto`` (GPU when the backend can use one), ``cpu`` or ``cuda``.
        threads: CPU intra-op threads (default: the cores this process may use).
        options: backend options (onnxruntime: ``spinning``; tensorrt: ``cuda_graphs``, ``host_code``).

    Raises:
        ModelError: missing file, unknown suffix, no esccs metadata, wrong inputs.
        BackendUnavailableError: the backend's package or the device is missing (with what to install).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "model file not found")
    name = backend_for(path, backend)
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; expected auto, cpu or cuda")
    if name == "onnxruntime":
        from esccs.runtime.backends.onnxruntime_backend import load

    elif name == "tensorrt":
        from esccs.runtime.backends.tensorrt_backend import load
    else:
        from esccs.runtime.backends.torch_backend import load
    info, engine = load(path, device=device, threads=threads, **options)
    return Model(info, engine)


def default_threads() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
