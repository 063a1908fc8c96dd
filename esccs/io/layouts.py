"""Find the samples of a data set on disk: SEN12MS, SEN12MS-CR and generic paired folders (torch-free).

A scan turns a folder into :class:`Sample` records (id, one path per modality, split, scene group) plus a list of
skipped files with the reason, so that a bad file never stops a scan and is always reported. Modality keys are the
SEN12MS sensor names whatever the layout: ``s2`` (clear optical), ``s2_cloudy``, ``s1`` (SAR), ``lc``, ``cloud_mask``.

Layouts (``root`` is the folder the reader is pointed at):

- ``sen12ms``:    ``root/ROIs1158_spring/{s1,s2,lc}_12/ROIs1158_spring_{s1,s2,lc}_12_p34.tif``
- ``sen12ms-cr``: ``root/ROIs1158_spring_{s1,s2,s2_cloudy}/{sensor}_12/ROIs1158_spring_{sensor}_12_p34.tif``
- ``paired``:     ``root[/<split>]/{optical,sar,cloud_mask}/<id>.tif`` + ``labels.csv`` + ``dataset.json``
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from esccs.errors import DatasetNotFoundError, MissingPartnerError
from esccs.io.names import try_parse_name
from esccs.spec import DATASET_CARD, SEN12MS_BROKEN

_ROI_DIR = re.compile(r"^ROIs\d{4}_(spring|summer|fall|winter)(?P<sensor>_s1|_s2|_s2_cloudy|_lc|_cloud_mask)?$")
#: Paired-layout folder -> modality key. ``optical`` maps to the card's ``optical`` entry (default ``s2``).
PAIRED_FOLDERS: dict[str, str] = {"optical": "", "optical_clear": "s2", "sar": "s1", "cloud_mask": "cloud_mask",
                                  "landcover": "lc"}


@dataclass
class Sample:
    """One co-registered sample: its id, a file per modality, its split and its scene group."""

    id: str
    paths: dict[str, Path]
    split: str | None = None
    group: tuple = ()

    def has(self, *modalities: str) -> bool:
        """Whether every named modality has a file."""
        return all(m in self.paths for m in modalities)


@dataclass
class Scan:
    """What a scan found: samples (sorted by id), skipped files with reasons, the layout and the dataset card."""

    root: Path
    layout: str
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    card: dict = field(default_factory=dict)


def read_card(root: Path) -> dict:
    """The dataset card ``root/dataset.json`` (``{}`` when there is none)."""
    path = Path(root) / DATASET_CARD
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetNotFoundError(path, f"unreadable dataset card ({e})") from None
    if not isinstance(card, dict):
        raise DatasetNotFoundError(path, "dataset card must be a JSON object")
    return card


def detect_layout(root: Path, card: dict | None = None) -> str:
    """Name the layout of ``root``: ``sen12ms``, ``sen12ms-cr`` or ``paired``.

    Raises:
        DatasetNotFoundError: the folder is missing, empty, or holds no known layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(root, "no such folder")
    card = read_card(root) if card is None else card
    if card.get("layout") in ("sen12ms", "sen12ms-cr", "paired"):
        return card["layout"]
    kinds = {m["sensor"] is not None for d in root.iterdir() if d.is_dir() and (m := _ROI_DIR.match(d.name))}
    if kinds:
        return "sen12ms-cr" if True in kinds else "sen12ms"
    if _paired_dirs(root):
        return "paired"
    what = "empty folder" if not any(root.iterdir()) else "no SEN12MS ROIs*/ folders and no optical/ + sar/ folders"
    raise DatasetNotFoundError(root, what)


