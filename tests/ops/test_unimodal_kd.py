"""``unimodal_kd``: the Triton kernel (interpreter on CPU) against the pure-PyTorch reference, Liger-style matrix."""

import pytest
import torch
import torch.nn.functional as F

from esccs.ops import _dispatch
from esccs.ops._dispatch import set_fused
from esccs.ops.unimodal_kd import UnimodalKDLoss, unimodal_kd, unimodal_kd_reference
from esccs.ops.unimodal_kd import kernels as kd_kernels
from esccs.ops.unimodal_kd.function import UnimodalKDFunction

#: (B, K, BLOCK_K cap): prime batch; K wider than one block and not a power of two; the usual 10 classes; K = 1
SHAPES = [(7, 37, 16), (13, 10, 4096), (5, 1, 4096), (1, 10, 4)]
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, 2e-2, id="fp16", marks=pytest.mark.gpu),
    pytest.param(torch.bfloat16, 2e-2, 5e-2, id="bf16", marks=pytest.mark.gpu),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def block_cap(monkeypatch):
    def set_cap(cap):
        monkeypatch.setattr(kd_kernels, "MAX_BLOCK_K", cap)

    return set_cap


def logits(b, k, dtype=torch.float32, scale=3.0):
    """Student (z_o, z_s) requiring grad and teacher (a_o, a_s) logits, all (b, k)."""
    z_o, z_s, a_o, a_s = (scale * torch.randn(4, b, k, device=DEVICE)).to(dtype).unbind(0)
    return z_o.requires_grad_(), z_s.requires_grad_(), a_o, a_s


def run(fn, z_o, z_s, a_o, a_s, factor=1.0, **kw):
    """Loss and (dz_o, dz_s) of ``factor * fn(...)`` on fresh leaf copies."""
    x_o, x_s = (z.detach().clone().requires_grad_(True) for z in (z_o, z_s))
    loss = fn(x_o, x_s, a_o, a_s, **kw)
    (factor * loss).sum().backward()
    return loss.detach(), x_o.grad, x_s.grad


