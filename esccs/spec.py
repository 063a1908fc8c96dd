"""The torch-free contract: band tables, class lists, normalisation statistics and dataset layouts.

Everything that names a band, a class or a file layout lives here, so that readers, the synthetic generator,
models, exports and the runtime agree by construction. Statistics are stored by band *name*, never by index.
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------------------------
# Bands
# --------------------------------------------------------------------------------------------------------------------

#: Sentinel-2 Level-1C band order of SEN12MS `s2` files (13 bands, uint16, reflectance x 10000, no +1000 offset).
S2_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: The 10 "land" bands of the official SEN12MS classification code (drops B01, B09, B10): the default input.
S2_LAND_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
S2_RGB_BANDS: tuple[str, ...] = ("B04", "B03", "B02")
#: Level-2A stacks usually lack the cirrus band B10 (e.g. the 12-band SatelliteCloudGenerator example).
S2_L2A_12_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B8A", "B11", "B12",
)
#: Sentinel-1 band order of SEN12MS `s1` files (sigma-nought in dB, float32).
S1_BANDS: tuple[str, ...] = ("VV", "VH")
#: SEN12MS `lc` bands (integer; any integer dtype).
LC_BANDS: tuple[str, ...] = ("IGBP", "LCCS_LC", "LCCS_LU", "LCCS_SH")

S1_CLIP_DB: tuple[float, float] = (-25.0, 0.0)
S2_CLIP_DN: tuple[float, float] = (0.0, 10000.0)

#: Per-band normalisation statistics of the official SEN12MS classification code (S2 raw DN, S1 clipped dB).
#: B01, B09 and B10 have no official statistics: compute them from data (``esccs.data.compute_stats``).
BAND_STATS: dict[str, tuple[float, float]] = {
    "B02": (1226.42, 741.63), "B03": (1137.38, 740.88), "B04": (1139.68, 960.10), "B05": (1351.00, 946.76),
    "B06": (1932.91, 985.53), "B07": (2211.16, 1082.43), "B08": (2154.98, 1057.76), "B8A": (2409.11, 1136.19),
    "B11": (2001.86, 1132.79), "B12": (1356.08, 991.48),
    "VV": (-11.76858, 4.525339), "VH": (-18.294598, 4.3586307),
}

# --------------------------------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------------------------------

IGBP_CLASSES: tuple[str, ...] = (
    "Evergreen Needleleaf Forests", "Evergreen Broadleaf Forests", "Deciduous Needleleaf Forests",
    "Deciduous Broadleaf Forests", "Mixed Forests", "Closed Shrublands", "Open Shrublands", "Woody Savannas",
    "Savannas", "Grasslands", "Permanent Wetlands", "Croplands", "Urban and Built-Up Lands",
    "Cropland/Natural Vegetation Mosaics", "Permanent Snow and Ice", "Barren", "Water Bodies",
)
#: Simplified IGBP (Schmitt & Wu 2021; DFC2020 scheme): 10 classes.
IGBP_SIMPLE_CLASSES: tuple[str, ...] = (
    "Forest", "Shrubland", "Savanna", "Grassland", "Wetlands", "Croplands", "Urban/Built-up", "Snow/Ice",
    "Barren", "Water",
)
#: IGBP code (1..17) -> simplified class index (0..9): Forest = 1-5, Shrubland = 6-7, Savanna = 8-9, Grassland = 10,
#: Wetlands = 11, Croplands = 12 + 14, Urban = 13, Snow/Ice = 15, Barren = 16, Water = 17.
IGBP_TO_SIMPLE: tuple[int, ...] = (0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 5, 7, 8, 9)

CLASS_PRESETS: dict[str, tuple[str, ...]] = {
    # The paper's simulated-cloud data set (16,220 images); the synthetic generator's default.
    "sen12ms_cloud": (
        "Barren", "Dense Forests", "Herbaceous", "Industrial", "Residential", "Road", "Scrub", "Sparsely Built",
        "Water", "Harbor",
    ),
    # The paper's real-cloud data set (11,156 images, strongly imbalanced).
    "hunan_cloud": (
        "Agricultural", "Forest", "Harbor", "Industrial", "Residential", "Road", "Scrub", "Transitional Woodland",
        "Village", "Water",
    ),
    "igbp_simple": IGBP_SIMPLE_CLASSES,
    "igbp": IGBP_CLASSES,
}

#: Multi-label threshold of the official code: a class is present when its fraction >= 0.1.
MULTI_LABEL_THRESHOLD = 0.1

# --------------------------------------------------------------------------------------------------------------------
# Cloud masks and strata
# --------------------------------------------------------------------------------------------------------------------

#: Cloud-mask codes written by the generator and read everywhere else.
MASK_CLEAR, MASK_THICK, MASK_THIN, MASK_SHADOW = 0, 1, 2, 3
MASK_CODES: dict[str, int] = {"clear": 0, "thick": 1, "thin": 2, "shadow": 3}
#: Cloud strata of the paper's Fig. 1 (fraction of cloudy pixels): clear < 5 %, partial 5-95 %, complete > 95 %.
CLOUD_STRATA: tuple[tuple[str, float, float], ...] = (
    ("clear", 0.0, 0.05), ("partial", 0.05, 0.95), ("complete", 0.95, 1.0 + 1e-9),
)


def cloud_stratum(coverage: float) -> str:
    """Name the cloud stratum (clear / partial / complete) of a cloud-cover fraction in [0, 1]."""
    for name, lo, hi in CLOUD_STRATA:
        if lo <= coverage < hi:
            return name
    raise ValueError(f"cloud coverage {coverage!r} is outside [0, 1]")


# --------------------------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------------------------

#: SEN12MS seeds are fixed per season.
SEASON_SEEDS: dict[str, int] = {"spring": 1158, "summer": 1868, "fall": 1970, "winter": 2017}
#: Sensors ("modalities") that may appear in SEN12MS-family file names. `cloud_mask` is ours (SEN12MS-CR computes
#: masks on the fly); it follows the same naming so that every layout is parsed by one regular expression.
SENSORS: tuple[str, ...] = ("s1", "s2", "lc", "s2_cloudy", "cloud_mask")
#: The known broken SEN12MS triplet (NaN in S1); every official loader excludes it.
SEN12MS_BROKEN: frozenset[str] = frozenset({"ROIs1868_summer_s2_146_p202.tif"})


@dataclass(frozen=True)
class RasterSpec:
    """What a file of one modality must hold: band names, allowed dtype kinds ('u', 'i', 'f')."""

    bands: tuple[str, ...]
    dtype_kinds: str
    min_bands: int | None = None  # accept at least this many bands (lc: only IGBP is needed)


RASTER_SPECS: dict[str, RasterSpec] = {
    "s2": RasterSpec(S2_BANDS, "ui"),
    "s2_cloudy": RasterSpec(S2_BANDS, "ui"),
    "s1": RasterSpec(S1_BANDS, "f"),
    "lc": RasterSpec(LC_BANDS, "ui", min_bands=1),
    "cloud_mask": RasterSpec(("mask",), "ui"),
}

#: Name of the dataset card written by ``esccs data synth`` and read by the paired-folder reader.
DATASET_CARD = "dataset.json"
DATASET_CARD_SCHEMA = 1

# --------------------------------------------------------------------------------------------------------------------
# Model artifacts: the contract between export, the runtime and the benchmarks
# --------------------------------------------------------------------------------------------------------------------

#: Inputs of every esccs model artifact (ONNX graph, TensorRT engine), in call order: ``optical`` ``(B, C_o, H, W)``
#: and ``sar`` ``(B, C_s, H, W)``, sharing the batch (and height / width) symbols. Units: raw DN / dB when the
#: preprocessing is baked into the graph, else normalised (metadata ``preprocessing_baked``).
INPUT_NAMES: tuple[str, ...] = ("optical", "sar")
#: Outputs, in graph order: ``logits`` ``(B, K)``, ``probs`` ``(B, K)`` (softmax of the logits) and
#: ``modality_weights`` ``(B, 2)``, whose columns follow :data:`MODALITY_WEIGHTS_ORDER`.
OUTPUT_NAMES: tuple[str, ...] = ("logits", "probs", "modality_weights")
MODALITY_WEIGHTS_ORDER: tuple[str, ...] = INPUT_NAMES
#: Version of the artifact metadata below; the runtime refuses an artifact of a newer schema (written by a newer esccs).
ARTIFACT_SCHEMA_VERSION = 1
#: Every metadata entry an exported artifact carries (ONNX ``metadata_props``; a TensorRT engine's sidecar
#: ``metadata``). Values are strings, lists and dicts JSON-encoded.
METADATA_KEYS: tuple[str, ...] = (
    "esccs_schema_version", "esccs_version", "checkpoint_sha256", "classes", "optical_bands", "sar_bands",
    "normalization", "preprocessing_baked", "input_units", "patch_size", "model_config", "inputs", "outputs",
    "modality_weights_order", "opset", "exporter", "precision",
)
#: Entries only some artifacts carry: ``quantization`` (the INT8 recipe, JSON) in a quantised ONNX.
OPTIONAL_METADATA_KEYS: tuple[str, ...] = ("quantization",)
#: The entries without which the runtime refuses a model: without them it cannot know the band order, the input
#: units or the class names, and guessing silently mislabels maps.
REQUIRED_METADATA_KEYS: tuple[str, ...] = (
    "esccs_schema_version", "classes", "optical_bands", "sar_bands", "patch_size", "preprocessing_baked",
)
#: The JSON sidecar beside a TensorRT engine (``<engine file name>`` + :data:`ENGINE_SIDECAR_SUFFIX`): its format tag,
#: schema version and top-level keys. It is written and read by :mod:`esccs.io.engine_sidecar` only.
ENGINE_SIDECAR_FORMAT = "esccs-tensorrt-engine"
ENGINE_SIDECAR_SCHEMA = 1
ENGINE_SIDECAR_SUFFIX = ".json"
ENGINE_SIDECAR_KEYS: tuple[str, ...] = (
    "format", "schema", "esccs_version", "tensorrt_version", "gpu", "profiles", "precision", "source_onnx",
    "checkpoint_sha256", "compatibility", "workspace_gb", "metadata",
)
