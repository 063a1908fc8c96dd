"""INT8 export: a quantised model is judged by its OA loss and flips against PyTorch fp32 on >= 101 test tiles."""

import json

import numpy as np
import onnx
import pytest
from ex_helpers import ort_run, ort_session

from esccs.errors import ConfigError, DataError
from esccs.export import ParityError, export_model
from esccs.export.onnx import read_metadata
from esccs.export.parity import GOALS, compare, max_flips, parity_line, run_torch
from esccs.export.tiles import open_tiles, read_tiles
from esccs.models import load_checkpoint


@pytest.fixture(scope="module")
def int8(checkpoint, data_dir, tmp_path_factory):
    return export_model(checkpoint, "int8", tmp_path_factory.mktemp("int8"), data=data_dir, speed_reps=3,
                        print_fn=None)


@pytest.fixture(scope="module")
def test_split(checkpoint, data_dir):
    model, cfg, _ = load_checkpoint(checkpoint)
    return model, read_tiles(open_tiles(data_dir, cfg), cfg, 10_000, split="test")


def test_int8_passes_on_enough_test_tiles_with_figures_checked_independently(int8, test_split):
    model, tiles = test_split
    p = int8.parity
    assert p["verdict"] == "pass" and p["passed"] and p["precision"] == "int8"
    assert p["tiles"]["count"] == p["tiles_compared"] == len(tiles) >= GOALS["int8"]["min_tiles"] == 101
    assert "split test" in p["tiles"]["source"]
    # recompute the verdict's figures with plain onnxruntime and PyTorch on the same test tiles
    ref, got = run_torch(model, tiles), ort_run(int8.path, tiles.raw)
    flips = int((ref["logits"].argmax(1) != got["logits"].argmax(1)).sum())
    known = tiles.labels >= 0
    oa_ref = (ref["logits"].argmax(1)[known] == tiles.labels[known]).mean()
    oa = (got["logits"].argmax(1)[known] == tiles.labels[known]).mean()
    assert p["flips"] == flips <= p["max_flips"] == max_flips(len(tiles), 0.01)
    assert p["oa_reference"] == pytest.approx(oa_ref) and p["oa"] == pytest.approx(oa)
    assert p["oa_loss_points"] == pytest.approx(100 * (oa_ref - oa), abs=1e-3)
    assert p["oa_loss_points"] <= 1.0
    assert 0.2 < oa_ref < 1.0  # a trained model: the OA figure means something
    assert int8.info["fp32_parity"]["passed"] and int8.info["fp32_parity"]["max_abs_logit_diff"] <= 1e-4


def test_int8_artifact(int8):
    assert int8.path.name == "m.int8.onnx"
    m = read_metadata(int8.path)
    assert m["precision"] == "int8" and m["quantization"]["format"] == "QDQ"
    assert m["quantization"]["calibration_tiles"] > 101 and "split train" in m["quantization"]["calibration_source"]
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    raw = {"optical": np.full((3, 10, 32, 32), 1200.0, np.float32), "sar": np.full((3, 2, 32, 32), -15.0, np.float32)}
    assert ort_session(int8.path).run(None, raw)[0].shape == (3, 10)


def test_stems_and_head_stay_fp32(int8):
    """The first conv of each encoder and the classifier head keep fp32 weights; every other conv is quantised."""
    from esccs.export.quantize import fp32_nodes

    g = onnx.load(str(int8.path)).graph
    kept = set(int8.info["quantization"]["kept_fp32_nodes"])
    by_name = {n.name: n for n in g.node}
    assert sorted(by_name[k].op_type for k in kept) == ["Add", "Conv", "Conv", "Gemm", "Gemm"]
    assert by_name[next(k for k in kept if by_name[k].op_type == "Add")].output[0] == "logits"
    assert sorted(kept) == fp32_nodes(onnx.load(str(int8.path)))  # found again on the quantised graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    inits = {i.name for i in g.initializer}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm"):
            weight_quantised = n.input[1] in dq_out
            assert weight_quantised == (n.name not in kept), n.name
            assert n.input[1] in inits or weight_quantised


def test_int8_report_is_one_verdict_line_and_speed(int8):
    s = int8.speed
    assert s["fp32_ms"] > 0 and s["int8_ms"] > 0 and s["speedup_int8_vs_fp32"] > 0 and s["reps"] == 3
    saved = json.loads(int8.parity_path.read_text())
    assert saved["format"] == "onnx-int8" and saved["parity"]["verdict"] == "pass" and saved["speed"]["reps"] == 3
    text = int8.report()
    assert "!!" not in text and "FAILED" not in text
    verdicts = [line for line in text.splitlines() if "PASS" in line or "FAIL" in line]
    assert len(verdicts) == 1 and verdicts[0].startswith("  int8 check PASS (vs PyTorch fp32 on ")
    assert "int8 speed at batch 32" in text


