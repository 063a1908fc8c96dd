"""Named GeoTIFF layouts for :func:`esccs.io.raster.write` and ``esccs data synth --tiff-profile``.

A plain table without imports, so the CLI lists the names without loading rasterio.
"""

#: Named GeoTIFF layouts (same pixel values, different bytes on disk). ``sen12ms`` is GDAL's
#: default GTiff layout, the one SEN12MS / SEN12MS-CR patches are read as (docs/data.md, "Tile layout"):
#: uncompressed, pixel-interleaved, strips of about 8 KiB (one row for a 256 px 13-band S2). The others are the
#: layouts users' own tiles come in; ``tiled`` blocks are 256 px, or the tile rounded up to 16 px when smaller.
TIFF_PROFILES: dict[str, dict[str, object]] = {
    "sen12ms": {},
    "band": {"interleave": "band"},
    "tiled": {"tiled": True},
    "tiled-band": {"tiled": True, "interleave": "band"},
    "deflate": {"compress": "deflate"},
    "deflate-tiled": {"compress": "deflate", "tiled": True},
    "deflate-predictor": {"compress": "deflate", "predictor": 2, "tiled": True},
    "lzw": {"compress": "lzw"},
    "lzw-predictor": {"compress": "lzw", "predictor": 2},
    "zstd": {"compress": "zstd", "tiled": True},
    "zstd-predictor": {"compress": "zstd", "predictor": 2, "interleave": "band"},
    "lzma": {"compress": "lzma"},
    "bigtiff": {"BIGTIFF": "YES"},
    "bigtiff-deflate-tiled": {"BIGTIFF": "YES", "compress": "deflate", "tiled": True},
    "cog": {"driver": "COG", "compress": "deflate"},
}
