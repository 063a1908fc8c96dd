"""irm_kd: the Triton kernel (interpreted on CPU, see tests/conftest.py) against the pure-PyTorch specification."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esccs.ops import _dispatch
from esccs.ops._dispatch import set_fused
from esccs.ops.irm_kd import IRMKDLoss, IRMKDOutput, irm_kd, irm_kd_reference, irm_weights_reference

kernels = pytest.importorskip("esccs.ops.irm_kd.kernels")  # needs triton; the reference tests need it for the spy
from esccs.ops.irm_kd.function import IRMKDFunction  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (B, K, chunk cap): a prime batch, K not a power of two and wider than one 16-wide chunk, one class, a wide K.
SHAPES = [(7, 10, None), (13, 37, 16), (5, 1, None), (2, 1000, 256)]
OPTIONS = [{}, {"reference": "source"}, {"score": "entropy"}, {"form": "ogm"}, {"temperature": 1.0},
           {"gamma": 0.0}, {"gamma": 2.0, "beta": 0.0, "alpha": 2.0, "k_min": 0.3}]
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float16: {"atol": 2e-3, "rtol": 2e-3},
       torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}}


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts IRMKDFunction.apply calls, so a fused-vs-reference test cannot silently compare the reference twice."""
    calls = []
    original = IRMKDFunction.apply

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(IRMKDFunction, "apply", spy)
    return calls


def _inputs(b, k, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g)
    teachers = [torch.randn(b, k, generator=g) * scale for _ in range(3)]
    return [t.to(DEVICE, dtype) for t in (z, *teachers)]


def _run(fn, z, u, a_o, a_s, loss_scale=1.0, **kw):
    """Call ``fn`` on a fresh leaf copy of ``z``, backpropagate ``loss_scale * loss``; returns (output, dL/dz)."""
    z = z.detach().clone().requires_grad_(True)
    out = fn(z, u, a_o, a_s, **kw)
    (out.loss.sum() * loss_scale).backward()
    return out, z.grad


def _assert_same(got, want, dtype=torch.float32):
    (out_f, grad_f), (out_r, grad_r) = got, want
    tol = TOL[dtype]
    torch.testing.assert_close(out_f.loss, out_r.loss, **tol)
    torch.testing.assert_close(out_f.pi, out_r.pi, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=1e-5)
    torch.testing.assert_close(out_f.rho, out_r.rho, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=1e-5)
    torch.testing.assert_close(out_f.k, out_r.k, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=1e-5)
    torch.testing.assert_close(grad_f, grad_r, **tol)


def _compare(z, u, a_o, a_s, fused_calls, loss_scale=1.0, dtype=torch.float32, **kw):
    got = _run(irm_kd, z, u, a_o, a_s, loss_scale, **kw)
    assert len(fused_calls) == 1, "the fused path was not taken"
    want = _run(irm_kd_reference, z, u, a_o, a_s, loss_scale, **kw)
    _assert_same(got, want, dtype)
    return got


# ---------------------------------------------------------------------------------------------- Liger-style matrix
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_matches_reference(shape, options, fused_calls, monkeypatch):
    b, k, cap = shape
    if cap:
        monkeypatch.setattr(kernels, "MAX_BLOCK_K", cap)
    out, grad = _compare(*_inputs(b, k), fused_calls, **options)
    assert out.loss.dtype == torch.float32 and grad.dtype == torch.float32
    assert out.pi.shape == (b, 3) and out.rho.shape == (b,) and out.k.shape == (b, 2)
    torch.testing.assert_close(out.pi.sum(1), torch.ones(b, device=DEVICE))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss_scale", [1.0, 2.0], ids=["last_layer", "not_last_layer"])
