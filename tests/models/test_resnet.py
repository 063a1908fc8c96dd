"""The multi-band ResNet family: shapes, stems, odd sizes, channels_last, initialisation, known parameter counts."""

import pytest
import torch

from esccs.models import count_parameters
from esccs.models.classifier import Classifier
from esccs.models.resnet import DEPTHS, STEMS, BasicBlock, resnet, resolve_stem


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("stem", STEMS)
def test_features_shape_for_every_depth_and_stem(depth, stem):
    enc = resnet(depth, in_chans=5, width=8, stem=stem).eval()
    assert enc(torch.randn(2, 5, 32, 32)).shape == (2, 64) and enc.num_features == 64


@pytest.mark.parametrize("size", [40, 64, 97, 128])
def test_odd_and_large_patch_sizes(size):
    enc = resnet(10, in_chans=10, width=8, stem=resolve_stem("auto", size)).eval()
    assert enc(torch.randn(1, 10, size, size)).shape == (1, 64)


def test_auto_stem_choice_and_bad_stem():
    assert resolve_stem("auto", 64) == "basic" and resolve_stem("auto", 128) == "deep"
    with pytest.raises(ValueError, match="unknown stem"):
        resolve_stem("vit", 64)
    with pytest.raises(ValueError, match="no ResNet-50"):
        resnet(50)


@pytest.mark.parametrize("stem", ["basic", "deep"])
def test_channels_last_matches_contiguous(stem):
    torch.manual_seed(0)
    enc = resnet(18, in_chans=10, width=16, stem=stem, zero_init_last=False).eval()
    x = torch.randn(3, 10, 48, 48)
    ref = enc(x)
    enc_cl = enc.to(memory_format=torch.channels_last)
    out = enc_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_zero_init_last_and_kaiming():
    zero = resnet(18, width=8)
    blocks = [m for m in zero.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in blocks)
    plain = resnet(18, width=8, zero_init_last=False)
    assert all(float(m.bn2.weight.detach().min()) == 1 for m in plain.modules() if isinstance(m, BasicBlock))
    # kaiming fan_out: std = sqrt(2 / (out * k * k)) for the stem conv (8 * 9)
    w = resnet(18, width=64, zero_init_last=False).stem[0].weight.detach()
    assert abs(float(w.std()) - (2 / (64 * 9)) ** 0.5) < 0.01


def test_classic_stem_reproduces_the_imagenet_resnet_parameter_counts():
    # torchvision's resnet18 / resnet34 (3 bands, 7x7 stem, 1000 classes): 11,689,512 and 21,797,672 parameters.
    assert count_parameters(Classifier(resnet(18, in_chans=3, stem="classic"), 1000)) == 11_689_512
    assert count_parameters(Classifier(resnet(34, in_chans=3, stem="classic"), 1000)) == 21_797_672


def test_gradients_reach_the_stem():
    enc = resnet(10, in_chans=2, width=8)
    enc(torch.randn(2, 2, 32, 32)).sum().backward()
    assert enc.stem[0].weight.grad.abs().sum() > 0
