import pytest

from esccs.errors import ConfigError, DataError, EsccsError
from esccs.export import ExportError, ParityError, export_model
from esccs.export import parity as parity_mod
from esccs.models import create_model, save_checkpoint


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match="checkpoint file not found"):
        export_model(tmp_path / "nope.safetensors", "onnx", tmp_path / "o.onnx", print_fn=None)
    assert not (tmp_path / "o.onnx").exists()


def test_corrupt_checkpoint(checkpoint, tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_bytes(checkpoint.read_bytes()[:100])
    (tmp_path / "m.json").write_text(checkpoint.with_suffix(".json").read_text())
    with pytest.raises(DataError, match="corrupt|sha256"):
        export_model(bad, "onnx", print_fn=None)
    assert _files(tmp_path) == ["m.json", "m.safetensors"]


def test_checkpoint_without_config(checkpoint, tmp_path):
    lone = tmp_path / "m.safetensors"
    lone.write_bytes(checkpoint.read_bytes())
    with pytest.raises(DataError, match="config sidecar m.json is missing"):
        export_model(lone, "onnx", print_fn=None)
    assert _files(tmp_path) == ["m.safetensors"]


def test_classifier_checkpoint_is_refused(tmp_path):
    clf = create_model("resnet10", width=8, patch_size=32, in_chans=10, n_classes=10)
    path = save_checkpoint(tmp_path / "c.safetensors", clf)
    with pytest.raises(ConfigError, match="resnet10 classifier; esccs export takes the dual-branch"):
        export_model(path, "onnx", print_fn=None)


def test_unknown_format_and_bad_option(checkpoint):
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        export_model(checkpoint, "onnnx", print_fn=None)
    with pytest.raises(ConfigError, match="not valid for format 'onnx'"):
        export_model(checkpoint, "onnx", precision="fp16", print_fn=None)


def test_output_not_writable(checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="output folder is not writable"):
        export_model(checkpoint, "onnx", blocker / "m.onnx", print_fn=None)
    assert _files(tmp_path) == ["file"]


def test_trt_without_tensorrt_is_a_one_line_hint(checkpoint, tmp_path):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(EsccsError, match=r"tensorrt is needed for --format trt .*pip install 'esccs\[gpu\]'") as err:
        export_model(checkpoint, "engine", tmp_path, print_fn=None)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_failing_parity_is_loud_and_strict_is_an_error(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(parity_mod.GOALS, "fp32", {"max_abs_logit": -1.0, "min_agreement": 1.0})
    with pytest.raises(ParityError, match="parity FAIL"):
        export_model(checkpoint, "onnx", tmp_path / "s.onnx", exporter="legacy", strict=True, print_fn=None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    lines = []
    r = export_model(checkpoint, "onnx", tmp_path / "l.onnx", exporter="legacy", print_fn=lines.append)
    assert not r.parity["passed"] and "PARITY CHECK FAILED" in lines[0] and r.path.is_file()
