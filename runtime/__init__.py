"""Torch-free inference runtime (numpy, rasterio and an inference engine only).

Installed as ``esccs.runtime``. It shares the torch-free core (:mod:`esccs.spec`, :mod:`esccs.io`) and never imports
torch, so an edge box needs only ``pip install esccs`` (numpy, rasterio, click, tqdm, onnxruntime).
"""

from esccs.spec import BAND_STATS, S1_BANDS, S2_BANDS

__all__ = ["BAND_STATS", "S1_BANDS", "S2_BANDS"]
