"""Which band is which in a file of one modality: ``band_map``, its band descriptions, or the SEN12MS order.

Torch-free and header-only (a :class:`~esccs.io.raster.RasterInfo` is enough), so the training reader
(:mod:`esccs.data.dataset`) and the runtime reader share one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from esccs.errors import BandError, DTypeError
from esccs.io.raster import RasterInfo
from esccs.spec import RASTER_SPECS


def file_band_order(info: RasterInfo, modality: str, band_map: Sequence[str] | None = None) -> tuple[str, ...]:
    """Band names of a file in file order: ``band_map``, else its band descriptions, else the SEN12MS order.

    Raises:
        BandError, DTypeError: the file is not a ``modality`` stack (one line naming the file).
    """
    spec = RASTER_SPECS[modality]
    kind = np.dtype(info.dtype).kind
    if band_map is not None:
        if len(band_map) != info.count:
            raise BandError(info.path, f"band_map names {len(band_map)} bands, the file has {info.count}")
        return tuple(band_map)
    if kind not in spec.dtype_kinds:
        allowed = {"ui": "integer DN (uint16 L1C reflectance x 10000)", "f": "float32 dB"}[spec.dtype_kinds]
        raise DTypeError(info.path, f"{modality} must be {allowed}, found {info.dtype}")
    described = tuple(d or "" for d in info.descriptions)
    if info.count == len(spec.bands):
        return described if set(described) >= set(spec.bands) else spec.bands
    extra = " (looks like a 12-band Level-2A stack without B10: pass band_map=S2_L2A_12_BANDS)" \
        if modality.startswith("s2") and info.count == 12 else ""
    raise BandError(info.path, f"{modality} needs {len(spec.bands)} bands ({', '.join(spec.bands)}), "
                               f"found {info.count}{extra}")