def test_reductions_and_not_last_layer(reduction, loss_scale, fused_calls, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BLOCK_K", 16)
    out, _ = _compare(*_inputs(7, 37, seed=1), fused_calls, loss_scale=loss_scale, reduction=reduction)
    assert out.loss.shape == ((7,) if reduction == "none" else ())
    rows = irm_kd_reference(*_inputs(7, 37, seed=1), reduction="none").loss
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_functional_module_and_function_agree(fused_calls):
    z, u, a_o, a_s = _inputs(5, 10, seed=2)
    cfg = {"temperature": 3.0, "gamma": 1.5, "beta": 0.25, "alpha": 0.7, "k_min": 0.2, "eps": 1e-5}
    functional = _run(irm_kd, z, u, a_o, a_s, reference="source", score="entropy", form="ogm", **cfg)
    module = _run(IRMKDLoss(reference="source", score="entropy", form="ogm", **cfg), z, u, a_o, a_s)

    def apply(z, u, a_o, a_s):
        rows, pi, rho, k = IRMKDFunction.apply(z, u, a_o, a_s, *cfg.values(), True, True, True)
        return IRMKDOutput(rows.mean(), pi, rho, k)

    direct = _run(apply, z, u, a_o, a_s)
    assert len(fused_calls) == 3
    for other in (module, direct):
        for a, b in zip((*functional[0], functional[1]), (*other[0], other[1])):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_launcher_chunking_and_block_argument():
    z, u, a_o, a_s = _inputs(3, 37, seed=3)
    one = kernels.irm_kd_forward(z, u, a_o, a_s)
    chunked = kernels.irm_kd_forward(z, u, a_o, a_s, block_k=16)
    for a, b in zip(one, chunked):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert kernels.irm_kd_forward(z, u, a_o, a_s, need_grad=False)[4] is None
    with pytest.raises(ValueError, match="power of two"):
        kernels.irm_kd_forward(z, u, a_o, a_s, block_k=24)


# ------------------------------------------------------------------------------------------------------ edge cases
def test_argmax_ties_take_the_first_index_across_chunks(fused_calls, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BLOCK_K", 16)
    z, _, _, _ = _inputs(3, 37, seed=4)
    teacher = torch.zeros(3, 37, device=DEVICE)
    teacher[1, [20, 35]] = 5.0  # tie between two later chunks
    teacher[2, [3, 9, 30]] = 5.0  # tie inside the first chunk and across chunks
    _compare(z, teacher, teacher, teacher, fused_calls)
    _, _, _, ybar = irm_weights_reference(teacher, teacher, teacher)
    assert ybar.tolist() == [0, 20, 3]  # row 0 is uniform: every class ties


def test_one_class_gives_zero_loss_and_gradient(fused_calls):
    out, grad = _compare(*_inputs(4, 1), fused_calls, score="entropy")
    assert out.loss.item() == 0 and not grad.any()
    assert torch.equal(out.pi, torch.full((4, 3), 1 / 3, device=DEVICE))
    assert torch.equal(out.rho, torch.ones(4, device=DEVICE)) and torch.equal(out.k, torch.ones(4, 2, device=DEVICE))


@pytest.mark.parametrize("form", ["continuous", "ogm"])
def test_rho_exactly_one(form, fused_calls):
    z, u, a_o, _ = _inputs(6, 10, seed=5)
    out, _ = _compare(z, u, a_o, a_o.clone(), fused_calls, form=form)
    assert torch.equal(out.rho, torch.ones(6, device=DEVICE))
    expected_ks = 1.0 if form == "continuous" else 1 - math.tanh(0.5)  # ogm jumps at rho = 1 (method-notes 2.5)
    torch.testing.assert_close(out.k, torch.tensor([[1.0, expected_ks]] * 6, device=DEVICE), atol=1e-7, rtol=0)
    if form == "continuous":
        assert torch.equal(out.k, torch.ones(6, 2, device=DEVICE))


@pytest.mark.parametrize("score", ["prob", "entropy"])
def test_one_hot_teacher_stays_finite(score, fused_calls, monkeypatch):
    monkeypatch.setattr(kernels, "MAX_BLOCK_K", 16)
    z, u, a_o, a_s = _inputs(5, 37, seed=6)
    a_s = a_s.clone()
    a_s[:, 7] += 1e4  # SAR teacher one-hot at class 7: p^R underflows to exact zeros elsewhere
    u = u.clone()
    u[:, 30] -= 1e4
    out, grad = _compare(z, u, a_o, a_s, fused_calls, score=score)
    assert all(torch.isfinite(t).all() for t in (*out, grad))


def test_uniform_teachers_with_entropy_score_fall_back_to_equal_weights(fused_calls):
    z, _, _, _ = _inputs(3, 10, seed=7)
    flat = torch.zeros(3, 10, device=DEVICE)  # every c^m = 1 - log K / log K = 0, so sum_m c^m = 0
    out, grad = _compare(z, flat, flat, flat, fused_calls, score="entropy")
    torch.testing.assert_close(out.pi, torch.full((3, 3), 1 / 3, device=DEVICE), atol=1e-7, rtol=0)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_gamma_zero_is_the_mean_of_three_plain_kd_losses(fused):
    z, u, a_o, a_s = _inputs(7, 10, seed=8)
    temperature, beta = 3.0, 0.5
    with set_fused(fused):
        out = irm_kd(z, u, a_o, a_s, temperature=temperature, gamma=0.0, beta=beta)
    assert torch.equal(out.pi, torch.full((7, 3), 1 / 3, device=DEVICE))
    log_qz = F.log_softmax(z / temperature, -1)
    kd = [F.kl_div(log_qz, F.log_softmax(t / temperature, -1), log_target=True, reduction="batchmean")
          * temperature**2 for t in (u, a_o, a_s)]
    ybar = (u.softmax(-1) + a_o.softmax(-1) + a_s.softmax(-1)).argmax(-1)
    torch.testing.assert_close(out.loss, sum(kd) / 3 + beta * F.cross_entropy(z, ybar), atol=1e-5, rtol=1e-5)


def test_empty_batch(fused_calls):
    z, u, a_o, a_s = _inputs(0, 10)
    out, grad = _run(irm_kd, z, u, a_o, a_s, reduction="sum")
    assert out.loss.item() == 0 and grad.shape == (0, 10) and out.pi.shape == (0, 3)


def test_teachers_get_no_gradient_and_no_grad_mode(fused_calls):
    z, u, a_o, a_s = _inputs(4, 10, seed=9)
    u = u.clone().requires_grad_(True)
    _run(irm_kd, z, u, a_o, a_s)
    assert u.grad is None
    with torch.no_grad():
        out = irm_kd(z, u, a_o, a_s)  # z does not require grad: the kernel skips the gradient stores
    assert out.loss.grad_fn is None
    torch.testing.assert_close(out.loss, irm_kd_reference(z, u, a_o, a_s).loss, atol=1e-5, rtol=1e-5)
    assert len(fused_calls) == 2


# ------------------------------------------------------------------------------------------ specification pinned
@pytest.mark.parametrize("options", [{}, {"reference": "source"}, {"score": "entropy"}, {"form": "ogm"}])
def test_reference_gradcheck_float64(options):
    z, u, a_o, a_s = (t.double().cpu() for t in _inputs(3, 5, seed=10))
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: irm_kd_reference(z, u, a_o, a_s, **options).loss, (z,))


def _softmax(x, t=1.0):
    e = [math.exp(v / t) for v in x]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_hand_computed_two_class_case(fused):
    z, u, a_o, a_s = [0.3, -0.2], [2.0, 0.0], [1.0, 0.5], [-0.5, 0.5]
    temperature, beta, alpha, k_min, eps = 2.0, 0.5, 0.5, 0.1, 1e-6
    p = [_softmax(t) for t in (u, a_o, a_s)]
    ybar = 0  # p^S + p^O + p^R at class 0: 0.881 + 0.622 + 0.269 = 1.772 > 1.5
    c = [pm[ybar] for pm in p]
    rho = (c[1] + eps) / (c[2] + eps)  # 2.3145 > 1: optical superior, its encoder is damped
    pi = [cm / sum(c) for cm in c]
    k = [max(k_min, 1 - math.tanh(alpha * (rho - 1))), 1.0]
    qz = _softmax(z, temperature)
    q = [_softmax(t, temperature) for t in (u, a_o, a_s)]
    kd = [temperature**2 * sum(a * (math.log(a) - math.log(b)) for a, b in zip(qm, qz)) for qm in q]
    loss = sum(w * d for w, d in zip(pi, kd)) - beta * math.log(_softmax(z)[ybar])
    grad = [temperature * (qz[j] - sum(pi[m] * q[m][j] for m in range(3))) + beta * (_softmax(z)[j] - (j == ybar))
            for j in range(2)]
    assert (rho, k[0], loss) == pytest.approx((2.314474, 0.423478, 0.399959), abs=1e-6)
    with set_fused(fused):
        out, dz = _run(irm_kd, *(torch.tensor([v], device=DEVICE) for v in (z, u, a_o, a_s)),
                       temperature=temperature, beta=beta, alpha=alpha, k_min=k_min, eps=eps)
    expect = {"loss": loss, "pi": [pi], "rho": [rho], "k": [k], "grad": [grad]}
    got = {"loss": out.loss, "pi": out.pi, "rho": out.rho, "k": out.k, "grad": dz}
    for name, value in expect.items():
        torch.testing.assert_close(got[name].double().cpu(), torch.tensor(value, dtype=torch.float64), atol=1e-6,
                                   rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------------- dispatch
def test_cpu_without_interpreter_takes_the_reference(fused_calls, monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    z, u, a_o, a_s = (t.cpu() for t in _inputs(3, 10))
    out, _ = _run(irm_kd, z, u, a_o, a_s)
    assert not fused_calls
    torch.testing.assert_close(out.loss, irm_kd_reference(z, u, a_o, a_s).loss, atol=0, rtol=0)


def test_set_fused_false_and_float64_take_the_reference(fused_calls):
    z, u, a_o, a_s = _inputs(3, 10)
    with set_fused(False):
        _run(irm_kd, z, u, a_o, a_s)
    out, grad = _run(irm_kd, *(t.double() for t in (z, u, a_o, a_s)))  # the kernel computes in float32
    assert not fused_calls
    assert out.loss.dtype == out.pi.dtype == grad.dtype == torch.float64


class _TinyFusion(nn.Module):
    """Two 'encoders' and a concatenation head; the step-2 loss is computed inside forward."""

    def __init__(self, k):
        super().__init__()
        self.enc_o, self.enc_s, self.head = nn.Linear(6, 4), nn.Linear(3, 4), nn.Linear(8, k)
        self.loss = IRMKDLoss(temperature=2.0)

    def forward(self, x_o, x_s, u, a_o, a_s):
        z = self.head(torch.cat([self.enc_o(x_o), self.enc_s(x_s)], 1))
        return self.loss(z, u, a_o, a_s).loss + 0.1 * irm_kd(z, u, a_o, a_s, reduction="sum").loss


def test_inside_an_nn_module_training_step(fused_calls):
    torch.manual_seed(0)
    model = _TinyFusion(11).to(DEVICE)
    x_o, x_s = torch.randn(7, 6, device=DEVICE), torch.randn(7, 3, device=DEVICE)
    _, u, a_o, a_s = _inputs(7, 11, seed=11)
    grads = []
    for fused in (True, False):
        model.zero_grad()
        with set_fused(fused):
            model(x_o, x_s, u, a_o, a_s).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert len(fused_calls) == 2
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "batchmean"}, "reduction"), ({"reference": "optical"}, "reference"), ({"score": "margin"}, "score"),
    ({"form": "tanh"}, "form"), ({"temperature": 0.0}, "temperature"), ({"gamma": -1.0}, "gamma"),
])
def test_bad_arguments_raise(kwargs, message):
    z, u, a_o, a_s = _inputs(2, 3)
    for fn in (irm_kd, irm_kd_reference):
        with pytest.raises(ValueError, match=message):
            fn(z, u, a_o, a_s, **kwargs)
    with pytest.raises(ValueError, match="one shape"):
        irm_kd(z, u, a_o, a_s[:, :2])
    with pytest.raises(ValueError, match="K >= 1"):
        irm_kd(*(t[:, :0] for t in (z, u, a_o, a_s)))


# ------------------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 37), (64, 45), (61, 1000)])
def test_half_precision_matches_reference(dtype, shape, fused_calls):
    out, grad = _compare(*_inputs(*shape, dtype=dtype), fused_calls, dtype=dtype)
    assert grad.dtype == dtype and out.pi.dtype == torch.float32


@pytest.mark.gpu
def test_large_batch_fp32(fused_calls):
    _compare(*_inputs(1031, 4000, seed=12), fused_calls, score="entropy")
