import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from ex_helpers import ort_run, ort_session

from esccs.data.transforms import Normalizer
from esccs.export import ExportError, export_model
from esccs.export import onnx as onnx_mod
from esccs.export.onnx import read_metadata
from esccs.export.parity import compare, run_torch
from esccs.export.tiles import open_tiles, read_tiles
from esccs.models import ExportWrapper, checkpoint_sha256, load_checkpoint
from esccs.ops import _dispatch
from esccs.spec import INPUT_NAMES, METADATA_KEYS, OUTPUT_NAMES

STANDARD_DOMAINS = {"", "ai.onnx"}


@pytest.fixture(scope="module")
def model_and_tiles(checkpoint, data_dir):
    model, cfg, _ = load_checkpoint(checkpoint)
    return model, cfg, read_tiles(open_tiles(data_dir, cfg), cfg, 17)


@pytest.mark.parametrize("which", ["onnx_dynamo", "onnx_legacy"])
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_parity_per_batch(request, which, batch, model_and_tiles):
    result = request.getfixturevalue(which)
    model, cfg, tiles = model_and_tiles
    part = tiles.take(batch)
    ref = run_torch(model, part)
    got = ort_run(result.path, part.feeds(result.info["options"]["preprocess"]), batch=batch)
    assert got["logits"].shape == (batch, cfg.n_classes) and got["modality_weights"].shape == (batch, 2)
    report = compare(ref, got)
    assert report["passed"] and report["verdict"] == "pass"
    assert report["max_abs_logit_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    assert report["max_abs_modality_weight_diff"] <= 1e-4


def test_exporters_recorded(onnx_dynamo, onnx_legacy):
    assert (onnx_dynamo.info["exporter"], onnx_dynamo.info["opset"]) == ("dynamo", 18)
    assert (onnx_legacy.info["exporter"], onnx_legacy.info["opset"]) == ("legacy", 17)
    for r in (onnx_dynamo, onnx_legacy):
        assert r.parity["passed"] and r.parity_path.is_file()
        saved = json.loads(r.parity_path.read_text())
        assert saved["parity"]["top1_agreement"] == 1.0 and saved["parity"]["max_abs_logit_diff"] <= 1e-4
    assert "target" in onnx_dynamo.parity["tiles"]["source"]
    assert onnx_legacy.parity["tiles"]["source"].startswith("random")


def test_io_names_and_dynamic_axes(onnx_dynamo):
    m = onnx.load(str(onnx_dynamo.path))
    assert [v.name for v in m.graph.input] == list(INPUT_NAMES) == ["optical", "sar"]
    assert [v.name for v in m.graph.output] == list(OUTPUT_NAMES) == ["logits", "probs", "modality_weights"]
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(m.graph.input) + list(m.graph.output)}
    assert dims["optical"][:2] == ["batch", 10] and dims["sar"][:2] == ["batch", 2]
    assert dims["logits"] == ["batch", 10] and dims["modality_weights"] == ["batch", 2]
    assert not m.graph.initializer[0].external_data  # weights embedded
    if onnx_dynamo.info["dynamic_spatial"]:
        x = np.full((2, 10, 48, 48), 1500.0, np.float32)
        out = ort_session(onnx_dynamo.path).run(None, {"optical": x, "sar": np.full((2, 2, 48, 48), -12.0, np.float32)})
        assert out[0].shape == (2, 10)


def test_metadata_round_trip(onnx_dynamo, checkpoint):
    _, cfg, _ = load_checkpoint(checkpoint)
    meta = read_metadata(onnx_dynamo.path)
    assert meta["classes"] == list(cfg.classes) and meta["optical_bands"] == list(cfg.optical_bands)
    assert meta["sar_bands"] == ["VV", "VH"] and meta["normalization"] == cfg.normalization
    assert meta["patch_size"] == 32 and meta["preprocessing_baked"] is True
    assert meta["checkpoint_sha256"] == checkpoint_sha256(checkpoint)
    assert meta["model_config"]["name"] == "dual_resnet10" and meta["esccs_schema_version"] == 1
    assert meta["opset"] == 18 and meta["exporter"] == "dynamo"
    assert tuple(meta) == METADATA_KEYS  # exactly the contract of esccs.spec, in its order
    ort_map = ort_session(onnx_dynamo.path).get_modelmeta().custom_metadata_map
    assert json.loads(ort_map["classes"]) == list(cfg.classes)
    assert json.loads(ort_map["normalization"]) == cfg.normalization


