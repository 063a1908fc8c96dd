"""load_model: the artifact picks the backend, metadata drives preprocessing, and every backend agrees with PyTorch."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rt_helpers import PATCH, read_jobs

from esccs.data.transforms import Normalizer
from esccs.errors import ConfigError
from esccs.export import export_model
from esccs.models import ExportWrapper, load_checkpoint
from esccs.runtime import ModelError, load_model, open_tiles
from esccs.runtime.backends.torch_backend import checkpoint_metadata
from esccs.runtime.model import Model
from esccs.spec import ARTIFACT_SCHEMA_VERSION, INPUT_NAMES, METADATA_KEYS, OUTPUT_NAMES, REQUIRED_METADATA_KEYS


@pytest.fixture(scope="module")
def tiles(synth_root, ort_model):
    """Raw DN / dB of every synthetic target tile, read with rasterio directly."""
    jobs = open_tiles(synth_root).jobs
    assert len(jobs) >= 16
    return read_jobs(jobs, ort_model.info)


@pytest.fixture(scope="module")
def torch_reference(checkpoint, tiles):
    """The PyTorch model's outputs: the checkpoint's own normalisation, then ExportWrapper (eval mode)."""
    model, cfg, _ = load_checkpoint(checkpoint)
    wrapper = ExportWrapper(model).eval()
    norm = {k: Normalizer.from_dict(cfg.normalization[k]) for k in INPUT_NAMES}
    optical, sar = tiles
    with torch.inference_mode():
        out = wrapper(torch.from_numpy(norm["optical"](optical)), torch.from_numpy(norm["sar"](sar)))
    return {k: t.numpy() for k, t in zip(OUTPUT_NAMES, out)}


def test_onnx_picks_onnxruntime_and_reads_metadata(ort_model, checkpoint):
    _, cfg, _ = load_checkpoint(checkpoint)
    assert ort_model.backend.name == "onnxruntime" and ort_model.backend.device == "cpu"
    info = ort_model.info
    assert info.classes == tuple(cfg.classes) and info.optical_bands == tuple(cfg.optical_bands)
    assert info.sar_bands == ("VV", "VH") and info.patch_size == PATCH and info.preprocessing_baked is True
    assert ort_model.backend.settings["intra_op_threads"] == 1


def test_onnx_predict_matches_torch_on_real_tiles(ort_model, tiles, torch_reference):
    got = ort_model.predict(*tiles)
    ref = torch_reference
    assert got["logits"].shape == ref["logits"].shape == (len(tiles[0]), len(ort_model.info.classes))
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["probs"], ref["probs"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["modality_weights"], ref["modality_weights"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["logits"].argmax(1), ref["logits"].argmax(1))
    # the fixture is not degenerate: tiles differ in class and confidence, so a mix-up of rows would show
    assert len(set(ref["logits"].argmax(1).tolist())) >= 2
    assert len(np.unique(np.round(ref["probs"].max(1), 4))) >= 0.75 * len(tiles[0])


def test_dict_input_and_call_are_predict(ort_model, tiles):
    optical, sar = tiles[0][:3], tiles[1][:3]
    a = ort_model.predict(optical, sar)
    b = ort_model({"optical": optical, "sar": sar})
    for k in ("logits", "probs", "modality_weights"):
        np.testing.assert_array_equal(a[k], b[k])


def test_torch_backend_matches_onnx(checkpoint, ort_model, tiles):
    with load_model(checkpoint, device="cpu", threads=1) as tm:
        assert tm.backend.name == "torch" and tm.info.preprocessing_baked is False
        assert tm.info.classes == ort_model.info.classes
        got = tm.predict(*tiles)
    ref = ort_model.predict(*tiles)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["modality_weights"], ref["modality_weights"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["probs"].argmax(1), ref["probs"].argmax(1))


class _SmallBatches:
    """The real onnxruntime backend, limited to 3 rows per call (as a TensorRT profile would be)."""

    def __init__(self, inner):
        self.inner, self.name, self.device, self.settings = inner, inner.name, inner.device, {}
        self.max_batch, self.calls = 3, []

    def run(self, optical, sar):
        self.calls.append(len(optical))
        assert len(optical) <= self.max_batch
        return self.inner.run(optical, sar)

    def close(self):
        pass


def test_predict_splits_batches_larger_than_the_backend_takes(ort_model, tiles):
    small = _SmallBatches(ort_model.backend)
    optical, sar = tiles[0][:8], tiles[1][:8]
    got = Model(ort_model.info, small).predict(optical, sar)
    assert small.calls == [3, 3, 2]
    ref = ort_model.predict(optical, sar)
    for k in ("logits", "probs", "modality_weights"):
        assert got[k].shape[0] == 8
        np.testing.assert_allclose(got[k], ref[k], atol=1e-6, rtol=0)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_onnx_without_metadata_is_refused(onnx_path, tmp_path):
    m = onnx.load(str(onnx_path))
    assert len(m.metadata_props) > 0
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(ModelError) as err:
        load_model(bare)
    msg = _one_line(err)
    assert "no esccs metadata" in msg and str(bare) in msg and "classes" in msg


def test_onnx_missing_one_required_key_names_it(onnx_path, tmp_path):
    m = onnx.load(str(onnx_path))
    keep = [p for p in m.metadata_props if p.key != "optical_bands"]
    assert len(keep) == len(m.metadata_props) - 1
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    path = tmp_path / "partial.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelError, match=r"no esccs metadata \(optical_bands missing\)"):
        load_model(path)


def _with_metadata(src, dst, **entries):
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key in entries:
            p.value = entries[p.key]
    onnx.save(m, str(dst))
    return dst


def test_newer_or_malformed_metadata_schema_is_refused(onnx_path, tmp_path):
    newer = _with_metadata(onnx_path, tmp_path / "newer.onnx", esccs_schema_version=str(ARTIFACT_SCHEMA_VERSION + 1))
    with pytest.raises(ModelError) as err:
        load_model(newer)
    assert _one_line(err) == (f"{newer}: esccs metadata schema {ARTIFACT_SCHEMA_VERSION + 1}: this esccs reads "
                              f"schema 1 to {ARTIFACT_SCHEMA_VERSION}; upgrade esccs or export the model again")
    odd = _with_metadata(onnx_path, tmp_path / "odd.onnx", esccs_schema_version="one")
    with pytest.raises(ModelError, match="esccs metadata schema 'one'"):
        load_model(odd)
    with load_model(_with_metadata(onnx_path, tmp_path / "same.onnx"), threads=1) as m:  # the current schema loads
        assert m.metadata["esccs_schema_version"] == ARTIFACT_SCHEMA_VERSION


def test_every_producer_writes_what_the_runtime_requires(ort_model, checkpoint):
    _, cfg, _ = load_checkpoint(checkpoint)
    assert set(REQUIRED_METADATA_KEYS) <= set(METADATA_KEYS)
    assert set(ort_model.metadata) == set(METADATA_KEYS)  # the ONNX export writes the whole contract
    assert set(REQUIRED_METADATA_KEYS) <= set(checkpoint_metadata(cfg))  # the torch backend's own metadata


def test_unknown_suffix_and_backend_mismatch(onnx_path, checkpoint, tmp_path):
    odd = tmp_path / "m.pt"
    odd.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError) as err:
        load_model(odd)
    assert "unknown model type '.pt'" in _one_line(err)
    with pytest.raises(ModelError) as err:
        load_model(onnx_path, backend="torch")
    assert "torch backend cannot run a .onnx file" in _one_line(err)
    with pytest.raises(ModelError) as err:
        load_model(checkpoint, backend="onnxruntime")
    assert "onnxruntime backend cannot run a .safetensors file" in _one_line(err)
    with pytest.raises(ModelError) as err:
        load_model(tmp_path / "absent.onnx")
    assert "model file not found" in _one_line(err)
    with pytest.raises(ConfigError):
        load_model(onnx_path, backend="tflite")
    with pytest.raises(ConfigError):
        load_model(onnx_path, device="tpu")


def test_not_an_onnx_file_is_a_one_line_model_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("definitely not protobuf\n" * 4)
    with pytest.raises(ModelError) as err:
        load_model(junk)
    assert "onnxruntime cannot load it" in _one_line(err)


def test_wrong_input_shapes_are_refused(ort_model, tiles):
    optical, sar = tiles[0][:2], tiles[1][:2]
    bad = {
        "13 optical bands": (np.zeros((2, 13, PATCH, PATCH), np.float32), sar),
        "3 SAR bands": (optical, np.zeros((2, 3, PATCH, PATCH), np.float32)),
        "no batch axis": (optical[0], sar[0]),
        "batch mismatch": (optical, sar[:1]),
        "size mismatch": (optical, np.zeros((2, 2, PATCH + 4, PATCH + 4), np.float32)),
    }
    for why, (o, s) in bad.items():
        with pytest.raises(ModelError) as err:
            ort_model.predict(o, s)
        assert str(ort_model.info.path) in _one_line(err), why


def test_fixed_size_export_refuses_other_sizes(checkpoint, tmp_path, ort_model):
    fixed = export_model(checkpoint, "onnx", tmp_path / "fixed.onnx", exporter="legacy", dynamic_spatial=False,
                         parity_batch=2, print_fn=None).path
    with load_model(fixed, threads=1) as m:
        assert m.info.dynamic_spatial is False
        big = (np.full((1, 10, 24, 24), 1500.0, np.float32), np.full((1, 2, 24, 24), -12.0, np.float32))
        with pytest.raises(ModelError, match=rf"inputs must be {PATCH}x{PATCH} px, got 24x24"):
            m.predict(*big)
    # the default (dynamic) export takes other sizes
    assert ort_model.info.dynamic_spatial is True
    assert ort_model.predict(*big)["logits"].shape == (1, len(ort_model.info.classes))


def test_describe_is_one_line(ort_model):
    line = ort_model.describe()
    assert "\n" not in line and Path(ort_model.info.path).name in line and "onnxruntime" in line
    assert f"{PATCH} px" in line and "10 optical + 2 SAR bands" in line


def test_empty_batch_gives_empty_outputs(ort_model):
    empty = (np.zeros((0, 10, PATCH, PATCH), np.float32), np.zeros((0, 2, PATCH, PATCH), np.float32))
    out = ort_model.predict(*empty)
    k = len(ort_model.info.classes)
    assert (out["logits"].shape, out["probs"].shape, out["modality_weights"].shape) == ((0, k), (0, k), (0, 2))
