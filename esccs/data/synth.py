"""``esccs data synth``: write a synthetic cloudy optical + SAR data set in the real SEN12MS / SEN12MS-CR layouts.

The data set has two parts on disjoint scenes, the way the transfer method needs them:

- ``source/`` (SEN12MS layout ``ROIs<seed>_<season>/{s1,s2,lc}_<scene>/...``): cloud-free S2 with labels;
- ``target/`` (SEN12MS-CR layout ``ROIs<seed>_<season>_{s1,s2,s2_cloudy,cloud_mask}/...``): cloudy S2 + S1, with a
  cloud mask per patch; the clear S2 and the labels are written for evaluation only.

Each part folder is a data-set root with its own card (``dataset.json``: layout, classes, bands, splits, label file),
``labels.csv`` (``id,label``) and ``IGBP_probability_labels.pkl`` (the real label-file format, from the ``lc`` maps);
the target part adds ``clouds.csv``. Generation is deterministic per seed (one random stream per sample, so the
worker count does not change the output), every file is written atomically, and ``resume`` skips finished files.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rasterio.transform import from_origin

from esccs import __version__
from esccs.data import clouds as cl
from esccs.data import scenes
from esccs.errors import EsccsError
from esccs.io import raster
from esccs.io.atomic import atomic_path, write_json, write_text
from esccs.io.names import PatchName
from esccs.spec import DATASET_CARD, DATASET_CARD_SCHEMA, LC_BANDS, S1_BANDS, S2_BANDS, SEASON_SEEDS

SEASONS = tuple(SEASON_SEEDS)
_MARKER = ".esccs-synth-in-progress"
#: Cloud presets drawn per target sample: heavier levels are mostly thick clouds (they wipe the optical cue).
PRESET_WEIGHTS = {"light": {"thick": 0.4, "local": 0.25, "thin": 0.25, "fog": 0.1},
                  "heavy": {"thick": 0.7, "local": 0.0, "thin": 0.15, "fog": 0.15}}
SHIFTS = ("none", "season", "sensor", "season+sensor")
#: ``sensor`` shift: range of the target part's per-band S2 gain and offset (DN), and its S1 offset (dB, VV / VH)
SENSOR_GAIN, SENSOR_OFFSET, SENSOR_SAR_DB = (0.88, 1.12), (-50.0, 50.0), (1.0, 1.5)


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``esccs data synth`` (field names match the CLI flags)."""

    out: Path
    samples: int = 2000
    size: int = 128
    cloud_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seed: int = 0
    classes: str = "sen12ms_cloud"
    source_fraction: float = 0.5
    patches_per_scene: int = 20
    layout: str = "sen12ms"
    looks: float = 4.4
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    compress: str | None = None
    tiff_profile: str = "sen12ms"  # GeoTIFF layout: esccs.io.raster.TIFF_PROFILES (docs/data.md, "Tile layout")
    resume: bool = False
    overwrite: bool = False
    #: distribution shift between the source and target parts besides the clouds (docs/data.md): ``season``
    #: (source scenes in spring / summer, target scenes in fall / winter), ``sensor`` (a per-band S2 gain and
    #: offset and an S1 calibration offset on the target part), or both (``season+sensor``)
    shift: str = "none"

    def __post_init__(self) -> None:
        scenes.scene_classes(self.classes)  # validates the preset
        if self.shift not in SHIFTS:
            raise EsccsError(f"--shift must be one of {', '.join(SHIFTS)}, got {self.shift!r}")
        if self.samples < 4:
            raise EsccsError(f"--samples must be at least 4 (two parts x two scenes), got {self.samples}")
        if not 16 <= self.size <= 1024:
            raise EsccsError(f"--size must be within 16..1024 px, got {self.size}")
        if not self.cloud_levels or any(not 0.0 <= c <= 1.0 for c in self.cloud_levels):
            raise EsccsError(f"--cloud-levels must be fractions in [0, 1], got {self.cloud_levels}")
        if not 0.0 < self.source_fraction < 1.0:
            raise EsccsError(f"--source-fraction must be in (0, 1), got {self.source_fraction}")
        if self.layout not in ("sen12ms", "paired"):
            raise EsccsError(f"--layout must be 'sen12ms' or 'paired', got {self.layout!r}")
        if self.tiff_profile not in raster.TIFF_PROFILES:
            raise EsccsError(f"--tiff-profile must be one of {', '.join(raster.TIFF_PROFILES)}, "
                             f"got {self.tiff_profile!r}")


