"""Scene mode: sliding windows over one optical + SAR pair, class and confidence maps on the scene's own grid."""

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from rt_helpers import ORIGIN, PATCH, read_csv, read_jobs, read_json, write_tif

from esccs.cli import cli
from esccs.errors import DataError, GridMismatchError
from esccs.runtime import InferOptions, open_scene, run_inference
from esccs.runtime.outputs import nearest_window
from esccs.runtime.sources import window_starts

WIDTH, HEIGHT = 70, 53


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 70x53 px UTM scene pair, 10 m pixels, tiled in 16 px blocks; brightness and backscatter vary across it."""
    root = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    ramp = (0.3 + 2.5 * (x / WIDTH) * (1 + np.sin(y / 6.0)) / 2)[None]
    optical = np.clip(rng.normal(1500, 300, (13, HEIGHT, WIDTH)) * ramp, 0, 12000).astype(np.uint16)
    sar = np.stack([-20 + 14 * y / HEIGHT, -25 + 10 * x / WIDTH]) + rng.normal(0, 1, (2, HEIGHT, WIDTH))
    o = write_tif(root / "s2.tif", optical, block=16)
    s = write_tif(root / "s1.tif", sar.astype(np.float32), block=16)
    return o, s


@pytest.fixture(scope="module", params=[None, 8], ids=["default-stride", "stride-8"])
def scene_run(request, scene, ort_model, tmp_path_factory):
    source = open_scene(*scene, patch=PATCH, stride=request.param)
    out = tmp_path_factory.mktemp("scene-out") / "scene.csv"
    summary = run_inference(source, ort_model, [out], InferOptions(batch_size=16, progress=False))
    return source, out, summary, request.param or PATCH


def test_window_grid(scene_run):
    source, out, summary, stride = scene_run
    rows, cols = window_starts(HEIGHT, PATCH, stride), window_starts(WIDTH, PATCH, stride)
    assert (source.grid["rows"], source.grid["cols"], source.grid["stride"]) == (len(rows), len(cols), stride)
    assert len(source.jobs) == len(rows) * len(cols) == summary["jobs"] == summary["classified"]
    assert source.grid["block_aligned"] is True and source.grid["block"] == (16, 16)
    csv_rows = read_csv(out)
    assert len(csv_rows) == len(source.jobs) and len({r["id"] for r in csv_rows}) == len(csv_rows)
    windows = {r["id"]: tuple(int(v) for v in r["window"].split()) for r in csv_rows}
    for job in source.jobs:
        i, j = job.cell
        assert windows[job.id] == job.window == (cols[j], rows[i], PATCH, PATCH)


def test_maps_share_the_scene_grid(scene_run, scene):
    _, out, summary, _ = scene_run
    maps = [out.with_name("scene.class.tif"), out.with_name("scene.confidence.tif")]
    assert [str(p) for p in maps] == summary["outputs"][1:]
    with rasterio.open(scene[0]) as ref:
        grid = (ref.crs, ref.transform, ref.width, ref.height)
    with rasterio.open(maps[0]) as cls_map:
        assert (cls_map.crs, cls_map.transform, cls_map.width, cls_map.height) == grid
        assert cls_map.count == 1 and cls_map.dtypes[0] == "uint8" and cls_map.nodata == 255
        colours = cls_map.colormap(1)
        assert colours[255][3] == 0 and all(colours[k][3] == 255 for k in range(10))
        assert 255 not in np.unique(cls_map.read(1))  # every pixel belongs to some window
    with rasterio.open(maps[1]) as conf:
        assert (conf.crs, conf.transform, conf.width, conf.height) == grid
        assert conf.dtypes[0] == "float32" and np.isnan(conf.nodata)
        values = conf.read(1)
        assert np.isfinite(values).all() and 0 < values.min() <= values.max() <= 1


def test_window_centres_carry_their_windows_result(scene_run):
    source, out, _, _ = scene_run
    rows = {r["id"]: r for r in read_csv(out)}
    with rasterio.open(out.with_name("scene.class.tif")) as f:
        cls_map = f.read(1)
    with rasterio.open(out.with_name("scene.confidence.tif")) as f:
        conf_map = f.read(1)
    for job in source.jobs:
        x, y = job.window[0] + PATCH // 2, job.window[1] + PATCH // 2
        assert cls_map[y, x] == int(rows[job.id]["class_index"]), job.id
        assert conf_map[y, x] == pytest.approx(float(rows[job.id]["confidence"]), abs=1e-6), job.id


def test_scene_predictions_are_the_models_on_each_window(scene_run, ort_model):
    source, out, _, _ = scene_run
    probs = ort_model.predict(*read_jobs(source.jobs, ort_model.info))["probs"]
    rows = {r["id"]: r for r in read_csv(out)}
    for k, job in enumerate(source.jobs):
        assert int(rows[job.id]["class_index"]) == int(probs[k].argmax())
        assert float(rows[job.id]["confidence"]) == pytest.approx(float(probs[k].max()), abs=2e-6)
    assert len({r["class_index"] for r in rows.values()}) >= 2  # the map is not one colour


def test_summary_grid(scene_run):
    source, out, summary, stride = scene_run
    saved = read_json(out.with_name("scene.summary.json"))
    assert saved["kind"] == "scene" and saved["grid"]["stride"] == stride
    assert (saved["grid"]["width"], saved["grid"]["height"]) == (WIDTH, HEIGHT)


def test_sar_on_another_grid_is_refused(scene, tmp_path):
    with rasterio.open(scene[1]) as src:
        sar = src.read()
    shifted = write_tif(tmp_path / "s1_shifted.tif", sar, transform=from_origin(ORIGIN[0] + 5, ORIGIN[1], 10, 10))
    with pytest.raises(GridMismatchError, match="transform differs") as err:
        open_scene(scene[0], shifted, patch=PATCH)
    assert "gdalwarp" in str(err.value) and str(shifted) in str(err.value) and "\n" not in str(err.value)
    other_crs = write_tif(tmp_path / "s1_crs.tif", sar, crs="EPSG:32632")
    with pytest.raises(GridMismatchError, match="CRS EPSG:32632 differs"):
        open_scene(scene[0], other_crs, patch=PATCH)
    cropped = write_tif(tmp_path / "s1_small.tif", sar[:, :40, :60])
    with pytest.raises(GridMismatchError, match="size 60x40 differs from 70x53"):
        open_scene(scene[0], cropped, patch=PATCH)


def test_scene_smaller_than_one_window_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    o = write_tif(tmp_path / "o.tif", rng.integers(0, 3000, (13, 10, 40)).astype(np.uint16))
    s = write_tif(tmp_path / "s.tif", rng.normal(-12, 2, (2, 10, 40)).astype(np.float32))
    with pytest.raises(DataError, match=f"smaller than the model input {PATCH}x{PATCH}"):
        open_scene(o, s, patch=PATCH)


@pytest.mark.parametrize(("size", "patch", "stride", "want"), [
    (70, 16, 16, [0, 16, 32, 48, 54]),
    (64, 16, 16, [0, 16, 32, 48]),
    (53, 16, 8, [0, 8, 16, 24, 32, 37]),
    (16, 16, 16, [0]),
    (17, 16, 16, [0, 1]),
    (15, 16, 16, []),
    (40, 16, 32, [0, 24]),
])
def test_window_starts(size, patch, stride, want):
    assert window_starts(size, patch, stride) == want


@pytest.mark.parametrize("size", range(16, 80, 7))
@pytest.mark.parametrize("stride", [1, 5, 8, 16, 20])
def test_window_starts_cover_the_axis(size, stride):
    starts = window_starts(size, 16, stride)
    assert starts[0] == 0 and starts[-1] == size - 16 and starts == sorted(set(starts))
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize(("size", "stride"), [(70, 16), (53, 8), (53, 16), (17, 16), (40, 5), (64, 16)])
def test_nearest_window_matches_brute_force(size, stride):
    patch = 16
    starts = window_starts(size, patch, stride)
    got = nearest_window(size, starts, patch)
    centres = np.asarray(starts) + patch / 2
    pixel = np.arange(size) + 0.5
    dist = np.abs(pixel[:, None] - centres[None, :])
    want = dist.argmin(axis=1)  # argmin takes the first of equal distances: ties go to the lower window
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and got.shape == (size,)


def test_nearest_window_with_stride_equal_to_patch_paints_each_footprint():
    starts = [0, 16, 32, 48]
    got = nearest_window(64, starts, 16)
    np.testing.assert_array_equal(got, np.repeat(np.arange(4), 16))


def test_cli_scene_mode(scene, onnx_path, tmp_path):
    out = tmp_path / "sc.csv"
    result = CliRunner().invoke(cli, ["infer", str(scene[0]), "--sar", str(scene[1]), "--model", str(onnx_path),
                                      "--out", str(out), "--stride", "12", "--quiet", "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows, cols = window_starts(HEIGHT, PATCH, 12), window_starts(WIDTH, PATCH, 12)
    assert f"scene {WIDTH}x{HEIGHT} px -> {len(rows)}x{len(cols)} windows of {PATCH} px, stride 12" in result.output
    assert "not aligned to the file blocks" in result.output  # 12 px windows over 16 px blocks
    assert len(read_csv(out)) == len(rows) * len(cols)
    assert out.with_name("sc.class.tif").is_file() and out.with_name("sc.confidence.tif").is_file()


def test_cli_scene_options_are_checked(scene, onnx_path, tmp_path):
    no_sar = CliRunner().invoke(cli, ["infer", str(scene[0]), "--model", str(onnx_path), "--quiet"])
    assert no_sar.exit_code == 2 and "scene mode needs its SAR partner (--sar SAR.tif)" in no_sar.output
    folder = CliRunner().invoke(cli, ["infer", str(tmp_path), "--model", str(onnx_path), "--stride", "8"])
    assert folder.exit_code == 2 and "--stride are for scene mode" in folder.output