def assert_close(fused, ref, atol, rtol):
    for f, r in zip(fused, ref):
        torch.testing.assert_close(f.float(), r.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("b,k,cap", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("factor", [1.0, 2.0], ids=["last", "not_last"])
def test_matches_reference(b, k, cap, dtype, atol, rtol, reduction, factor, block_cap):
    block_cap(cap)
    z = logits(b, k, dtype)
    ref = run(unimodal_kd_reference, *z, factor=factor, reduction=reduction)
    fused = run(lambda *t, **kw: UnimodalKDFunction.apply(*t, None, 4.0, reduction), *z, factor=factor)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == dtype
    assert_close(fused, ref, atol, rtol)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_weights_and_temperature(temperature, reduction, block_cap):
    block_cap(16)
    z = logits(11, 37)
    w = torch.rand(11, 2, device=DEVICE) * 2  # zeros-to-two per-sample branch weights
    w[0] = 0.0
    kw = dict(temperature=temperature, weights=w, reduction=reduction)
    ref = run(unimodal_kd_reference, *z, factor=2.0, **kw)
    fused = run(lambda *t, **_: UnimodalKDFunction.apply(*t, w, temperature, reduction), *z, factor=2.0)
    assert_close(fused, ref, 1e-5, 1e-5)
    assert torch.all(fused[1][0] == 0) and torch.all(fused[2][0] == 0)


def test_weights_scale_each_branch():
    z_o, z_s, a_o, a_s = logits(6, 10)
    kd_o = unimodal_kd_reference(z_o, z_o, a_o, a_o, reduction="none") / 2  # both branches identical: half is one
    kd_s = unimodal_kd_reference(z_s, z_s, a_s, a_s, reduction="none") / 2
    w = torch.tensor([[2.0, 0.0], [0.0, 3.0]], device=DEVICE).repeat(3, 1)
    got = unimodal_kd(z_o, z_s, a_o, a_s, weights=w, reduction="none")
    torch.testing.assert_close(got, w[:, 0] * kd_o + w[:, 1] * kd_s)


def test_three_forms_agree():
    z_o, z_s, a_o, a_s = logits(9, 10)
    w = torch.rand(9, 2, device=DEVICE)
    a = unimodal_kd(z_o, z_s, a_o, a_s, temperature=2.0, weights=w)
    b = UnimodalKDLoss(temperature=2.0)(z_o, z_s, a_o, a_s, weights=w)
    c = UnimodalKDFunction.apply(z_o, z_s, a_o, a_s, w, 2.0, "mean")
    assert a.grad_fn is not None and "UnimodalKD" in type(a.grad_fn).__name__  # the fused path ran
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert "temperature=2.0" in repr(UnimodalKDLoss(temperature=2.0))


def test_reductions_are_consistent():
    z = logits(8, 10)
    none = unimodal_kd(*z, reduction="none")
    assert none.shape == (8,) and torch.all(none >= 0)
    torch.testing.assert_close(unimodal_kd(*z, reduction="sum"), none.sum())
    torch.testing.assert_close(unimodal_kd(*z, reduction="mean"), none.mean())


def test_t1_one_hot_teacher_is_cross_entropy():
    z_o, z_s, _, _ = logits(7, 10)
    y_o, y_s = torch.randint(0, 10, (2, 7), device=DEVICE)
    a_o, a_s = (1e4 * F.one_hot(y, 10).float() for y in (y_o, y_s))  # huge margin: softmax is one-hot in fp32
    ce = F.cross_entropy(z_o, y_o, reduction="none") + F.cross_entropy(z_s, y_s, reduction="none")
    for fn in (unimodal_kd, unimodal_kd_reference):
        got = fn(z_o, z_s, a_o, a_s, temperature=1.0, reduction="none")
        torch.testing.assert_close(got, ce, atol=1e-5, rtol=1e-5)
    fused, ref = (run(fn, z_o, z_s, a_o, a_s, temperature=1.0) for fn in (unimodal_kd, ce_pair(y_o, y_s)))
    assert_close(fused[1:], ref[1:], 1e-6, 1e-5)


def ce_pair(y_o, y_s):
    """Mean over rows of CE(z_o, y_o) + CE(z_s, y_s), in unimodal_kd's calling convention."""
    return lambda z_o, z_s, a_o, a_s, **kw: F.cross_entropy(z_o, y_o) + F.cross_entropy(z_s, y_s)


@pytest.mark.parametrize("fn", [unimodal_kd, unimodal_kd_reference])
def test_identical_student_and_teacher_is_zero(fn, block_cap):
    block_cap(16)
    z_o, z_s, _, _ = logits(5, 37)
    loss, g_o, g_s = run(fn, z_o, z_s, z_o.detach(), z_s.detach())
    assert loss.item() == 0.0
    # the kernel's two softmaxes are bit-identical; autograd through kl_div leaves rounding (~1e-9)
    atol = 0.0 if fn is unimodal_kd else 1e-7
    for g in (g_o, g_s):
        torch.testing.assert_close(g, torch.zeros_like(g), atol=atol, rtol=0)


def test_teachers_get_no_gradient():
    z_o, z_s, a_o, a_s = logits(4, 10)
    a_o.requires_grad_()
    unimodal_kd(z_o, z_s, a_o, a_s).backward()
    assert a_o.grad is None and z_o.grad is not None


def test_no_grad_forward_matches():
    z = logits(6, 10)
    with torch.no_grad():
        got = unimodal_kd(*z, reduction="none")
    torch.testing.assert_close(got, unimodal_kd_reference(*z, reduction="none").detach())


def test_reference_gradcheck_float64():
    z_o, z_s, a_o, a_s = (t.detach().double() for t in logits(3, 5))
    z_o.requires_grad_(), z_s.requires_grad_()
    w = torch.rand(3, 2, dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda zo, zs: unimodal_kd_reference(zo, zs, a_o, a_s, temperature=2.0, weights=w, reduction="none"),
        (z_o, z_s))


@pytest.mark.parametrize("bad", [
    dict(z_s=torch.zeros(3, 4)), dict(weights=torch.ones(3)), dict(temperature=0.0), dict(reduction="batchmean"),
    dict(z_o=torch.zeros(3)),
])
def test_bad_arguments_raise(bad):
    args = dict(z_o=torch.zeros(3, 5), z_s=torch.zeros(3, 5), a_o=torch.zeros(3, 5), a_s=torch.zeros(3, 5))
    args.update(bad)
    kw = {k: args.pop(k) for k in ("weights", "temperature", "reduction") if k in args}
    with pytest.raises(ValueError, match="unimodal_kd"):
        unimodal_kd(*args.values(), **kw)


def test_dispatch_picks_reference_when_fused_off():
    z = logits(4, 10)
    with set_fused(False):
        loss = unimodal_kd(*z)
    assert "UnimodalKD" not in type(loss.grad_fn).__name__


def test_dispatch_picks_reference_without_interpreter(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    if DEVICE == "cuda":
        pytest.skip("on CUDA tensors the kernel runs without the interpreter")
    loss = unimodal_kd(*logits(4, 10))
    assert "UnimodalKD" not in type(loss.grad_fn).__name__
