"""``grad_scale``: identity forward, row-wise gradient scaling backward, identity under ONNX export."""

import io

import pytest
import torch
from torch import nn

from esccs.ops import _dispatch
from esccs.ops._dispatch import set_fused
from esccs.ops.grad_scale import GradScale, grad_scale, grad_scale_reference
from esccs.ops.grad_scale.function import GradScaleFunction

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: (B, ...) shapes: a prime-by-prime matrix, an NCHW feature map, and rows longer than one kernel block (4096)
SHAPES = [(7, 13), (5, 3, 4, 4), (3, 5000)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def scales(b):
    """k with a zero, values below and above one."""
    k = torch.rand(b, device=DEVICE) * 3
    k[0] = 0.0
    return k


def grads(fn, x, k, factor=1.0):
    """Output and input gradient of ``factor * sum(fn(x, k) * w)`` for a fixed random ``w``."""
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, k)
    w = torch.linspace(-1, 1, y.numel(), device=DEVICE).view_as(y)
    (factor * (y * w).sum()).backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("factor", [1.0, 2.0], ids=["last", "not_last"])
def test_values_and_grads_match_reference(shape, factor):
    x, k = torch.randn(shape, device=DEVICE), scales(shape[0])
    y_f, g_f = grads(grad_scale, x, k, factor)
    y_r, g_r = grads(grad_scale_reference, x, k, factor)
    torch.testing.assert_close(y_f, x, rtol=0, atol=0)  # identity forward
    torch.testing.assert_close(y_r, x, rtol=0, atol=0)
    torch.testing.assert_close(g_f, g_r, rtol=1e-6, atol=1e-6)
    w = torch.linspace(-1, 1, x.numel(), device=DEVICE).view_as(x)
    expected = factor * w * k.view(-1, *([1] * (x.dim() - 1)))
    torch.testing.assert_close(g_r, expected)
    assert torch.all(g_f[0] == 0)


def test_fused_path_runs_the_kernel():
    x = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    y = grad_scale(x, torch.ones(4, device=DEVICE))
    assert "GradScaleFunction" in type(y.grad_fn).__name__
    y_direct = GradScaleFunction.apply(x, torch.full((4,), 2.0, device=DEVICE))
    y_direct.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


def test_functional_and_module_agree():
    x, k = torch.randn(6, 9, device=DEVICE), scales(6)
    for a, b in zip(grads(grad_scale, x, k), grads(GradScale(), x, k)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dispatch_picks_reference_when_fused_off():
    x = torch.randn(4, 6, device=DEVICE, requires_grad=True)
    with set_fused(False):
        y = grad_scale(x, scales(4))
    assert "GradScaleReference" in type(y.grad_fn).__name__


def test_dispatch_picks_reference_without_interpreter(monkeypatch):
    if DEVICE == "cuda":
        pytest.skip("on CUDA tensors the kernel runs without the interpreter")
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    y = grad_scale(torch.randn(4, 6, requires_grad=True), scales(4))
    assert "GradScaleReference" in type(y.grad_fn).__name__


def test_no_grad_input_is_returned_unchanged():
    x = torch.randn(4, 6, device=DEVICE)
    assert grad_scale(x, scales(4)) is x
    assert grad_scale_reference(x, scales(4)) is x
    x.requires_grad_()
    with torch.no_grad():
        assert grad_scale(x, scales(4)) is x


@pytest.mark.parametrize("fn", [grad_scale, grad_scale_reference])
@pytest.mark.parametrize("k_shape", [(3,), (4, 1), ()], ids=str)
def test_wrong_k_shape_raises(fn, k_shape):
    with pytest.raises(ValueError, match="k must have shape"):
        fn(torch.randn(4, 6, requires_grad=True), torch.ones(k_shape))


class _Fusion(nn.Module):
    """Tiny fusion head: scale each modality's features' gradient, concatenate, classify."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, h_o, h_s):
        k = torch.full((h_o.shape[0],), 0.5)
        return self.head(torch.cat([grad_scale(h_o, k), GradScale()(h_s, k)], dim=1))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_is_plain_identity():
    onnx = pytest.importorskip("onnx")
    model = _Fusion()
    h = (torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True))
    buf = io.BytesIO()
    torch.onnx.export(model, h, buf, dynamo=False, input_names=["h_o", "h_s"], output_names=["z"])
    graph = onnx.load_from_string(buf.getvalue()).graph
    ops = [n.op_type for n in graph.node]
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), [n.domain for n in graph.node]
    # Concat + the Linear (Gemm, or MatMul + Add); nothing from grad_scale (no Identity, Reshape, custom op)
    assert ops.count("Concat") == 1
    assert set(ops) <= {"Concat", "Gemm", "MatMul", "Add"}, ops
