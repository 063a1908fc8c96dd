"""A SEN12MS-CR tile is classified from its own cloudy S2 as written, or fails: never cast, never swapped.

The folder is the target part of ``esccs data synth`` (the real SEN12MS-CR layout), damaged one way per tile: a
cloudy S2 rewritten as ``uint8``, a directory in place of a cloudy S2, a cloudy S2 deleted. Every damaged tile still
has its clear S2 beside it, the image the runtime used to fall back to.
"""

import shutil

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rt_helpers import read_csv, read_job, write_tif

from esccs.cli import cli
from esccs.runtime import open_tiles

#: damage -> (words the reason must hold)
DAMAGE = {"uint8": "optical must be uint16 L1C DN", "directory": "a directory, not a GeoTIFF file",
          "deleted": "no such file"}


def _damage(path, how):
    if how == "uint8":
        with rasterio.open(path) as src:
            arr, crs, transform = src.read(), src.crs, src.transform
        write_tif(path, (arr // 64).astype(np.uint8), crs=crs, transform=transform)  # an 8-bit "quick look" export
    elif how == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()


@pytest.fixture(scope="module", params=["with card", "no card"])
def damaged(request, synth_root, tmp_path_factory):
    """``(root, {sample id: (damage, cloudy path)})``; 'no card' is a SEN12MS-CR folder as downloaded."""
    root = tmp_path_factory.mktemp("cr") / "target"
    shutil.copytree(synth_root / "target", root)
    if request.param == "no card":
        (root / "dataset.json").unlink()
    jobs = open_tiles(root).jobs
    damaged = {}
    for job, how in zip(jobs[::5], DAMAGE):
        assert "s2_cloudy" in job.optical
        _damage(root.joinpath(job.optical[len(str(root)) + 1:]), how)
        damaged[job.id] = (how, job.optical)
    return root, damaged


def test_jobs_point_at_the_cloudy_file_even_when_it_is_missing(damaged):
    root, bad = damaged
    jobs = {j.id: j for j in open_tiles(root).jobs}
    assert len(jobs) == 20
    for sid, (_, cloudy) in bad.items():
        assert jobs[sid].optical == cloudy and "_s2_cloudy_" in cloudy
    assert all("_s2_cloudy_" in j.optical for j in jobs.values())


@pytest.mark.parametrize("reader", ["auto", "rasterio"])  # the fast path, and the rasterio path forced
def test_each_damaged_tile_fails_alone_with_its_cloudy_file_named(damaged, onnx_path, ort_model, tmp_path, reader):
    root, bad = damaged
    out = tmp_path / "res.csv"
    result = CliRunner().invoke(cli, ["infer", str(root), "--model", str(onnx_path), "--out", str(out), "--quiet",
                                      "--threads", "1"], env={"ESCCS_READER": reader})
    assert result.exit_code == 3, result.output
    errors = {r["id"]: r for r in read_csv(out.with_name("res.errors.csv"))}
    assert sorted(errors) == sorted(bad)
    for sid, (how, cloudy) in bad.items():
        assert errors[sid]["path"] == cloudy, errors[sid]
        assert DAMAGE[how] in errors[sid]["reason"] and "\n" not in errors[sid]["reason"], errors[sid]
    rows = read_csv(out)
    assert len(rows) == 20 - len(bad) and not {r["id"] for r in rows} & set(bad)
    # the healthy tiles are classified from their cloudy S2, as read with plain rasterio
    jobs = {j.id: j for j in open_tiles(root).jobs}
    for r in rows[:3]:
        optical, sar = read_job(jobs[r["id"]], ort_model.info)
        probs = ort_model.predict(optical[None], sar[None])["probs"][0]
        assert float(r["confidence"]) == pytest.approx(float(probs.max()), abs=2e-6)
