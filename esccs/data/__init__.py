"""Data: readers for SEN12MS / SEN12MS-CR / paired folders, clouds, speckle and the synthetic generator.

Everything here is numpy + rasterio (torch-free; import-linter enforces it). The layouts and band orders that the
runtime shares live one layer down, in :mod:`esccs.io`; training turns samples into tensors in :mod:`esccs.train.bank`.
"""

from esccs.data.dataset import SceneDataset, open_dataset, parts_of, read_bands
from esccs.data.split import grouped_split
from esccs.data.transforms import Normalizer, compute_stats
from esccs.io.layouts import Sample, detect_layout, scan

__all__ = ["SceneDataset", "open_dataset", "parts_of", "read_bands", "Sample", "detect_layout", "scan",
           "grouped_split", "Normalizer", "compute_stats"]
