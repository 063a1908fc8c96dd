"""Data: readers for SEN12MS / SEN12MS-CR / paired folders, clouds, speckle and the synthetic generator.

Everything here is numpy + rasterio (torch-free); :mod:`esccs.data.torchdata` wraps the readers as torch Datasets.
"""

from esccs.data.dataset import SceneDataset, open_dataset, parts_of, read_bands
from esccs.data.layouts import Sample, detect_layout, scan
from esccs.data.split import grouped_split
from esccs.data.transforms import Normalizer, compute_stats

__all__ = ["SceneDataset", "open_dataset", "parts_of", "read_bands", "Sample", "detect_layout", "scan",
           "grouped_split", "Normalizer", "compute_stats"]
