"""SEN12MS-family file names and folder layouts: parse with a regular expression, build from parts.

Names look like ``ROIs1158_spring_s2_12_p34.tif``; SEN12MS-CR adds ``s2_cloudy`` (an extra underscore), so names are
parsed with a regular expression, never by ``split('_')`` positions. A sample is identified by its S2 name (the key
of the label files), whatever modality file it is read from.

Layouts (``root`` is the folder a reader is pointed at):

- ``sen12ms``:    ``root/ROIs1158_spring/s2_12/ROIs1158_spring_s2_12_p34.tif``
- ``sen12ms-cr``: ``root/ROIs1158_spring_s2_cloudy/s2_cloudy_12/ROIs1158_spring_s2_cloudy_12_p34.tif``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from esccs.spec import SEASON_SEEDS, SENSORS

_SENSOR_RE = "|".join(sorted(SENSORS, key=len, reverse=True))  # longest first: s2_cloudy before s2
NAME_RE = re.compile(
    rf"^ROIs(?P<seed>\d{{4}})_(?P<season>spring|summer|fall|winter)_(?P<sensor>{_SENSOR_RE})"
    rf"_(?P<scene>\d+)_p(?P<patch>\d+)\.tif$"
)
LAYOUTS = ("sen12ms", "sen12ms-cr")


@dataclass(frozen=True, order=True)
class PatchName:
    """The parts of a SEN12MS-family file name."""

    season: str
    scene: int
    patch: int
    sensor: str = "s2"
    seed: int | None = None  # None: the season's fixed seed

    def __post_init__(self) -> None:
        if self.season not in SEASON_SEEDS:
            raise ValueError(f"unknown season {self.season!r}; expected one of {sorted(SEASON_SEEDS)}")
        if self.sensor not in SENSORS:
            raise ValueError(f"unknown sensor {self.sensor!r}; expected one of {SENSORS}")
        if self.scene < 0 or self.patch < 0:
            raise ValueError("scene and patch ids must be non-negative")
        if self.seed is None:
            object.__setattr__(self, "seed", SEASON_SEEDS[self.season])

    @property
    def roi(self) -> str:
        """The ROI prefix, e.g. ``ROIs1158_spring``."""
        return f"ROIs{self.seed}_{self.season}"

    @property
    def filename(self) -> str:
        """The file name, e.g. ``ROIs1158_spring_s2_12_p34.tif``."""
        return f"{self.roi}_{self.sensor}_{self.scene}_p{self.patch}.tif"

    @property
    def sample_id(self) -> str:
        """The sample id: the S2 file name, whatever this file's sensor is."""
        return self.with_sensor("s2").filename

    @property
    def group(self) -> tuple[str, int]:
        """The (season, scene) pair that patches of one scene share (they overlap: split by it)."""
        return (self.season, self.scene)

    def with_sensor(self, sensor: str) -> PatchName:
        """The same patch in another modality."""
        return PatchName(self.season, self.scene, self.patch, sensor, self.seed)

    def path(self, root: str | Path, layout: str = "sen12ms") -> Path:
        """Where this file lives below ``root`` in a layout (``sen12ms`` or ``sen12ms-cr``)."""
        if layout == "sen12ms":
            return Path(root) / self.roi / f"{self.sensor}_{self.scene}" / self.filename
        if layout == "sen12ms-cr":
            return Path(root) / f"{self.roi}_{self.sensor}" / f"{self.sensor}_{self.scene}" / self.filename
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def parse_name(name: str | Path) -> PatchName:
    """Parse a SEN12MS-family file name (a bare name or a path).

    Raises:
        ValueError: the name does not follow ``ROIs<seed>_<season>_<sensor>_<scene>_p<patch>.tif``.
    """
    base = Path(name).name
    m = NAME_RE.match(base)
    if m is None:
        raise ValueError(f"{base!r} is not a SEN12MS file name (ROIs<seed>_<season>_<sensor>_<scene>_p<patch>.tif)")
    return PatchName(m["season"], int(m["scene"]), int(m["patch"]), m["sensor"], int(m["seed"]))


def try_parse_name(name: str | Path) -> PatchName | None:
    """Like :func:`parse_name`, but ``None`` for a name that does not match."""
    try:
        return parse_name(name)
    except ValueError:
        return None
