import json

import pytest

from esccs.errors import ConfigError, DataError
from esccs.export import EngineMismatchError
from esccs.export import tensorrt as trt_mod
from esccs.io.engine_sidecar import build_engine_sidecar, check_engine_sidecar, sidecar_path, staged_engine, trt_major
from esccs.models import create_model

GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_profile_shapes_cover_both_inputs_with_one_batch_range():
    cfg = create_model("dual_resnet10", width=8, patch_size=32).esccs_config
    p = trt_mod.profile_shapes(trt_mod.input_shapes(cfg), 1, 8, 64)
    assert p == {"optical": {"min": [1, 10, 32, 32], "opt": [8, 10, 32, 32], "max": [64, 10, 32, 32]},
                 "sar": {"min": [1, 2, 32, 32], "opt": [8, 2, 32, 32], "max": [64, 2, 32, 32]}}
    with pytest.raises(ConfigError):
        trt_mod.profile_shapes(trt_mod.input_shapes(cfg), 4, 2, 8)


def test_precision_recipes():
    assert trt_mod.precision_recipe("fp16", False, 11) == {
        "precision": "fp16", "typing": "strong", "onnx": "fp16 (I/O, softmax, gate and preprocessing fp32)",
        "builder_flags": [], "tf32": False}
    assert trt_mod.precision_recipe("int8", False, 10)["onnx"].startswith("int8 symmetric Q/DQ")
    assert trt_mod.precision_recipe("fp16", True, 10)["builder_flags"] == ["FP16"]
    assert trt_mod.precision_recipe("fp16", True, 10)["onnx"] == "fp32"
    with pytest.raises(ConfigError, match="weak_typing needs TensorRT < 11"):
        trt_mod.precision_recipe("fp16", True, 11)
    assert trt_major("10.13.0.35") == 10 and trt_major("11.1.0") == 11


def _sidecar(tmp_path, **compat):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    side = build_engine_sidecar(
        trt_version="10.13.0.35", gpu=GPU, profiles={}, recipe=trt_mod.precision_recipe("fp32", False, 10),
        onnx_file="m.fp32.onnx", onnx_sha256="ab" * 32, checkpoint_sha256="cd" * 32,
        version_compatible=compat.get("vc", False), hardware_compat=compat.get("hw", "none"), workspace_gb=4.0,
        metadata={"classes": "[]"})
    sidecar_path(engine).write_text(json.dumps(side))
    return engine


def test_sidecar_written_beside_engine_and_checked(tmp_path):
    engine = _sidecar(tmp_path)
    assert sidecar_path(engine).name == "m.engine.json"
    meta = check_engine_sidecar(engine, "10.13.0.35", GPU)
    assert meta["source_onnx"]["file"] == "m.fp32.onnx" and meta["precision"]["tf32"] is False
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.13.0.35, this is 10.14.1"):
        check_engine_sidecar(engine, "10.14.1", GPU)
    with pytest.raises(EngineMismatchError, match="built for NVIDIA H100 .* this GPU is NVIDIA A10"):
        check_engine_sidecar(engine, "10.13.0.35", {"name": "NVIDIA A10", "compute_capability": "8.6"})


def test_compatible_engines(tmp_path):
    engine = _sidecar(tmp_path, vc=True, hw="ampere+")
    check_engine_sidecar(engine, "11.1.0", {"name": "NVIDIA A10", "compute_capability": "8.6"})
    with pytest.raises(EngineMismatchError, match="same or later major"):
        check_engine_sidecar(engine, "8.6.1", GPU)
    with pytest.raises(EngineMismatchError, match="ampere"):
        check_engine_sidecar(engine, "11.1.0", {"name": "Tesla T4", "compute_capability": "7.5"})


def test_missing_sidecar(tmp_path):
    (tmp_path / "x.engine").write_bytes(b"")
    with pytest.raises(DataError, match="engine sidecar is missing"):
        check_engine_sidecar(tmp_path / "x.engine", "10.0", GPU)


def test_staged_engine_is_loadable_before_it_is_published_and_never_half_written(tmp_path):
    side = build_engine_sidecar(
        trt_version="10.13.0.35", gpu=GPU, profiles={}, recipe=trt_mod.precision_recipe("fp32", False, 10),
        onnx_file="m.fp32.onnx", onnx_sha256="ab" * 32, checkpoint_sha256="cd" * 32, version_compatible=False,
        hardware_compat="none", workspace_gb=4.0, metadata={"classes": "[]"})
    final = tmp_path / "m.engine"
    with staged_engine(final, b"plan-1", side) as staged:
        assert staged.parent == tmp_path and staged.suffix == ".engine" and staged != final
        assert check_engine_sidecar(staged, "10.13.0.35", GPU)["metadata"] == {"classes": "[]"}  # what a loader sees
        assert not final.exists() and not sidecar_path(final).exists()
    assert final.read_bytes() == b"plan-1" and json.loads(sidecar_path(final).read_text()) == side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]
    with pytest.raises(RuntimeError, match="check failed"):
        with staged_engine(final, b"plan-2", {**side, "workspace_gb": 8.0}):
            raise RuntimeError("check failed")
    assert final.read_bytes() == b"plan-1" and json.loads(sidecar_path(final).read_text())["workspace_gb"] == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json"]


def test_engine_metadata_states_the_engines_precision_and_fixed_size(onnx_legacy, checkpoint):
    from esccs.models import load_checkpoint
    from esccs.runtime import ModelInfo

    _, cfg, _ = load_checkpoint(checkpoint)
    meta = onnx_legacy.info["metadata"]
    assert ModelInfo.from_metadata("m.onnx", meta).dynamic_spatial is True
    engine = trt_mod.engine_metadata(onnx_legacy.info, {"precision": "fp16"}, cfg)
    info = ModelInfo.from_metadata("m.engine", engine)
    assert info.dynamic_spatial is False and info.precision == "fp16" and info.patch_size == 32
    assert json.loads(engine["inputs"]) == {"optical": ["batch", 10, 32, 32], "sar": ["batch", 2, 32, 32]}
    assert set(engine) == set(meta) and meta["precision"] == "fp32"  # the ONNX's own metadata is untouched


def test_fp16_onnx_keeps_io_and_gate_fp32(onnx_legacy, tmp_path):
    import onnx

    trt_mod.to_fp16_onnx(onnx_legacy.path, tmp_path / "h.onnx")
    m = onnx.load(str(tmp_path / "h.onnx"))
    assert {i.type.tensor_type.elem_type for i in list(m.graph.input) + list(m.graph.output)} == {1}  # FLOAT
    assert any(init.data_type == 10 for init in m.graph.initializer)  # FLOAT16 weights


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_build_and_parity(checkpoint, data_dir, tmp_path):
    pytest.importorskip("tensorrt")
    from esccs.export import export_model

    r = export_model(checkpoint, "trt", tmp_path, data=data_dir, batch_opt=4, batch_max=17, workspace=1,
                     print_fn=None)
    assert r.path.suffix == ".engine" and r.parity["top1_agreement"] == 1.0
    assert r.parity["max_abs_logit_diff"] <= 1e-3
    from esccs.runtime.backends.tensorrt_backend import gpu_info

    meta = check_engine_sidecar(r.path, trt_mod.require_tensorrt().__version__, gpu_info())
    assert meta["profiles"][0]["sar"]["max"][0] == 17 and meta["metadata"]["precision"] == "fp32"
    assert r.parity["backend"] == "tensorrt" and r.parity["provider"] == "tensorrt"
