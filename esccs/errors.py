"""Error classes: one per kind of failure, each with a ready one-line message naming the file and the problem."""

from __future__ import annotations

import os


class EsccsError(Exception):
    """Base class of every error ESCCS raises on purpose (the CLI prints these as one line, no traceback)."""


class DependencyMissingError(EsccsError, ImportError):
    """An optional package is needed for this feature; the message carries the install hint."""

    def __init__(self, package: str, extra: str, feature: str = "") -> None:
        what = f" for {feature}" if feature else ""
        super().__init__(f"{package} is needed{what}: pip install 'esccs[{extra}]'")
        self.package, self.extra = package, extra


class DataError(EsccsError, ValueError):
    """A file or folder of a data set is unusable. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason


class DatasetNotFoundError(DataError):
    """A folder holds no data set of any known layout, or no samples."""


class CorruptRasterError(DataError):
    """A file is not a readable GeoTIFF (not a TIFF, truncated, unreadable)."""


class BandError(DataError):
    """A raster has the wrong number of bands, or a requested band is not in it."""


class DTypeError(DataError):
    """A raster has the wrong data type (e.g. float S2 where SEN12MS stores uint16)."""


class GridMismatchError(DataError):
    """Two modalities of one sample are not on the same grid (CRS, transform or size)."""


class MissingPartnerError(DataError):
    """A modality file of a sample is missing (e.g. an S2 patch without its S1 partner)."""


class BadTileError(DataError):
    """A tile cannot be used (e.g. all-NaN SAR, all-nodata optical)."""


class LabelError(DataError):
    """A label file is malformed, names unknown samples or classes, or lacks a needed label."""


class UnsafePickleError(LabelError):
    """A pickle tried to load something other than plain containers and numbers."""


class EngineMismatchError(EsccsError):
    """A TensorRT engine was built for another TensorRT version or GPU than the one loading it."""


class ConfigError(EsccsError, ValueError):
    """A configuration has an unknown key or an invalid value."""
