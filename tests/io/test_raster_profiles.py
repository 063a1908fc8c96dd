"""``esccs data synth --tiff-profile``: the default writes GDAL's own layout (as SEN12MS tiles are read), the others
write what they name, and every profile keeps the values."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from esccs.cli import cli
from esccs.io.fastread import open_tiff
from esccs.runtime import open_tiles


@pytest.fixture(scope="module")
def synth_pair(tmp_path_factory):
    """The same tiny data set written twice: default profile and ``deflate-tiled``."""
    root = tmp_path_factory.mktemp("profiles")
    out = {}
    for profile in ("sen12ms", "deflate-tiled"):
        res = CliRunner().invoke(cli, ["data", "synth", str(root / profile), "--samples", "8", "--size", "64",
                                       "--patches-per-scene", "2", "--workers", "1", "--quiet", "--tiff-profile",
                                       profile])
        assert res.exit_code == 0, res.output
        out[profile] = root / profile
    return out


def test_default_profile_is_gdals_striped_pixel_interleaved_uncompressed(synth_pair):
    job = open_tiles(synth_pair["sen12ms"]).jobs[0]
    with rasterio.open(job.optical) as s2, rasterio.open(job.sar) as s1:
        assert s2.compression is None and s1.compression is None
        assert s2.interleaving.value.lower() == "pixel" and not open_tiff(job.optical).tiled
        # GDAL's default strips of ~8 KiB: 4 rows of 64 px x 13 bands x 2 bytes, 16 rows of 64 x 2 x 4 bytes
        assert s2.block_shapes[0] == (4, 64) and s1.block_shapes[0] == (16, 64)
        assert s2.descriptions[:2] == ("B01", "B02") and s2.dtypes[0] == "uint16"


def test_other_profile_writes_its_layout_with_the_same_values(synth_pair):
    a, b = (open_tiles(synth_pair[p]).jobs for p in ("sen12ms", "deflate-tiled"))
    assert [j.id for j in a] == [j.id for j in b]
    for ja, jb in zip(a[:3], b[:3]):
        for pa, pb in ((ja.optical, jb.optical), (ja.sar, jb.sar), (ja.mask, jb.mask)):
            with rasterio.open(pa) as x, rasterio.open(pb) as y:
                assert y.compression.name == "deflate" and open_tiff(pb).tiled  # TileWidth / TileLength tags
                assert x.transform == y.transform and x.crs == y.crs
                assert np.array_equal(x.read(), y.read(), equal_nan=True)


def test_unknown_profile_is_refused_by_the_cli(tmp_path):
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--tiff-profile", "jpeg2000"])
    assert res.exit_code == 2 and "Invalid value for '--tiff-profile'" in res.output
