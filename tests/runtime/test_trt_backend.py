"""The TensorRT backend: its pure parts here; loading a real engine only where TensorRT and a GPU are installed.

TensorRT is never faked: without it, the tests check that asking for an engine fails with a clear one-line error.
"""

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from rt_helpers import read_jobs

from esccs.cli import cli
from esccs.errors import DataError, DependencyMissingError
from esccs.io.engine_sidecar import build_engine_sidecar, read_engine_sidecar, sidecar_path
from esccs.runtime import BackendUnavailableError, ModelError, load_model, open_tiles
from esccs.runtime.backends.tensorrt_backend import bucket_for, buckets
from esccs.spec import ENGINE_SIDECAR_FORMAT, ENGINE_SIDECAR_KEYS, ENGINE_SIDECAR_SCHEMA

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.mark.parametrize(("max_batch", "want"), [
    (1, [1]), (2, [1, 2]), (5, [1, 2, 4, 5]), (8, [1, 2, 4, 8]), (64, [1, 2, 4, 8, 16, 32, 64]),
    (48, [1, 2, 4, 8, 16, 32, 48]),
])
def test_buckets(max_batch, want):
    assert buckets(max_batch) == want


def test_bucket_for_picks_the_smallest_bucket_that_fits():
    sizes = buckets(48)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 4, 5, 9, 16, 17, 33, 48)] == [1, 2, 4, 4, 8, 16, 16, 32, 48, 48]
    for n in range(1, 49):
        b = bucket_for(n, sizes)
        assert b >= n and b in sizes and all(s < n for s in sizes if s < b)
    with pytest.raises(ValueError, match="batch of 49 exceeds the engine's largest profile batch 48"):
        bucket_for(49, sizes)


def _sidecar(metadata) -> dict:
    return build_engine_sidecar(trt_version="10.13.0.35", gpu=GPU, profiles={}, recipe={"precision": "fp32"},
                                onnx_file="m.fp32.onnx", onnx_sha256="ab" * 32, checkpoint_sha256="cd" * 32,
                                version_compatible=False, hardware_compat="none", workspace_gb=1.0,
                                metadata=metadata)


def _engine(tmp_path, metadata, **override):
    """A stand-in ``.engine`` file (not a plan: nothing here deserialises it) and an esccs sidecar beside it."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real plan")
    side = {k: v for k, v in {**_sidecar(metadata), **override}.items() if v is not None}
    engine.with_name("m.engine.json").write_text(json.dumps(side))
    return engine


def test_sidecar_carries_the_contracts_format_tag_schema_and_keys(tmp_path):
    engine = _engine(tmp_path, {"classes": "[]"})
    assert sidecar_path(engine) == tmp_path / "m.engine.json"
    side = read_engine_sidecar(engine)
    assert tuple(side) == ENGINE_SIDECAR_KEYS
    assert (side["format"], side["schema"]) == (ENGINE_SIDECAR_FORMAT, ENGINE_SIDECAR_SCHEMA) == \
           ("esccs-tensorrt-engine", 1)


@pytest.mark.parametrize(("override", "message"), [
    ({"format": "someone-elses-engine"}, "not an esccs engine sidecar (format 'someone-elses-engine', expected "
                                         "'esccs-tensorrt-engine')"),
    ({"schema": ENGINE_SIDECAR_SCHEMA + 1}, f"engine sidecar schema {ENGINE_SIDECAR_SCHEMA + 1} is newer than this "
                                            "esccs reads"),
    ({"profiles": None, "source_onnx": None}, "not an esccs engine sidecar (profiles, source_onnx missing)"),
    ({"gpu": {"name": "x"}}, "malformed esccs engine sidecar"),
])
def test_a_sidecar_off_the_contract_is_refused_before_tensorrt(tmp_path, onnx_metadata, override, message):
    engine = _engine(tmp_path, onnx_metadata, **override)
    with pytest.raises(DataError) as err:
        load_model(engine)
    assert str(err.value).startswith(f"{engine}.json: {message}") and "\n" not in str(err.value)


@pytest.fixture
def onnx_metadata(onnx_path):
    return dict(ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                .get_modelmeta().custom_metadata_map)


def test_engine_without_sidecar_is_a_one_line_error(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(DataError) as err:
        load_model(engine)
    msg = str(err.value)
    assert msg == f"{engine}.json: engine sidecar is missing (rebuild with esccs export --format trt)"


def test_engine_sidecar_without_esccs_metadata_is_refused(tmp_path):
    engine = _engine(tmp_path, {"producer": "someone else"})
    with pytest.raises(ModelError, match="no esccs metadata") as err:
        load_model(engine)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-package message cannot be shown")
def test_engine_without_tensorrt_names_the_install(tmp_path, onnx_metadata):
    engine = _engine(tmp_path, onnx_metadata)
    with pytest.raises(DependencyMissingError) as err:
        load_model(engine)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("tensorrt is needed") and "pip install 'esccs[gpu]'" in msg
    assert err.value.package == "tensorrt" and err.value.extra == "gpu"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here: the missing-package message cannot be shown")
def test_cli_with_an_engine_and_no_tensorrt_exits_1_with_one_line(tmp_path, onnx_metadata, synth_root):
    engine = _engine(tmp_path, onnx_metadata)
    result = CliRunner().invoke(cli, ["infer", str(synth_root), "--model", str(engine), "--out",
                                      str(tmp_path / "r.csv"), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: tensorrt is needed") and "esccs[gpu]" in lines[0]


def test_engine_on_cpu_or_with_unknown_options_is_refused(tmp_path, onnx_metadata):
    engine = _engine(tmp_path, onnx_metadata)
    with pytest.raises(BackendUnavailableError, match="runs on a CUDA GPU only"):
        load_model(engine, device="cpu")
    with pytest.raises(BackendUnavailableError, match="takes no option 'spinning'"):
        load_model(engine, spinning=True)
    with pytest.raises(ModelError, match="the onnxruntime backend cannot run a .engine file"):
        load_model(engine, backend="onnxruntime")


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_predictions_match_onnx(checkpoint, ort_model, synth_root, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'esccs[gpu]' on a CUDA host)")
    from esccs.export import export_model

    engine = export_model(checkpoint, "trt", tmp_path / "m.engine", exporter="legacy", parity_batch=4, batch_min=1,
                          batch_opt=4, batch_max=8, print_fn=None).path
    jobs = open_tiles(synth_root).jobs
    optical, sar = read_jobs(jobs, ort_model.info)
    with load_model(engine) as m:
        assert m.backend.name == "tensorrt" and m.backend.max_batch == 8
        assert m.info.classes == ort_model.info.classes
        got = m.predict(optical, sar)  # 20 rows: split into 8 + 8 + 4, the last one padded to its bucket
    ref = ort_model.predict(optical, sar)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(got["probs"].argmax(1), ref["probs"].argmax(1))