def test_broken_calibration_fails_and_strict_writes_nothing(checkpoint, data_dir, tmp_path):
    """One calibration tile gives activation ranges far too narrow: many decisions flip, the check must fail."""
    lines = []
    r = export_model(checkpoint, "int8", tmp_path / "a", data=data_dir, calib_samples=1, speed_reps=1,
                     exporter="legacy", print_fn=lines.append)
    p = r.parity
    assert p["verdict"] == "fail" and not p["passed"]
    assert p["flips"] > p["max_flips"] and p["flips"] / p["tiles_compared"] > 0.01
    assert any("tiles flipped" in f for f in p["failures"])
    assert "!! INT8 CHECK FAILED" in lines[0] and "!! int8 check FAIL" in lines[0]
    with pytest.raises(ParityError, match=r"strict: int8 check FAIL .* tiles flipped"):
        export_model(checkpoint, "int8", tmp_path / "b" / "m.int8.onnx", data=data_dir, calib_samples=1,
                     exporter="legacy", strict=True, print_fn=None)
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []


def test_too_few_evaluation_tiles_is_inconclusive(checkpoint, data_dir, tmp_path):
    lines = []
    r = export_model(checkpoint, "int8", tmp_path, data=data_dir, calib_samples=64, eval_samples=50, speed_reps=1,
                     exporter="legacy", print_fn=lines.append)
    assert r.parity["verdict"] == "inconclusive" and not r.parity["passed"] and r.parity["tiles_compared"] == 50
    assert r.parity["failures"][0].startswith("only 50 evaluation tiles: one flip weighs 2.0 %")
    assert "!! INT8 CHECK INCONCLUSIVE" in lines[0]


@pytest.mark.parametrize(("n", "allowed"), [(101, 3), (256, 5), (300, 6), (1000, 15)])
def test_max_flips_is_the_binomial_bound(n, allowed):
    from math import comb

    def tail(k):  # P(X >= k), X ~ Binomial(n, 1 %)
        return sum(comb(n, i) * 0.01 ** i * 0.99 ** (n - i) for i in range(k, n + 1))

    assert max_flips(n, 0.01) == allowed
    assert tail(allowed) >= 0.05 > tail(allowed + 1)


def _outputs(pred, n_classes=4):
    logits = np.eye(n_classes, dtype=np.float32)[pred] * 5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"logits": logits, "probs": probs, "modality_weights": np.full((len(pred), 2), 0.5, np.float32)}


def test_verdict_rules_on_known_outputs():
    rng = np.random.default_rng(0)
    ref_pred = rng.integers(0, 4, 256)
    labels = ref_pred.copy()
    labels[:100] = (labels[:100] + 1) % 4  # fp32 OA 60.9 %
    ref = _outputs(ref_pred)

    def judge(flip_rows, to_label=False):
        pred = ref_pred.copy()
        pred[flip_rows] = labels[flip_rows] if to_label else (pred[flip_rows] + 2) % 4
        return compare(ref, _outputs(pred), "int8", labels)

    harmful = judge(np.arange(150, 155))  # 5 flips, all away from the label: -1.95 OA points
    assert harmful["flips"] == 5 and harmful["max_flips"] == 5
    assert harmful["oa_loss_points"] == pytest.approx(100 * 5 / 256, abs=1e-3)
    assert harmful["verdict"] == "fail" and harmful["failures"] == ["OA loss 1.95 points > 1"]
    helpful = judge(np.arange(0, 5), to_label=True)  # 5 flips onto the label: OA rises
    assert helpful["verdict"] == "pass" and helpful["oa_loss_points"] < 0
    many = judge(np.arange(0, 6), to_label=True)  # 6 flips: more than a 1 % flipper shows, however OA moves
    assert many["verdict"] == "fail" and many["failures"] == ["6 of 256 tiles flipped (2.34%; at most 5 for a flip "
                                                              "rate <= 1%)"]
    two = judge(np.arange(150, 152))  # 2 harmful flips: -0.78 points, within both rules
    assert two["verdict"] == "pass" and two["failures"] == []
    assert "int8 check PASS" in parity_line({**two, "tiles": {"count": 256, "source": "x"}})


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