def test_baked_preprocessing_matches_torch_on_normalised_input(onnx_dynamo, model_and_tiles):
    model, cfg, tiles = model_and_tiles
    raw = {k: v.copy() for k, v in tiles.raw.items()}
    raw["optical"][0, 0, :3, :3] = np.nan  # NaN cleaning, clipping of out-of-range DN and dB
    raw["optical"][1, 2, 4:6, :] = 25000.0
    raw["sar"][2, 1, :2, :2] = -40.0
    got = ort_session(onnx_dynamo.path).run(None, raw)
    norm = {k: Normalizer.from_dict(cfg.normalization[k])(v) for k, v in raw.items()}
    with torch.no_grad():
        ref = ExportWrapper(model)(torch.from_numpy(norm["optical"]), torch.from_numpy(norm["sar"]))
    for a, b in zip(got, ref):
        assert np.abs(a - b.numpy()).max() <= 1e-4
    assert not np.isnan(got[0]).any()


def test_only_standard_ops_with_fused_dispatcher_active(onnx_dynamo, onnx_legacy):
    assert _dispatch.fused_enabled() and _dispatch.triton_available()
    for r in (onnx_dynamo, onnx_legacy):
        m = onnx.load(str(r.path))
        assert {n.domain for n in m.graph.node} <= STANDARD_DOMAINS
        assert not m.functions
        assert {o.domain for o in m.opset_import} <= STANDARD_DOMAINS | {"ai.onnx.ml"}


def test_no_preprocess_export_takes_normalised_input(checkpoint, tmp_path, model_and_tiles):
    r = export_model(checkpoint, "onnx", tmp_path / "plain.onnx", exporter="legacy", preprocess=False,
                     print_fn=None)
    assert read_metadata(r.path)["preprocessing_baked"] is False and r.parity["passed"]
    assert r.parity["input"] == "raw DN / dB, normalised by esccs.runtime"  # fed like esccs infer feeds it


def test_parity_runs_the_artifact_through_esccs_runtime(onnx_legacy, model_and_tiles, tmp_path):
    from esccs.export.parity import check_artifact
    from esccs.runtime import ModelError

    model, _, tiles = model_and_tiles
    assert (onnx_legacy.parity["backend"], onnx_legacy.parity["provider"]) == ("onnxruntime", "CPUExecutionProvider")
    m = onnx.load(str(onnx_legacy.path))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    assert ort_run(bare, tiles.raw)["logits"].shape == (len(tiles), 10)  # plain onnxruntime runs it...
    with pytest.raises(ModelError, match="no esccs metadata"):  # ...esccs infer would refuse it, so the check does
        check_artifact(bare, model, tiles)


def test_dynamo_failure_falls_back_to_legacy_with_a_warning(checkpoint, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("dynamo says no")

    monkeypatch.setattr(onnx_mod, "_export_dynamo", boom)
    with pytest.warns(UserWarning, match="falling back to the legacy exporter"):
        r = export_model(checkpoint, "onnx", tmp_path, print_fn=None)
    assert r.info["exporter"] == "legacy" and r.parity["passed"]
    assert read_metadata(r.path)["exporter"] == "legacy"
    with pytest.raises(ExportError, match="dynamo ONNX export failed: RuntimeError: dynamo says no"):
        export_model(checkpoint, "onnx", tmp_path / "x.onnx", exporter="dynamo", print_fn=None)
    assert not (tmp_path / "x.onnx").exists()


def test_report_has_success_line_and_next_steps(onnx_dynamo, data_dir):
    text = onnx_dynamo.report()
    assert text.startswith(f"Export OK: onnx -> {onnx_dynamo.path} (") and " MB) in " in text
    assert f"esccs infer TILES --model {onnx_dynamo.path}" in text
    assert f"esccs benchmark --model {onnx_dynamo.path} --data {data_dir}" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "parity PASS" in text