def scan(root: str | Path, card: dict | None = None, require: tuple[str, ...] = ("s1",)) -> Scan:
    """Scan ``root`` in its layout; samples lacking a ``require``-d modality are skipped with the reason.

    Raises:
        DatasetNotFoundError: no layout detected, or no usable sample at all.
    """
    root = Path(root)
    card = read_card(root) if card is None else card
    layout = detect_layout(root, card)
    samples, skipped = (_scan_sen12ms(root) if layout != "paired" else _scan_paired(root, card))
    kept = []
    for s in samples:
        missing = [m for m in require if m not in s.paths]
        if missing:
            have = s.paths.get("s2") or s.paths.get("s2_cloudy") or next(iter(s.paths.values()))
            err = MissingPartnerError(have, f"no {'/'.join(missing)} partner for sample {s.id}")
            skipped.append((err.path, err.reason))
        else:
            kept.append(s)
    _assign_splits(kept, card)
    if not kept:
        why = f"no usable samples ({len(skipped)} files skipped" + (f", e.g. {skipped[0][1]})" if skipped else ")")
        raise DatasetNotFoundError(root, why)
    return Scan(root, layout, sorted(kept, key=lambda s: s.id), skipped, card)


def _scan_sen12ms(root: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Group SEN12MS-family files by sample id (the S2 name); foreign or broken files are skipped."""
    by_id: dict[str, Sample] = {}
    skipped: list[tuple[str, str]] = []
    for path in sorted(root.glob("ROIs*/*/*")):
        if path.name.startswith(".") or not path.is_file():
            continue  # temp files of an interrupted write
        name = try_parse_name(path)
        if name is None:
            skipped.append((str(path), "not a SEN12MS file name (ROIs<seed>_<season>_<sensor>_<scene>_p<patch>.tif)"))
            continue
        if name.sample_id in SEN12MS_BROKEN:
            skipped.append((str(path), "known broken SEN12MS patch (NaN in S1), excluded like the official loaders"))
            continue
        s = by_id.setdefault(name.sample_id, Sample(name.sample_id, {}, group=name.group))
        s.paths[name.sensor] = path
    return list(by_id.values()), skipped


def _paired_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """``(split, folder)`` pairs that hold ``optical/`` and ``sar/``: the root itself or its split sub-folders."""
    if (root / "optical").is_dir() and (root / "sar").is_dir():
        return [(None, root)]
    return [(d.name, d) for d in sorted(root.iterdir())
            if d.is_dir() and (d / "optical").is_dir() and (d / "sar").is_dir()]


def _scan_paired(root: Path, card: dict) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Pair ``<split>/<modality folder>/<id>.tif`` files by id."""
    folders = {**PAIRED_FOLDERS, "optical": card.get("optical", "s2")}
    samples: dict[tuple, Sample] = {}
    skipped: list[tuple[str, str]] = []
    for split, base in _paired_dirs(root):
        for folder, key in folders.items():
            for path in sorted((base / folder).glob("*")) if (base / folder).is_dir() else []:
                if path.name.startswith(".") or not path.is_file():
                    continue
                if path.suffix.lower() not in (".tif", ".tiff"):
                    skipped.append((str(path), f"not a .tif file in {folder}/"))
                    continue
                sid = path.stem
                s = samples.setdefault((split, sid), Sample(sid, {}, split=split, group=_paired_group(sid)))
                s.paths[key] = path
    return list(samples.values()), skipped


_PAIRED_SCENE = re.compile(r"^(?P<scene>.+?)_p\d+$")


def _paired_group(sample_id: str) -> tuple:
    """Scene group of a paired-layout id: ``<scene>_p<patch>`` ids group by scene, other ids stand alone."""
    m = _PAIRED_SCENE.match(sample_id)
    return (m["scene"],) if m else (sample_id,)


def _assign_splits(samples: list[Sample], card: dict) -> None:
    """Set each sample's split from the card's scene-grouped splits (split folders of a paired layout win)."""
    splits = card.get("splits") or {}
    where = {tuple(g): name for name, groups in splits.items() for g in groups}
    for s in samples:
        if s.split is None:
            key = tuple(s.group)
            s.split = where.get(key) or where.get(tuple(str(x) for x in key))


def group_index(samples: list[Sample]) -> dict[tuple, list[int]]:
    """Sample indices per scene group (patches of one scene overlap: split by group, never by patch)."""
    out: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        out[tuple(s.group)].append(i)
    return dict(out)
