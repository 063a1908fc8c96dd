"""Torch-free inference runtime: numpy, rasterio and an inference engine (onnxruntime, TensorRT) only.

Installed as ``esccs.runtime``. Nothing here imports torch except the optional checkpoint backend
(:mod:`esccs.runtime.backends.torch_backend`, lazily), so an edge box needs only ``pip install esccs``.

::

    from esccs.runtime import load_model, open_tiles, run_inference
    model = load_model("model.onnx")                        # backend from the artifact, metadata drives the rest
    model.predict(optical_dn, sar_db)                       # {"logits", "probs", "modality_weights"}
    run_inference(open_tiles("tiles/"), model, ["out.csv"])  # batched, resumable, one row per tile
"""

from esccs.runtime.model import Backend, BackendUnavailableError, Model, ModelError, ModelInfo, load_model
from esccs.runtime.pipeline import InferOptions, run_inference
from esccs.runtime.sources import Job, Source, open_scene, open_tiles
from esccs.spec import BAND_STATS, S1_BANDS, S2_BANDS

__all__ = ["BAND_STATS", "S1_BANDS", "S2_BANDS", "Backend", "BackendUnavailableError", "InferOptions", "Job", "Model",
           "ModelError", "ModelInfo", "Source", "load_model", "open_scene", "open_tiles", "run_inference"]