@dataclass(frozen=True)
class SamplePlan:
    """Everything that decides one sample before any pixel is drawn."""

    index: int
    part: str  # "source" | "target"
    split: str  # source: train/val; target: train/test
    season: str
    scene: int
    patch: int
    class_name: str
    level: float  # requested cloud coverage (target only)
    preset: str  # cloud preset (target only)
    epsg: int
    origin: tuple[float, float]

    @property
    def name(self) -> PatchName:
        """The patch's SEN12MS name (S2 sensor)."""
        return PatchName(self.season, self.scene, self.patch)


def plan_dataset(cfg: SynthConfig) -> list[SamplePlan]:
    """Decide scenes, parts, splits, classes, cloud levels and georeferencing of every sample (deterministic)."""
    rng = np.random.default_rng([cfg.seed, 0])
    classes = scenes.scene_classes(cfg.classes)
    n_scenes = max(4, math.ceil(cfg.samples / cfg.patches_per_scene))
    n_source = min(n_scenes - 2, max(2, round(n_scenes * cfg.source_fraction)))
    scene_ids = {s: iter(sorted(rng.choice(np.arange(1, max(150, n_scenes + 1)), n_scenes, replace=False)))
                 for s in SEASONS}
    per_scene = np.full(n_scenes, cfg.samples // n_scenes)
    per_scene[: cfg.samples % n_scenes] += 1
    part_of = ["source"] * n_source + ["target"] * (n_scenes - n_source)
    splits = _scene_splits(part_of, rng)
    levels = _balanced_levels(cfg, part_of, per_scene, rng)
    plans, index = [], 0
    for k in range(n_scenes):
        season = SEASONS[k % len(SEASONS)]
        if "season" in cfg.shift:  # source in spring / summer, target in fall / winter
            season = (SEASONS[:2] if part_of[k] == "source" else SEASONS[2:])[k % 2]
        scene = int(next(scene_ids[season]))
        prior = 0.5 / len(classes) + 0.5 * rng.dirichlet(np.ones(len(classes)))  # scenes are class-skewed
        epsg = 32600 + int(rng.integers(1, 61))
        x0, y0 = float(rng.integers(30, 70)) * 1e4, float(rng.integers(100, 700)) * 1e4
        patch = int(rng.integers(0, 50))
        for j in range(int(per_scene[k])):
            patch += int(rng.integers(1, 4))  # real patch ids are not contiguous
            level = levels.pop() if part_of[k] == "target" else 0.0
            weights = PRESET_WEIGHTS["heavy" if level >= 0.75 else "light"]
            preset = str(rng.choice(list(weights), p=list(weights.values())))
            col, row = j % 8, j // 8  # patches tile the scene
            origin = (x0 + col * cfg.size * 10.0, y0 - row * cfg.size * 10.0)
            plans.append(SamplePlan(index, part_of[k], splits[k], season, scene, patch,
                                    str(rng.choice(classes, p=prior)), level, preset, epsg, origin))
            index += 1
    return plans


def _scene_splits(part_of: list[str], rng: np.random.Generator) -> list[str]:
    """Scene-grouped splits: source 80/20 train/val, target 70/30 train/test, at least one scene each."""
    out = [""] * len(part_of)
    for part, (first, second, frac) in {"source": ("train", "val", 0.8), "target": ("train", "test", 0.7)}.items():
        idx = [i for i, p in enumerate(part_of) if p == part]
        rng.shuffle(idx)
        n_first = min(len(idx) - 1, max(1, round(len(idx) * frac)))
        for pos, i in enumerate(idx):
            out[i] = first if pos < n_first else second
    return out


def _balanced_levels(cfg: SynthConfig, part_of, per_scene, rng) -> list[float]:
    """Cloud levels for the target samples: each level equally often, in random order."""
    n_target = int(sum(n for p, n in zip(part_of, per_scene) if p == "target"))
    levels = [cfg.cloud_levels[i % len(cfg.cloud_levels)] for i in range(n_target)]
    rng.shuffle(levels)
    return levels


# --------------------------------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------------------------------

def make_arrays(plan: SamplePlan, cfg: SynthConfig) -> dict[str, np.ndarray | float | str]:
    """Draw all rasters of one sample: s2 (13,H,W) uint16, s1 (2,H,W) float32 dB, lc (4,H,W) uint8, clouds."""
    rng = np.random.default_rng([cfg.seed, 1, plan.index])
    look = scenes.SceneLook.sample(plan.season, np.random.default_rng([cfg.seed, 2, plan.scene, len(plan.season)]))
    shape = (cfg.size, cfg.size)
    emap = scenes.element_map(plan.class_name, cfg.classes, shape, rng)
    lc = np.zeros((4, *shape), np.uint8)
    lc[0] = scenes.igbp_map(emap)  # LCCS bands 2-4 are not simulated (left 0)
    out: dict = {"s2": scenes.render_s2(emap, look, rng), "s1": scenes.render_s1(emap, look, rng, cfg.looks),
                 "lc": lc, "fractions": scenes.igbp_fractions(lc[0])}
    if plan.part == "target" and "sensor" in cfg.shift:
        out["s2"], out["s1"] = sensor_shift(out["s2"], out["s1"], cfg.seed)
    if plan.part == "target":
        res = cl.simulate_clouds(out["s2"], plan.level, rng, preset=plan.preset)
        out.update(s2_cloudy=res.image, cloud_mask=res.mask, coverage=res.coverage, preset=res.preset)
    return out


def sensor_shift(s2: np.ndarray, s1: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``sensor`` shift: one per-band gain and offset of the S2 DN and one S1 offset (dB) per data set."""
    rng = np.random.default_rng([seed, 7])
    gain = rng.uniform(*SENSOR_GAIN, size=(len(s2), 1, 1)).astype(np.float32)
    offset = rng.uniform(*SENSOR_OFFSET, size=(len(s2), 1, 1)).astype(np.float32)
    s2 = np.clip(s2.astype(np.float32) * gain + offset, 1, 10000).astype(np.uint16)
    s1 = (s1 + np.array(SENSOR_SAR_DB, np.float32)[:, None, None]).astype(np.float32)
    return s2, s1


def _files(plan: SamplePlan, cfg: SynthConfig) -> dict[str, Path]:
    """Where each modality of a sample goes, for the configured layout."""
    root = Path(cfg.out) / plan.part
    mods = ("s2", "s1", "lc") if plan.part == "source" else ("s2", "s1", "s2_cloudy", "cloud_mask")
    if cfg.layout == "sen12ms":
        layout = "sen12ms" if plan.part == "source" else "sen12ms-cr"
        return {m: plan.name.with_sensor(m).path(root, layout) for m in mods}
    folders = {"s2": "optical", "s1": "sar", "lc": "landcover", "cloud_mask": "cloud_mask"}
    if plan.part == "target":
        folders.update(s2="optical_clear", s2_cloudy="optical")
    stem = paired_id(plan)
    return {m: root / plan.split / folders[m] / f"{stem}.tif" for m in mods}


def paired_id(plan: SamplePlan) -> str:
    """Sample id in the paired-folder layout (the S2 name without sensor and suffix)."""
    return f"{plan.name.roi}_{plan.scene}_p{plan.patch}"


_BANDS = {"s2": S2_BANDS, "s2_cloudy": S2_BANDS, "s1": S1_BANDS, "lc": LC_BANDS, "cloud_mask": ("cloud_mask",)}


def make_sample(plan: SamplePlan, cfg: SynthConfig) -> dict:
    """Generate and write one sample; return its record (id, label, IGBP fractions, cloud statistics)."""
    arrays = make_arrays(plan, cfg)
    transform = from_origin(plan.origin[0], plan.origin[1], 10.0, 10.0)
    for mod, path in _files(plan, cfg).items():
        if cfg.resume and path.exists():
            continue
        raster.write(path, arrays[mod], plan.epsg, transform, band_names=_BANDS[mod], compress=cfg.compress,
                     profile=cfg.tiff_profile)
    record = {"id": plan.name.filename if cfg.layout == "sen12ms" else paired_id(plan), "plan": plan,
              "fractions": arrays["fractions"]}
    if plan.part == "target":
        mask = arrays["cloud_mask"]
        record.update(coverage=float(arrays["coverage"]), preset=arrays["preset"],
                      thick=float((mask == 1).mean()), thin=float((mask == 2).mean()),
                      shadow=float((mask == 3).mean()))
    return record


def _make_sample_star(args: tuple[SamplePlan, SynthConfig]) -> dict:
    return make_sample(*args)


# --------------------------------------------------------------------------------------------------------------------
# The whole data set
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class SynthReport:
    """What a synth run made: counts, time and where."""

    out: Path
    records: list[dict]
    seconds: float
    classes: tuple[str, ...]

    @property
    def samples_per_second(self) -> float:
        """Generation speed, files written included."""
        return len(self.records) / max(self.seconds, 1e-9)

    def summary(self) -> dict:
        """Counts per part and split, per class and per cloud level, for printing and the index card."""
        parts: dict = {}
        for r in self.records:
            p = r["plan"]
            entry = parts.setdefault(p.part, {"samples": 0, "scenes": set(), "splits": Counter(), "classes": Counter()})
            entry["samples"] += 1
            entry["scenes"].add((p.season, p.scene))
            entry["splits"][p.split] += 1
            entry["classes"][r["label"]] += 1
        out = {k: {"samples": v["samples"], "scenes": len(v["scenes"]), "splits": dict(v["splits"]),
                   "classes": {c: v["classes"].get(c, 0) for c in self.classes}} for k, v in parts.items()}
        levels = Counter(r["plan"].level for r in self.records if "coverage" in r)
        cover = {lvl: float(np.mean([r["coverage"] for r in self.records
                                     if "coverage" in r and r["plan"].level == lvl])) for lvl in levels}
        out["target"]["cloud_levels"] = {f"{lvl:g}": {"samples": n, "mean_coverage": round(cover[lvl], 4)}
                                         for lvl, n in sorted(levels.items())}
        return out


def synthesize(cfg: SynthConfig, progress: bool = True) -> SynthReport:
    """Generate the data set described by ``cfg`` (see the module docstring); return a report."""
    out = Path(cfg.out)
    _prepare_out(out, cfg)
    classes = scenes.scene_classes(cfg.classes)
    plans = plan_dataset(cfg)
    t0 = time.perf_counter()
    tasks = [(p, cfg) for p in plans]
    records = []
    with _progress(len(plans), progress) as bar:
        if cfg.workers <= 1:
            for t in tasks:
                records.append(_make_sample_star(t))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
                chunk = max(1, min(16, len(tasks) // (4 * cfg.workers)))
                for rec in pool.map(_make_sample_star, tasks, chunksize=chunk):
                    records.append(rec)
                    bar.update()
    for r in records:
        r["label"] = _label_of(r, cfg)
    report = SynthReport(out, records, time.perf_counter() - t0, classes)
    for part in ("source", "target"):
        _write_part(out / part, part, [r for r in records if r["plan"].part == part], cfg, classes)
    write_json(out / DATASET_CARD, _index_card(cfg, report))
    (out / _MARKER).unlink(missing_ok=True)
    return report


def _label_of(record: dict, cfg: SynthConfig) -> str:
    """The class name of a sample: its scene class, or for IGBP the argmax of its simplified fractions."""
    if cfg.classes == "igbp_simple":
        return scenes.scene_classes("igbp_simple")[scenes.igbp_simple_label(record["fractions"])]
    return record["plan"].class_name


def _prepare_out(out: Path, cfg: SynthConfig) -> None:
    """Refuse to mix with an existing data set unless asked to resume or overwrite."""
    if out.exists() and any(out.iterdir()):
        ours = (out / DATASET_CARD).exists() or (out / _MARKER).exists()
        if cfg.overwrite and ours:
            shutil.rmtree(out)
        elif cfg.overwrite:
            raise EsccsError(f"{out}: not empty and not an esccs synthetic data set; refusing to delete it")
        elif not cfg.resume:
            raise EsccsError(f"{out}: already exists; pass --resume to finish it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).touch()


def _write_part(root: Path, part: str, records: list[dict], cfg: SynthConfig, classes: tuple[str, ...]) -> None:
    """Write a part's labels, IGBP label file, cloud table and card."""
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "labels.csv", "id,label\n" + "".join(f"{r['id']},{r['label']}\n" for r in records))
    if cfg.layout == "sen12ms":  # the real label file is keyed by S2 file name
        with atomic_path(root / "IGBP_probability_labels.pkl") as tmp, open(tmp, "wb") as f:
            pickle.dump({r["id"]: r["fractions"] for r in records}, f, protocol=4)
    if part == "target":
        rows = [f"{r['id']},{r['plan'].level:g},{r['preset']},{r['coverage']:.4f},{r['thick']:.4f},{r['thin']:.4f},"
                f"{r['shadow']:.4f}\n" for r in records]
        write_text(root / "clouds.csv", "id,level,preset,coverage,thick,thin,shadow\n" + "".join(rows))
    splits: dict[str, list] = {}
    for r in records:
        group = [r["plan"].season, r["plan"].scene]
        if group not in splits.setdefault(r["plan"].split, []):
            splits[r["plan"].split].append(group)
    layout = cfg.layout if cfg.layout == "paired" else ("sen12ms" if part == "source" else "sen12ms-cr")
    card = {
        "schema": DATASET_CARD_SCHEMA, "kind": "part", "name": part, "role": part, "layout": layout,
        "classes": list(classes), "optical_bands": list(S2_BANDS), "sar_bands": list(S1_BANDS),
        "labels": "labels.csv", "labels_eval_only": part == "target",
        "optical": "s2" if part == "source" else "s2_cloudy", "splits": splits,
        "samples": len(records), "patch_size": cfg.size,
    }
    if part == "target":
        card["clouds"] = "clouds.csv"
    write_json(root / DATASET_CARD, card)


def _index_card(cfg: SynthConfig, report: SynthReport) -> dict:
    gen = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
           if k not in ("out", "workers", "resume", "overwrite")}
    return {"schema": DATASET_CARD_SCHEMA, "kind": "index", "name": Path(cfg.out).name,
            "parts": {"source": "source", "target": "target"}, "classes": list(report.classes),
            "generator": {"name": "esccs data synth", "version": __version__, **gen},
            "summary": report.summary()}


class _progress:
    """A tqdm bar when asked for and installed, else a no-op with the same two methods."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # disable=None: no bar when the output is piped (logs stay readable)
            self.bar = tqdm(total=total, unit="sample", desc="synth", dynamic_ncols=True, disable=None)

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update()


__all__ = ["SynthConfig", "SynthReport", "SamplePlan", "plan_dataset", "make_arrays", "make_sample", "synthesize"]
