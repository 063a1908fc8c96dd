"""Bad tiles fail alone: the good tile is classified, each bad one is reported once with a reason naming its file."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin
from rt_helpers import ORIGIN, PATCH, read_csv, read_job, read_json, write_tif
from rt_helpers import optical_dn as _optical
from rt_helpers import sar_db as _sar

from esccs.cli import cli
from esccs.runtime import open_tiles

#: bad sample id -> (folder of the file the reason must name, words the reason must hold)
BAD = {
    "trunc_optical": ("optical", "truncated or unreadable"),
    "trunc_sar": ("sar", "truncated or unreadable"),
    "not_a_tiff": ("optical", "not a readable GeoTIFF"),
    "five_bands": ("optical", "needs 13 bands"),
    "grid_crs": ("sar", "CRS EPSG:32634 differs from EPSG:32633"),
    "grid_transform": ("sar", "transform differs"),
    "grid_size": ("sar", "size 20x20 differs from 16x16"),
    "nan_sar": ("sar", "SAR is all NaN"),
    "zero_optical": ("optical", "optical is all nodata"),
    "too_small": ("optical", f"tile 8x8 is smaller than the model input {PATCH}x{PATCH}"),
    "no_sar": ("optical", "no SAR partner for sample no_sar"),
    "uint8_optical": ("optical", "optical must be uint16 L1C DN"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """A paired-layout folder: one good tile (with a cloud mask) and one tile per way of being bad."""
    root = tmp_path_factory.mktemp("bad") / "tiles"
    rng = np.random.default_rng(7)
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"layout": "paired", "optical": "s2"}))

    def pair(sid, optical=None, sar=None, sar_crs="EPSG:32633", sar_transform=None):
        write_tif(root / "optical" / f"{sid}.tif", _optical(rng) if optical is None else optical)
        if sar is not False:
            write_tif(root / "sar" / f"{sid}.tif", _sar(rng) if sar is None else sar, crs=sar_crs,
                      transform=sar_transform)

    pair("good")
    write_tif(root / "cloud_mask" / "good.tif", np.pad(np.ones((1, 4, 16), np.uint8), ((0, 0), (0, 12), (0, 0))))
    pair("trunc_optical")
    _truncate(root / "optical" / "trunc_optical.tif")
    pair("trunc_sar")
    _truncate(root / "sar" / "trunc_sar.tif")
    pair("not_a_tiff")
    (root / "optical" / "not_a_tiff.tif").write_text("this is a text file with a .tif name\n")
    pair("five_bands", optical=_optical(rng)[:5])
    pair("grid_crs", sar_crs="EPSG:32634")
    pair("grid_transform", sar_transform=from_origin(ORIGIN[0] + 10.0, ORIGIN[1], 10.0, 10.0))
    pair("grid_size", sar=_sar(rng, 20, 20))
    pair("nan_sar", sar=np.full((2, PATCH, PATCH), np.nan, np.float32))
    pair("zero_optical", optical=np.zeros((13, PATCH, PATCH), np.uint16))
    pair("too_small", optical=_optical(rng, 8, 8), sar=_sar(rng, 8, 8))
    pair("no_sar", sar=False)
    pair("uint8_optical", optical=(_optical(rng) // 16).astype(np.uint8))
    return root


@pytest.fixture(scope="module", params=["auto", "rasterio"])
def cli_run(request, bad_folder, onnx_path, tmp_path_factory):
    """One run per read path: the fast path (default) and the rasterio path forced (ESCCS_READER=rasterio)."""
    out = tmp_path_factory.mktemp("bad-out") / "res.csv"
    result = CliRunner().invoke(cli, ["infer", str(bad_folder), "--model", str(onnx_path), "--out", str(out),
                                      "--quiet", "--threads", "1"], env={"ESCCS_READER": request.param})
    return result, out


def test_run_goes_on_and_exits_3(cli_run):
    result, out = cli_run
    assert result.exit_code == 3, result.output
    assert f"{len(BAD)} tiles failed: see {out.with_name('res.errors.csv')}" in result.output
    assert f"classified 1 of {len(BAD) + 1} tiles, {len(BAD)} failed" in result.output
    assert "Traceback" not in result.output


def test_good_tile_is_classified(cli_run, bad_folder, ort_model):
    _, out = cli_run
    rows = read_csv(out)
    assert [r["id"] for r in rows] == ["good"]
    job = next(j for j in open_tiles(bad_folder).jobs if j.id == "good")
    optical, sar = read_job(job, ort_model.info)
    probs = ort_model.predict(optical[None], sar[None])["probs"][0]
    assert int(rows[0]["class_index"]) == int(probs.argmax())
    assert float(rows[0]["confidence"]) == pytest.approx(float(probs.max()), abs=2e-6)
    assert rows[0]["coverage_source"] == "mask" and float(rows[0]["cloud_coverage"]) == pytest.approx(0.25)


def test_every_bad_tile_is_reported_once_naming_its_file(cli_run, bad_folder):
    _, out = cli_run
    errors = read_csv(out.with_name("res.errors.csv"))
    assert sorted(r["id"] for r in errors) == sorted(BAD)
    for r in errors:
        folder, words = BAD[r["id"]]
        assert r["path"] == str(bad_folder / folder / f"{r['id']}.tif"), r
        assert words in r["reason"], r
        assert "\n" not in r["reason"] and len(r["reason"]) < 300


def test_summary_counts_the_failures(cli_run, bad_folder):
    _, out = cli_run
    s = read_json(out.with_name("res.summary.json"))
    assert (s["jobs"], s["classified"], s["failed"], s["processed_this_run"]) == (len(BAD) + 1, 1, len(BAD),
                                                                                   len(BAD) + 1)
    assert s["layout"] == "paired" and sum(s["failure_reasons"].values()) == len(BAD)
    assert len(s["failed_tiles"]) == len(BAD)
    for line in s["failed_tiles"]:  # "<file>: <reason>", the file inside the bad folder
        assert line.startswith(str(bad_folder)) and ".tif: " in line and "\n" not in line
    manifest = [json.loads(x) for x in out.with_name("res.manifest.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in manifest) == sorted([*BAD, "good"])


def test_resume_after_a_run_with_failures_does_not_redo_or_duplicate(cli_run, bad_folder, onnx_path, tmp_path):
    _, first = cli_run
    out = tmp_path / "res.csv"  # a copy of the first run's manifest: the module's run stays untouched
    shutil.copy(first.with_name("res.manifest.jsonl"), tmp_path / "res.manifest.jsonl")
    result = CliRunner().invoke(cli, ["infer", str(bad_folder), "--model", str(onnx_path), "--out", str(out),
                                      "--quiet", "--threads", "1", "--resume"])
    assert result.exit_code == 3, result.output
    s = read_json(out.with_name("res.summary.json"))
    assert (s["processed_this_run"], s["resumed_from"], s["failed"], s["classified"]) == (0, len(BAD) + 1,
                                                                                          len(BAD), 1)
    assert sorted(r["id"] for r in read_csv(out.with_name("res.errors.csv"))) == sorted(BAD)


def test_empty_folder_is_a_one_line_error(tmp_path, onnx_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["infer", str(empty), "--model", str(onnx_path), "--out",
                                      str(tmp_path / "x.csv"), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [f"Error: {empty}: empty folder"], result.output
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.manifest.jsonl").exists()


def test_folder_of_no_known_layout_is_a_one_line_error(tmp_path, onnx_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    result = CliRunner().invoke(cli, ["infer", str(tmp_path / "stuff"), "--model", str(onnx_path), "--out",
                                      str(tmp_path / "x.csv"), "--quiet"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "no optical/ + sar/ folders" in result.output
