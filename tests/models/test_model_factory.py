"""The model front door: registry, ModelConfig resolution, class presets, errors and the size/cost table."""

import json

import pytest
import torch

from esccs.errors import ConfigError
from esccs.models import ModelConfig, create_model, create_model_from_config, describe_models, list_models
from esccs.models.classifier import Classifier
from esccs.models.dual import DualBranchNet
from esccs.models.resnet import ResNet
from esccs.spec import CLASS_PRESETS, S1_BANDS, S2_BANDS, S2_LAND_BANDS

NAMES = ["resnet10", "resnet18", "resnet34", "dual_resnet10", "dual_resnet18", "dual_resnet34"]
DUAL_KEYS = {"logits", "probs", "logits_o", "logits_s", "w_o", "w_s"}


def test_registry_lists_the_family():
    assert set(NAMES) <= set(list_models())
    assert list_models("dual_*") == ["dual_resnet10", "dual_resnet18", "dual_resnet34"]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_of_every_registered_model(name):
    model = create_model(name, width=8, patch_size=32, n_classes=7).eval()
    x = torch.randn(2, 10, 32, 32)
    if name.startswith("dual_"):
        assert isinstance(model, DualBranchNet)
        out = model(x, torch.randn(2, 2, 32, 32))
        assert DUAL_KEYS <= set(out)
        assert all(out[k].shape == ((2, 7) if k.startswith(("logits", "probs")) else (2,)) for k in DUAL_KEYS)
    else:
        assert isinstance(model, Classifier)
        assert model(x).shape == (2, 7)
    assert model.esccs_config.name == name and model.esccs_config.n_classes == 7


@pytest.mark.parametrize("preset", ["sen12ms_cloud", "hunan_cloud", "igbp_simple", "igbp"])
def test_class_presets_set_n_classes(preset):
    model = create_model("resnet10", classes=preset, width=8)
    assert model.head.out_features == len(CLASS_PRESETS[preset]) == model.esccs_config.n_classes
    assert model.esccs_config.classes == CLASS_PRESETS[preset]


def test_class_list_default_and_conflicts():
    assert create_model("resnet10", classes=["a", "b", "c"], width=8).head.out_features == 3
    cfg = create_model("resnet10", width=8).esccs_config
    assert cfg.classes == CLASS_PRESETS["sen12ms_cloud"] and cfg.n_classes == 10
    assert create_model("resnet10", n_classes=4, width=8).esccs_config.classes is None
    with pytest.raises(ConfigError, match="n_classes=4 but 3 class names"):
        create_model("resnet10", n_classes=4, classes=["a", "b", "c"])
    with pytest.raises(ConfigError, match="did you mean 'hunan_cloud'"):
        create_model("resnet10", classes="hunan_clouds")


def test_unknown_model_name_suggests_a_fix():
    with pytest.raises(ConfigError, match="unknown model 'resnt18'; did you mean 'resnet18'"):
        create_model("resnt18")
    with pytest.raises(ConfigError, match="unknown model 'vit'; choose one of"):
        create_model_from_config(ModelConfig(name="vit"))


def test_unknown_keyword_and_bad_values():
    with pytest.raises(ConfigError, match="unknown model config key 'widht'; did you mean 'width'"):
        create_model("resnet18", widht=16)
    with pytest.raises(ConfigError, match="unknown stem"):
        create_model("resnet18", stem="vit")
    with pytest.raises(ConfigError, match="4 channels but 10 band names"):
        create_model("resnet18", in_chans=4, optical_bands=S2_LAND_BANDS)
    with pytest.raises(ConfigError, match="modality"):
        create_model("resnet18", modality="lidar")
    with pytest.raises(ConfigError, match="needs n_classes >= 1"):
        create_model("dual_resnet10", n_classes=0)


def test_bands_and_channels_resolve_both_ways():
    assert create_model("resnet10", width=8).esccs_config.in_chans == 10
    assert create_model("resnet10", in_chans=13, width=8).esccs_config.optical_bands == S2_BANDS
    assert create_model("resnet10", in_chans=4, width=8).esccs_config.optical_bands is None  # unnamed
    sar = create_model("resnet10", modality="sar", width=8).esccs_config
    assert (sar.in_chans, sar.sar_bands, sar.optical_bands, sar.input_bands) == (2, S1_BANDS, None, S1_BANDS)
    dual = create_model("dual_resnet10", optical_bands=("B04", "B03", "B02"), width=8).esccs_config
    assert (dual.in_chans, dual.sar_chans, dual.modality, dual.family) == (3, 2, "optical+sar", "dual")


def test_stem_follows_patch_size():
    assert create_model("resnet10", width=8, patch_size=64).esccs_config.stem == "basic"
    assert create_model("resnet10", width=8, patch_size=256).esccs_config.stem == "deep"
    assert create_model("resnet10", width=8, patch_size=256, stem="classic").esccs_config.stem == "classic"


def test_n_classes_zero_gives_the_encoder():
    enc = create_model("resnet18", n_classes=0, width=8)
    assert isinstance(enc, ResNet) and enc(torch.randn(2, 10, 32, 32)).shape == (2, 64)


def test_sen12ms_normalization_is_filled_from_band_names():
    norm = create_model("dual_resnet10", width=8, normalization="sen12ms").esccs_config.normalization
    assert norm["optical"]["bands"] == list(S2_LAND_BANDS) and norm["sar"]["clip"] == [-25.0, 0.0]
    with pytest.raises(ConfigError, match="named optical bands"):
        create_model("resnet10", in_chans=4, normalization="sen12ms")


def test_config_round_trips_through_json():
    cfg = create_model("dual_resnet18", width=8, classes="hunan_cloud", normalization="sen12ms").esccs_config
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.resolved() == cfg


def test_describe_models_table(capsys):
    rows = describe_models(settings=((64, 128), (16, 64)))
    by = {(r["name"], r["width"]): r for r in rows}
    print(capsys.readouterr().out)  # shown with pytest -s
    for w in (64, 16):
        single, deeper, dual = by[("resnet18", w)], by[("resnet34", w)], by[("dual_resnet18", w)]
        assert deeper["params"] > single["params"] and deeper["gflops"] > single["gflops"]
        assert 1.9 < dual["params"] / single["params"] < 2.1
        assert 1.8 < dual["gflops"] / single["gflops"] < 2.1
