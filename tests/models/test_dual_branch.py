"""DualBranchNet: decomposed logits, modality weights, per-sample gradient scaling (IRM-B) and ONNX export."""

import numpy as np
import pytest
import torch

from esccs.models import DualBranchNet, ExportWrapper, create_model, modality_weights
from esccs.ops._dispatch import set_fused

B = 4


@pytest.fixture
def net():
    torch.manual_seed(0)
    return create_model("dual_resnet10", width=8, patch_size=32, zero_init_last=False).eval()


def inputs(b=B, size=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 10, size, size, generator=g), torch.randn(b, 2, size, size, generator=g)


def test_outputs_and_decomposition(net):
    out = net(*inputs())
    for key in ("logits", "probs", "logits_o", "logits_s"):
        assert out[key].shape == (B, 10), key
    assert out["w_o"].shape == out["w_s"].shape == (B,)
    torch.testing.assert_close(out["logits"], out["logits_o"] + out["logits_s"], rtol=0, atol=0)
    torch.testing.assert_close(out["probs"], out["logits"].softmax(1))
    torch.testing.assert_close(out["w_o"] + out["w_s"], torch.ones(B))
    assert ((out["w_o"] >= 0) & (out["w_o"] <= 1)).all()


def test_branch_logits_use_split_weights_and_half_bias(net):
    out = net(*inputs())
    w, b = net.head.weight, net.head.bias
    torch.testing.assert_close(out["logits_o"], out["h_o"] @ w[:, :64].T + b / 2)
    torch.testing.assert_close(out["logits_s"], out["h_s"] @ w[:, 64:].T + b / 2)


def test_modality_weights_formula_and_extremes():
    z_o, z_s = torch.randn(6, 5), torch.randn(6, 5)
    z = z_o + z_s
    y = z.argmax(1)
    p_o, p_s = z_o.softmax(1)[torch.arange(6), y], z_s.softmax(1)[torch.arange(6), y]
    torch.testing.assert_close(modality_weights(z, z_o, z_s), p_o / (p_o + p_s))
    # both probabilities underflow to 0 in fp32: still a finite weight, not 0/0
    big = torch.tensor([[0.0, 2000.0]])
    w = modality_weights(torch.tensor([[1.0, 0.0]]), big, big.flip(1))
    assert torch.isfinite(w).all() and 0 <= float(w) <= 1


@pytest.mark.parametrize("size", [40, 64])
def test_odd_sizes(net, size):
    assert net(*inputs(2, size))["logits"].shape == (2, 10)


def test_channels_last(net):
    x_o, x_s = inputs()
    ref = net(x_o, x_s)
    net = net.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    out = net(x_o.contiguous(memory_format=cl), x_s.contiguous(memory_format=cl))
    for key in ("logits", "w_o"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-4)


def grads(module):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in module.parameters()])


def backward(net, k, key="logits", rows=slice(None)):
    net.zero_grad(set_to_none=True)
    out = net(*inputs(), k=k)
    out[key][rows].sum().backward()
    return out, grads(net.opt_encoder), grads(net.sar_encoder)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_k_scales_only_the_fused_path_gradient(net, fused):
    with set_fused(fused):
        ref, g_o, g_s = backward(net, None)
        out, g_o0, g_s0 = backward(net, torch.tensor([[0.0, 1.0]] * B))
        for key in ref:
            assert torch.equal(out[key], ref[key]), f"forward {key} depends on k"
        assert g_o.abs().sum() > 0 and float(g_o0.abs().sum()) == 0  # k_o = 0: the fused path sends nothing back
        torch.testing.assert_close(g_s0, g_s)  # k_s = 1: unchanged
        _, g_half, _ = backward(net, torch.tensor([[0.5, 1.0]] * B))
        torch.testing.assert_close(g_half, 0.5 * g_o)
        _, g_uni, _ = backward(net, torch.tensor([[0.0, 1.0]] * B), key="logits_o")
        assert g_uni.abs().sum() > 0  # the branch logits z_o read the unscaled features
        # row-wise: k_o = (1, 0, 0, 0) is the gradient of sample 0 alone
        _, g_row, _ = backward(net, torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
        _, g_first, _ = backward(net, None, rows=slice(0, 1))
        torch.testing.assert_close(g_row, g_first)


def test_k_shape_is_checked(net):
    with pytest.raises(ValueError, match=r"k must have shape \(4, 2\)"):
        net(*inputs(), k=torch.ones(B))


def test_export_wrapper_outputs(net):
    logits, probs, weights = ExportWrapper(net)(*inputs())
    out = net(*inputs())
    assert weights.shape == (B, 2)
    torch.testing.assert_close(weights[:, 0], out["w_o"])
    torch.testing.assert_close(logits, out["logits"])
    torch.testing.assert_close(probs, out["probs"])


def _export_and_run(net, path, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x_o, x_s = inputs()
    batch = torch.export.Dim("batch")
    kw = ({"dynamic_shapes": ({0: batch}, {0: batch})} if dynamo else
          {"dynamic_axes": {"optical": {0: "batch"}, "sar": {0: "batch"}}})
    torch.onnx.export(ExportWrapper(net), (x_o, x_s), str(path), dynamo=dynamo, opset_version=17 if not dynamo else 18,
                      input_names=["optical", "sar"], output_names=list(ExportWrapper.output_names), **kw)
    assert not net.training, "the export flipped the model back to train mode"
    graph = onnx.load(str(path))
    domains = {n.domain for n in graph.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_o, x_s = inputs(b=3)  # another batch size than the one traced
    got = sess.run(None, {"optical": x_o.numpy(), "sar": x_s.numpy()})
    want = [t.detach().numpy() for t in ExportWrapper(net)(x_o, x_s)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter announces its retirement
def test_onnx_legacy_export_matches_onnxruntime(net, tmp_path):
    _export_and_run(net, tmp_path / "dual.onnx", dynamo=False)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*axis name:UserWarning")  # torch-internal noise
def test_onnx_dynamo_export_matches_onnxruntime(net, tmp_path):
    pytest.importorskip("onnxscript")
    _export_and_run(net, tmp_path / "dual_dynamo.onnx", dynamo=True)


def test_encoders_of_different_widths():
    from esccs.models.resnet import resnet

    net = DualBranchNet(resnet(10, 10, width=8), resnet(10, 2, width=16), n_classes=3).eval()
    out = net(*inputs())
    assert out["h_o"].shape == (B, 64) and out["h_s"].shape == (B, 128) and out["logits"].shape == (B, 3)
