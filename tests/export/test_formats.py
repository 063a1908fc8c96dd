from pathlib import Path

import pytest

from esccs.errors import ConfigError
from esccs.export import FORMATS, get_format
from esccs.export.formats import default_output, format_table, validate_options


@pytest.mark.parametrize("name,canonical", [
    ("onnx", "onnx"), ("ONNX", "onnx"), ("onnx-int8", "onnx-int8"), ("int8", "onnx-int8"), ("trt", "trt"),
    ("tensorrt", "trt"), ("engine", "trt"),
])
def test_aliases(name, canonical):
    assert get_format(name).name == canonical


@pytest.mark.parametrize("typo,hint", [("onxx", "onnx"), ("tensort", "tensorrt"), ("engin", "engine"),
                                       ("onnx-int", "onnx-int8")])
def test_typo_hint(typo, hint):
    with pytest.raises(ConfigError, match=f"did you mean '{hint}'"):
        get_format(typo)


def test_unknown_format_lists_choices():
    with pytest.raises(ConfigError, match="choose one of"):
        get_format("tflite")


def test_defaults_and_explicit():
    o = validate_options(get_format("onnx"), {"opset": 18, "simplify": None})
    assert o["exporter"] == "dynamo" and o["preprocess"] is True and o["opset"] == 18
    assert o["explicit"] == {"opset"}


def test_option_for_another_format_is_an_error():
    with pytest.raises(ConfigError, match="'batch_max' is not valid for format 'onnx' \\(only for trt\\)"):
        validate_options(get_format("onnx"), {"batch_max": 8})
    with pytest.raises(ConfigError, match="'precision' is not valid for format 'onnx-int8'"):
        validate_options(get_format("int8"), {"precision": "fp16", "data": "x"})


def test_option_typo_and_types():
    with pytest.raises(ConfigError, match="did you mean 'opset'"):
        validate_options(get_format("onnx"), {"opsett": 17})
    with pytest.raises(ConfigError, match="must be int"):
        validate_options(get_format("onnx"), {"opset": "17"})
    with pytest.raises(ConfigError, match="must be int"):
        validate_options(get_format("onnx"), {"parity_batch": True})
    with pytest.raises(ConfigError, match="did you mean 'legacy'"):
        validate_options(get_format("onnx"), {"exporter": "legacyy"})
    with pytest.raises(ConfigError, match=">= 1"):
        validate_options(get_format("onnx"), {"parity_batch": 0})


def test_combinations():
    with pytest.raises(ConfigError, match="needs data=DIR"):
        validate_options(get_format("int8"), {})
    with pytest.raises(ConfigError, match="opset 17 is outside 18..23"):
        validate_options(get_format("onnx"), {"opset": 17})
    with pytest.raises(ConfigError, match="opset <= 20"):
        validate_options(get_format("int8"), {"opset": 21, "data": "d"})
    with pytest.raises(ConfigError, match="batch_min <= batch_opt <= batch_max"):
        validate_options(get_format("trt"), {"batch_min": 8, "batch_opt": 4})
    with pytest.raises(ConfigError, match="precision int8 needs data"):
        validate_options(get_format("trt"), {"precision": "int8"})
    assert validate_options(get_format("trt"), {"workspace": 2})["workspace"] == 2.0  # int accepted for float


def test_default_output(tmp_path):
    ckpt = tmp_path / "runs" / "m.safetensors"
    assert default_output(ckpt, get_format("onnx"), None) == tmp_path / "runs" / "m.onnx"
    assert default_output(ckpt, get_format("int8"), tmp_path) == tmp_path / "m.int8.onnx"
    assert default_output(ckpt, get_format("trt"), tmp_path / "x.plan") == tmp_path / "x.plan"
    assert default_output(ckpt, get_format("int8"), tmp_path / "new") == tmp_path / "new" / "m.int8.onnx"
    with pytest.raises(ConfigError, match=r"x.trt: trt artifacts must end in .engine or .plan \(the runtime picks"):
        default_output(ckpt, get_format("trt"), tmp_path / "x.trt")
    with pytest.raises(ConfigError, match="m.int8: onnx-int8 artifacts must end in .onnx "):
        default_output(ckpt, get_format("int8"), tmp_path / "m.int8")


def test_every_row_names_its_builder_and_the_runtime_backend_that_loads_it():
    from esccs.export.onnx import build_onnx
    from esccs.export.quantize import build_int8
    from esccs.export.tensorrt import export_engine, require_tensorrt
    from esccs.runtime.model import SUFFIX_BACKEND

    assert {f.name: f.builder for f in FORMATS} == {"onnx": build_onnx, "onnx-int8": build_int8, "trt": export_engine}
    assert {f.name: f.preflight for f in FORMATS} == {"onnx": None, "onnx-int8": None, "trt": require_tensorrt}
    for f in FORMATS:
        assert SUFFIX_BACKEND["." + f.suffix.rsplit(".", 1)[1]] == f.backend  # the default name loads


def test_table_lists_every_format():
    table = format_table()
    assert all(f"`{f.name}`" in table for f in FORMATS)
    assert {f.gpu for f in FORMATS} == {True, False}
    assert FORMATS[0].option("data").type is Path
