"""Checkpoints: safetensors + JSON sidecar round trip without pickle, and one-line errors for every bad input."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from esccs.errors import ConfigError, DataError
from esccs.models import checkpoint_sha256, create_model, load_checkpoint, save_checkpoint
from esccs.models.checkpoint import sidecar_path


def small(name="resnet10", **kw):
    torch.manual_seed(0)
    return create_model(name, width=8, patch_size=32, zero_init_last=False, **kw).eval()


@pytest.fixture
def no_pickle(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle / torch.load used")

    for mod, attr in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")]:
        monkeypatch.setattr(mod, attr, boom)


@pytest.fixture
def saved(tmp_path):
    model = small("resnet18")
    path = save_checkpoint(tmp_path / "src.safetensors", model, model.esccs_config, extra={"stage": "source"})
    return path, model


def one_line_naming(err, path):
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


@pytest.mark.parametrize("name", ["resnet18", "dual_resnet10"])
def test_round_trip_gives_identical_outputs_without_pickle(tmp_path, no_pickle, name):
    model = small(name, classes="hunan_cloud", normalization="sen12ms")
    x = (torch.randn(2, 10, 32, 32), torch.randn(2, 2, 32, 32))[: 2 if name.startswith("dual") else 1]
    path = save_checkpoint(tmp_path / "m.safetensors", model, model.esccs_config, extra={"stage": "step2", "epoch": 3})
    loaded, cfg, extra = load_checkpoint(path, expect=name)
    assert cfg == model.esccs_config and loaded.esccs_config == cfg and extra == {"stage": "step2", "epoch": 3}
    assert not loaded.training
    a, b = model(*x), loaded(*x)
    if isinstance(a, dict):
        a, b = a["logits"], b["logits"]
    assert torch.equal(a, b)


def test_sidecar_contents(saved):
    path, model = saved
    meta = json.loads(sidecar_path(path).read_text())
    assert sidecar_path(path).name == "src.json"
    assert meta["architecture"] == {"name": "resnet18", "family": "classifier"}
    assert meta["weights"]["sha256"] == checkpoint_sha256(path)
    assert meta["config"]["optical_bands"][0] == "B02" and meta["config"]["classes"][0] == "Barren"
    assert meta["extra"] == {"stage": "source"} and meta["esccs_version"]
    assert not list(path.parent.glob(".*"))  # no temporary files left behind


def test_load_by_sidecar_path_and_family_expectation(saved):
    path, _ = saved
    model, cfg, _ = load_checkpoint(sidecar_path(path), expect="classifier")
    assert cfg.name == "resnet18"


def test_channels_last_model_saves(tmp_path):
    model = small().to(memory_format=torch.channels_last)
    load_checkpoint(save_checkpoint(tmp_path / "cl.safetensors", model))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "not found" in one_line_naming(err, path)


def test_missing_sidecar(saved):
    path, _ = saved
    sidecar_path(path).unlink()
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "src.json is missing" in one_line_naming(err, path)


def test_sidecar_not_json(saved):
    path, _ = saved
    sidecar_path(path).write_text("{not json")
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "not valid JSON" in one_line_naming(err, sidecar_path(path))


@pytest.mark.parametrize("keep", [0.5, 0.999, 0])
def test_truncated_weights(saved, no_pickle, keep):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "truncated or corrupt" in one_line_naming(err, path)


def test_sha256_mismatch(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # still a valid safetensors file, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "sha256 mismatch" in one_line_naming(err, path)


def test_architecture_mismatch(saved):
    path, _ = saved
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path, expect="dual_resnet18")
    msg = one_line_naming(err, path)
    assert f"checkpoint {path} is a resnet18 classifier, this stage needs a dual_resnet18" == msg
    with pytest.raises(ConfigError, match="is a resnet18 classifier, this stage needs a dual"):
        load_checkpoint(path, expect="dual")
    with pytest.raises(ConfigError, match="did you mean 'dual_resnet18'"):
        load_checkpoint(path, expect="dual_resnet81")


def _rewrite(path, state):
    save_file(state, str(path))
    meta = json.loads(sidecar_path(path).read_text())
    meta["weights"]["sha256"] = checkpoint_sha256(path)
    sidecar_path(path).write_text(json.dumps(meta))


def test_missing_and_unexpected_keys(saved):
    path, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["head.weight"]
    state["head.extra"] = torch.zeros(1)
    _rewrite(path, state)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    msg = one_line_naming(err, path)
    assert "1 missing keys (head.weight)" in msg and "1 unexpected keys (head.extra)" in msg


def test_shape_mismatch(saved):
    path, model = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["head.bias"] = torch.zeros(3)
    _rewrite(path, state)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert "shape mismatches, first head.bias (3,) vs (10,)" in one_line_naming(err, path)


def test_unknown_config_key_in_sidecar(saved):
    path, _ = saved
    meta = json.loads(sidecar_path(path).read_text())
    meta["config"]["depth"] = 18
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(ConfigError) as err:
        load_checkpoint(path)
    assert "unknown model config key 'depth'" in one_line_naming(err, sidecar_path(path))


def test_save_refuses_bad_inputs(tmp_path):
    model = small()
    with pytest.raises(ConfigError, match="must not end in .json"):
        save_checkpoint(tmp_path / "m.json", model)
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "m.safetensors", model, extra={"x": object()})
    with pytest.raises(ConfigError, match="no ModelConfig"):
        save_checkpoint(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))
