import json

import pytest

from esccs.errors import ConfigError, DataError
from esccs.export import export_model
from esccs.export.onnx import read_metadata
from esccs.export.parity import ort_session


@pytest.fixture(scope="module")
def int8(checkpoint, data_dir, tmp_path_factory):
    return export_model(checkpoint, "int8", tmp_path_factory.mktemp("int8"), data=data_dir, calib_samples=32,
                        eval_samples=40, speed_reps=3, print_fn=None)


def test_int8_runs_and_agrees_with_fp32(int8, onnx_dynamo, checkpoint, data_dir):
    from esccs.export.parity import run_ort
    from esccs.export.tiles import open_tiles, read_tiles
    from esccs.models import load_checkpoint

    _, cfg, _ = load_checkpoint(checkpoint)
    tiles = read_tiles(open_tiles(data_dir, cfg), cfg, 1000)  # every target tile
    fp32, q = run_ort(ort_session(onnx_dynamo.path), tiles.raw), run_ort(ort_session(int8.path), tiles.raw)
    assert (fp32["logits"].argmax(1) == q["logits"].argmax(1)).mean() >= 0.97
    assert int8.path.name == "m.int8.onnx"
    m = read_metadata(int8.path)
    assert m["precision"] == "int8" and m["quantization"]["format"] == "QDQ"
    ops = {n.op_type for n in __import__("onnx").load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.int8["accuracy"]["top1_agreement_vs_fp32"] >= 0.97
    assert int8.parity["top1_agreement"] >= 0.97 and int8.parity["passed"]
    assert int8.info["fp32_parity"]["passed"]
    out = ort_session(int8.path).run(None, {k: v[:3] for k, v in _raw(int8).items()})
    assert out[0].shape == (3, 10)


def _raw(result):
    import numpy as np

    return {"optical": np.full((3, 10, 32, 32), 1200.0, np.float32), "sar": np.full((3, 2, 32, 32), -15.0, np.float32)}


def test_int8_report_figures(int8):
    a, s = int8.int8["accuracy"], int8.int8["speed"]
    assert a["labelled"] > 0 and a["oa_fp32"] is not None and a["oa_delta_points"] is not None
    assert s["fp32_ms"] > 0 and s["int8_ms"] > 0 and s["speedup_int8_vs_fp32"] > 0
    saved = json.loads(int8.parity_path.read_text())
    assert saved["int8"]["speed"]["reps"] == 3 and saved["format"] == "onnx-int8"
    assert "int8 vs fp32" in int8.report()


def test_int8_needs_data(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="needs data=DIR"):
        export_model(checkpoint, "onnx-int8", tmp_path, print_fn=None)


def test_empty_calibration_folder(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: .*no usable tiles") as err:
        export_model(checkpoint, "int8", tmp_path / "out", data=tmp_path / "empty", print_fn=None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_calibration_folder(checkpoint, tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        export_model(checkpoint, "int8", tmp_path, data=tmp_path / "nope", print_fn=None)
