"""``esccs data``: make, inspect, look at and probe data sets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from esccs.cli._options import float_list
from esccs.io.tiff_profiles import TIFF_PROFILES


@click.group()
def data() -> None:
    """Make, inspect and look at data sets (SEN12MS, SEN12MS-CR, paired folders, synthetic)."""


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--samples", default=2000, show_default=True, help="Total number of patches (source + target).")
@click.option("--size", default=128, show_default=True, help="Patch size in pixels (10 m); SEN12MS uses 256.")
@click.option("--cloud-levels", default="0,0.25,0.5,0.75,1.0", show_default=True, callback=float_list,
              help="Cloud-cover fractions of the target patches, used equally often.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the output is identical for one seed.")
@click.option("--classes", type=click.Choice(["sen12ms_cloud", "igbp_simple"]), default="sen12ms_cloud",
              show_default=True, help="Class list: the paper's SEN12MS Cloud scenes, or simplified IGBP labels.")
@click.option("--source-fraction", default=0.5, show_default=True,
              help="Share of scenes in the labelled cloud-free source part (the rest is the cloudy target).")
@click.option("--patches-per-scene", default=20, show_default=True, help="Patches per (season, scene) group.")
@click.option("--layout", type=click.Choice(["sen12ms", "paired"]), default="sen12ms", show_default=True,
              help="sen12ms: SEN12MS source + SEN12MS-CR target trees; paired: <split>/{optical,sar,cloud_mask}/.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, help="Worker processes.")
@click.option("--tiff-profile", type=click.Choice(list(TIFF_PROFILES)), default="sen12ms", show_default=True,
              help="GeoTIFF layout on disk (same values): sen12ms is how SEN12MS tiles are written (uncompressed, "
                   "pixel-interleaved strips; docs/data.md, Tile layout); the others are the striped / tiled, "
                   "band-interleaved, DEFLATE / LZW / ZSTD / LZMA, predictor, BigTIFF and COG layouts of users' tiles.")
@click.option("--compress", type=click.Choice(["none", "deflate", "lzw"]), default="none", show_default=True,
              help="GeoTIFF compression (none is fastest and what SEN12MS ships).")
@click.option("--shift", type=click.Choice(["none", "season", "sensor", "season+sensor"]), default="none",
              show_default=True,
              help="Distribution shift between source and target besides the clouds: season (source scenes in "
                   "spring/summer, target in fall/winter), sensor (per-band S2 gain/offset and an S1 dB offset on "
                   "the target), or both. See docs/data.md.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run into OUT (files already written are kept).")
@click.option("--overwrite", is_flag=True, help="Replace an existing esccs data set in OUT.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(out: Path, samples: int, size: int, cloud_levels, seed: int, classes: str, source_fraction: float,
          patches_per_scene: int, layout: str, workers: int, tiff_profile: str, compress: str, shift: str, resume: bool,
          overwrite: bool, quiet: bool) -> None:
    """Write a synthetic cloudy optical + SAR data set to OUT, in the real SEN12MS / SEN12MS-CR layouts.

    \b
    OUT/source/  cloud-free S2 (13 bands, uint16 L1C DN) + S1 (VV, VH dB) + lc, labelled; its own scenes
    OUT/target/  cloudy S2 + S1 + cloud mask (0 clear, 1 thick, 2 thin, 3 shadow) on other scenes; the clear S2
                 and labels.csv are for evaluation only
    Each part has dataset.json (layout, classes, bands, scene-grouped splits), labels.csv and
    IGBP_probability_labels.pkl; the target adds clouds.csv. GeoTIFFs are in UTM with 10 m pixels.
    """
    from esccs.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(out=out, samples=samples, size=size, cloud_levels=cloud_levels, seed=seed, classes=classes,
                      source_fraction=source_fraction, patches_per_scene=patches_per_scene, layout=layout,
                      workers=workers, compress=None if compress == "none" else compress, tiff_profile=tiff_profile,
                      resume=resume,
                      overwrite=overwrite, shift=shift)
    report = synthesize(cfg, progress=not quiet)
    click.echo(f"wrote {len(report.records)} samples to {out} in {report.seconds:.1f} s "
               f"({report.samples_per_second:.1f} samples/s, {workers} workers, {size}x{size} px)")
    _print_summary(report.summary())


def _print_summary(summary: dict) -> None:
    for part, s in summary.items():
        if not isinstance(s, dict) or "samples" not in s:
            continue
        splits = ", ".join(f"{k} {v}" for k, v in sorted(s.get("splits", {}).items()))
        click.echo(f"  {part:7s} {s['samples']:6d} samples, {s.get('scenes', '?')} scenes ({splits})")
        if s.get("classes"):
            click.echo("          classes: " + ", ".join(f"{c} {n}" for c, n in s["classes"].items()))
        if s.get("cloud_levels"):
            click.echo("          cloud levels: " + ", ".join(
                f"{lvl} -> {v['mean_coverage']:.2f} ({v['samples']})" for lvl, v in s["cloud_levels"].items()))


@data.command()
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--part", default=None, help="Part of a synthetic data set (source, target); default: all parts.")
@click.option("--check", is_flag=True, help="Read every sample and list the bad ones (slower).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(root: Path, part: str | None, check: bool, as_json: bool) -> None:
    """Summarise a data set: layout, samples per split and class, cloud strata, skipped files and why."""
    from esccs.data import open_dataset, parts_of

    summaries = {}
    for name in [part] if part else (parts_of(root) or [None]):
        ds = open_dataset(root, part=name, check=check)
        summaries[name or root.name] = ds.summary()
    if as_json:
        click.echo(json.dumps(summaries, indent=2, default=str))
        return
    for name, s in summaries.items():
        click.echo(f"{name}: {s['samples']} samples, layout {s['layout']}, optical {s['optical']} "
                   f"({len(s['bands'])} bands), root {s['root']}")
        click.echo("  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items())))
        if s["classes"]:
            click.echo("  classes: " + ", ".join(f"{c} {n}" for c, n in s["classes"].items()))
        if s["cloud_strata"]:
            click.echo("  cloud strata: " + ", ".join(f"{c} {n}" for c, n in s["cloud_strata"].items()))
        click.echo(f"  skipped: {s['skipped']}")
        for line in s["skipped_files"]:
            click.echo(f"    {line}")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG to write (default: ROOT/quicklook.png).")
@click.option("--part", default="target", show_default=True, help="Part of a synthetic data set to show.")
@click.option("-n", "--samples", "n", default=6, show_default=True, help="Number of samples (rows).")
@click.option("--seed", default=0, show_default=True, help="Which samples: a seeded pick across cloud levels.")
def show(root: Path, out: Path | None, part: str, n: int, seed: int) -> None:
    """Write a PNG grid: true-colour S2, cloudy S2, SAR false colour, cloud mask and label per sample."""
    from esccs.data.show import quicklook

    path = quicklook(root, out or root / "quicklook.png", part=part, n=n, seed=seed)
    click.echo(f"quick-look picture: {path}")


@data.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--part", default="target", show_default=True, help="Part to probe (needs labels, clear + cloudy S2).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write figures as JSON.")
@click.option("--max-samples", default=4000, show_default=True, help="Cap on samples read.")
def probe(root: Path, part: str, out: Path | None, max_samples: int) -> None:
    """How much each modality tells: a per-band-statistics + logistic-regression probe.

    Trains on the part's train scenes and tests on its held-out scenes: clear optical, cloudy optical by cloud
    level, SAR, and cloudy optical + SAR. A data set where the transfer method matters shows clear optical
    strongest, SAR weaker but flat across cloud levels, and cloudy optical falling as clouds thicken.
    """
    from esccs.data.probe import format_probe, run_probe

    result = run_probe(root, part=part, max_samples=max_samples)
    click.echo(format_probe(result))
    if out:
        from esccs.io.atomic import write_json

        write_json(out, result)
        click.echo(f"wrote {out}")
