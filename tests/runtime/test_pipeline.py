"""run_inference over a synthetic SEN12MS-CR folder: one row per tile, the model's own predictions, valid footprints."""

import json
import math

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.warp import transform as warp_transform
from rt_helpers import ORIGIN, optical_dn, read_csv, read_job, read_jobs, read_json, sar_db, write_tif

from esccs.cli import cli
from esccs.errors import ConfigError
from esccs.runtime import InferOptions, Job, open_tiles, run_inference
from esccs.spec import MASK_THICK, MASK_THIN


@pytest.fixture(scope="module")
def source(synth_root):
    return open_tiles(synth_root)


@pytest.fixture(scope="module")
def expected(source, ort_model):
    """``{id: (class_index, confidence, w_optical)}`` from Model.predict on tiles read with rasterio directly."""
    out = ort_model.predict(*read_jobs(source.jobs, ort_model.info))
    probs = out["probs"]
    return {j.id: (int(probs[k].argmax()), float(probs[k].max()), float(out["modality_weights"][k, 0]))
            for k, j in enumerate(source.jobs)}


@pytest.fixture(scope="module")
def run(source, ort_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe")
    outputs = [out / "pred.csv", out / "pred.geojson"]
    summary = run_inference(source, ort_model, outputs, InferOptions(batch_size=8, progress=False))
    return out, summary


def _predictions(rows):
    return {r["id"]: (int(r["class_index"]), float(r["confidence"]), float(r["w_optical"])) for r in rows}


def _assert_same_predictions(got, want):
    assert sorted(got) == sorted(want)
    for sid, (c, p, w) in want.items():
        assert got[sid][0] == c, sid
        assert got[sid][1] == pytest.approx(p, abs=2e-6), sid
        assert got[sid][2] == pytest.approx(w, abs=2e-6), sid


def test_source_is_the_target_part(source, synth_root):
    assert source.kind == "tiles" and source.layout == "sen12ms-cr" and source.root == synth_root / "target"
    assert len(source.jobs) == 20 and not source.skipped
    assert all("s2_cloudy" in j.optical and j.sar and j.mask for j in source.jobs)


def test_csv_has_one_row_per_tile_with_the_models_predictions(run, source, expected, ort_model):
    out, _ = run
    rows = read_csv(out / "pred.csv")
    assert len(rows) == len(source.jobs)
    assert len({r["id"] for r in rows}) == len(rows)
    _assert_same_predictions(_predictions(rows), expected)
    classes = ort_model.info.classes
    for r in rows:
        assert r["class_name"] == classes[int(r["class_index"])]
        first = r["top3"].split("|")[0].split(":")
        assert first[0] == r["class_name"] and float(first[1]) == pytest.approx(float(r["confidence"]), abs=1e-4)
        assert float(r["w_optical"]) + float(r["w_sar"]) == pytest.approx(1.0, abs=1e-5)


def test_cloud_coverage_comes_from_the_mask(run, source):
    rows = {r["id"]: r for r in read_csv(run[0] / "pred.csv")}
    for job in source.jobs:
        with rasterio.open(job.mask) as src:
            want = float(np.isin(src.read(1), (MASK_THICK, MASK_THIN)).mean())
        assert rows[job.id]["coverage_source"] == "mask"
        assert float(rows[job.id]["cloud_coverage"]) == pytest.approx(want, abs=1e-9)
    assert len({r["cloud_coverage"] for r in rows.values()}) > 1  # the set has several cloud levels


def test_summary_counts(run, source, ort_model):
    out, summary = run
    saved = read_json(out / "pred.summary.json")
    n = len(source.jobs)
    for s in (summary, saved):
        assert (s["jobs"], s["classified"], s["failed"], s["processed_this_run"], s["resumed_from"]) == (n, n, 0, n, 0)
        assert s["backend"] == "onnxruntime" and s["batch_size"] == 8 and s["failure_reasons"] == {}
        assert s["layout"] == "sen12ms-cr" and s["kind"] == "tiles"
    assert sorted(saved["outputs"]) == sorted(str(out / f) for f in ("pred.csv", "pred.geojson"))
    assert read_csv(out / "pred.errors.csv") == []
    assert len((out / "pred.manifest.jsonl").read_text().splitlines()) == n


def test_geojson_footprints(run, source):
    out, _ = run
    fc = json.loads((out / "pred.geojson").read_text())
    assert fc["type"] == "FeatureCollection"
    feats = {f["id"]: f for f in fc["features"]}
    assert len(fc["features"]) == len(feats) == len(source.jobs)
    csv_rows = {r["id"]: r for r in read_csv(out / "pred.csv")}
    for job in source.jobs:
        f = feats[job.id]
        assert f["type"] == "Feature" and f["properties"]["class_index"] == int(csv_rows[job.id]["class_index"])
        geom = f["geometry"]
        assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 1
        ring = geom["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]
        for lon, lat in ring:
            assert -180 <= lon <= 180 and -90 <= lat <= 90
        corners = np.array(ring[:4])
        assert len({tuple(c) for c in ring[:4]}) == 4
        with rasterio.open(job.optical) as src:
            b, crs = src.bounds, src.crs
        cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
        (lon,), (lat,) = warp_transform(crs, "EPSG:4326", [cx], [cy])
        assert corners[:, 0].mean() == pytest.approx(lon, abs=1e-6)
        assert corners[:, 1].mean() == pytest.approx(lat, abs=1e-6)
        # the native-CRS bounds in the CSV are the file's own
        r = csv_rows[job.id]
        assert [float(r[k]) for k in ("minx", "miny", "maxx", "maxy")] == pytest.approx(
            [b.left, b.bottom, b.right, b.top], abs=1e-6)
        assert rasterio.crs.CRS.from_string(r["crs"]) == crs


def test_tiles_span_several_utm_zones(run):
    # footprints are reprojected per CRS: the synthetic set has scenes in different zones
    crs = {r["crs"] for r in read_csv(run[0] / "pred.csv")}
    assert len(crs) >= 2
    assert all(math.isfinite(float(r["minx"])) for r in read_csv(run[0] / "pred.csv"))


def test_parquet_matches_csv(source, ort_model, expected, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed: Parquet output is optional")
    run_inference(source, ort_model, [tmp_path / "p.parquet"], InferOptions(batch_size=8, progress=False))
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert len(table) == len(source.jobs)
    _assert_same_predictions(_predictions(table), expected)
    assert all(r["footprint_wgs84"].startswith("POLYGON((") for r in table)


def test_existing_outputs_need_resume_or_overwrite(source, ort_model, tmp_path):
    out = [tmp_path / "r.csv"]
    opts = dict(batch_size=8, progress=False)
    run_inference(source, ort_model, out, InferOptions(**opts))
    with pytest.raises(ConfigError, match="pass --resume to continue it or --overwrite"):
        run_inference(source, ort_model, out, InferOptions(**opts))
    n = len(source.jobs)
    again = run_inference(source, ort_model, out, InferOptions(resume=True, **opts))
    assert (again["resumed_from"], again["processed_this_run"], again["classified"]) == (n, 0, n)
    fresh = run_inference(source, ort_model, out, InferOptions(overwrite=True, **opts))
    assert (fresh["resumed_from"], fresh["processed_this_run"], fresh["classified"]) == (0, n, n)
    assert len(read_csv(out[0])) == n
    assert len((tmp_path / "r.manifest.jsonl").read_text().splitlines()) == n


def test_unknown_output_type_is_refused_before_any_work(source, ort_model, tmp_path):
    with pytest.raises(ConfigError, match="unknown output type '.xlsx'"):
        run_inference(source, ort_model, [tmp_path / "r.xlsx"], InferOptions(progress=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batch_size_does_not_change_predictions(batch_size, source, ort_model, expected, tmp_path):
    assert 64 > len(source.jobs) and len(source.jobs) % 7 != 0
    s = run_inference(source, ort_model, [tmp_path / "b.csv"], InferOptions(batch_size=batch_size, progress=False))
    assert (s["batch_size"], s["classified"], s["failed"]) == (batch_size, len(source.jobs), 0)
    _assert_same_predictions(_predictions(read_csv(tmp_path / "b.csv")), expected)


def test_limit_takes_the_first_jobs(source, ort_model, tmp_path):
    s = run_inference(source, ort_model, [tmp_path / "l.csv"], InferOptions(limit=5, progress=False))
    assert (s["jobs"], s["classified"]) == (5, 5)
    assert [r["id"] for r in read_csv(tmp_path / "l.csv")] == [j.id for j in source.jobs[:5]]


def test_several_readers_and_a_shallow_queue_give_the_same_rows(source, ort_model, expected, tmp_path):
    s = run_inference(source, ort_model, [tmp_path / "r.csv"],
                      InferOptions(batch_size=3, readers=3, queue_depth=1, progress=False))
    assert (s["readers"], s["queue_depth"], s["classified"]) == (3, 1, len(source.jobs))
    rows = read_csv(tmp_path / "r.csv")
    assert [r["id"] for r in rows] == [j.id for j in source.jobs]  # reading order kept
    _assert_same_predictions(_predictions(rows), expected)


def test_larger_tile_is_centre_cropped(ort_model, tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "big"
    write_tif(root / "optical" / "t1.tif", optical_dn(rng, 20, 22))
    write_tif(root / "sar" / "t1.tif", sar_db(rng, 20, 22))
    src = open_tiles(root)
    run_inference(src, ort_model, [tmp_path / "c.csv"], InferOptions(progress=False))
    (row,) = read_csv(tmp_path / "c.csv")
    assert row["window"] == "3 2 16 16"  # (22 - 16) // 2, (20 - 16) // 2
    job = src.jobs[0]
    crop = read_job(Job(job.id, job.optical, job.sar, window=(3, 2, 16, 16)), ort_model.info)
    probs = ort_model.predict(crop[0][None], crop[1][None])["probs"][0]
    assert int(row["class_index"]) == int(probs.argmax())
    assert float(row["confidence"]) == pytest.approx(float(probs.max()), abs=2e-6)
    x0, y1 = ORIGIN[0] + 3 * 10.0, ORIGIN[1] - 2 * 10.0
    assert [float(row[k]) for k in ("minx", "miny", "maxx", "maxy")] == pytest.approx([x0, y1 - 160, x0 + 160, y1])
    assert row["coverage_source"] == "estimated" and 0.0 <= float(row["cloud_coverage"]) <= 1.0


def test_cli_happy_path_exits_0(synth_root, onnx_path, tmp_path):
    out = [tmp_path / "p.csv", tmp_path / "p.geojson"]
    result = CliRunner().invoke(cli, ["infer", str(synth_root), "--model", str(onnx_path), "--out", str(out[0]),
                                      "--out", str(out[1]), "--quiet", "--threads", "1", "-b", "5"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out[0]}" in result.output and f"wrote {out[1]}" in result.output
    assert "classified 20 of 20 tiles, 0 failed" in result.output
    assert len(read_csv(out[0])) == 20 and len(json.loads(out[1].read_text())["features"]) == 20


def test_cli_refuses_existing_outputs_in_one_line(synth_root, onnx_path, tmp_path):
    args = ["infer", str(synth_root), "--model", str(onnx_path), "--out", str(tmp_path / "p.csv"), "--quiet",
            "--limit", "2"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1
    assert again.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'p.manifest.jsonl'}: results of")
