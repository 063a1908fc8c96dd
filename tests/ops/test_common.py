"""The shared KD helpers of esccs.ops: one KD formula, one reduction, one set of argument checks for every op."""

import numpy as np
import pytest
import torch

from esccs.ops import irm_kd, kd_rows, unimodal_kd
from esccs.ops._common import check_logits, check_loss_args, reduce_rows
from esccs.ops.irm_kd import irm_kd_reference
from esccs.ops.unimodal_kd import unimodal_kd_reference


def _kd_numpy(z: np.ndarray, t: np.ndarray, temperature: float) -> np.ndarray:
    """``T^2 sum_k q_t (log q_t - log q_z)`` in float64 numpy, softmax written out (the oracle)."""
    def log_softmax(x):
        x = x / temperature
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))
    lz, lt = log_softmax(z), log_softmax(t)
    return temperature**2 * (np.exp(lt) * (lt - lz)).sum(1)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_kd_rows_matches_the_written_out_formula(temperature, scale):
    g = torch.Generator().manual_seed(3)
    z, t = (torch.randn(64, 10, generator=g, dtype=torch.float64) * scale for _ in range(2))
    want = _kd_numpy(z.numpy(), t.numpy(), temperature)
    np.testing.assert_allclose(kd_rows(z, t, temperature).numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kd_rows(z.float(), t.float(), temperature).numpy(), want, rtol=2e-4, atol=1e-5)


def test_kd_rows_gradient_is_t_times_softmax_difference():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, generator=g, dtype=torch.float64)
    kd_rows(z, t, 4.0).sum().backward()
    want = 4.0 * (torch.softmax(z.detach() / 4.0, 1) - torch.softmax(t / 4.0, 1))
    torch.testing.assert_close(z.grad, want)


def test_kd_rows_upcasts_half_precision():
    z, t = torch.randn(3, 5).half(), torch.randn(3, 5).half()
    assert kd_rows(z, t).dtype == torch.float32
    torch.testing.assert_close(kd_rows(z, t), kd_rows(z.float(), t.float()))


def test_both_ops_are_built_on_the_same_kd():
    g = torch.Generator().manual_seed(5)
    z, z_o, z_s, u, a_o, a_s = (torch.randn(6, 4, generator=g) for _ in range(6))
    uni = unimodal_kd_reference(z_o, z_s, a_o, a_s, temperature=2.0, reduction="none")
    torch.testing.assert_close(uni, kd_rows(z_o, a_o, 2.0) + kd_rows(z_s, a_s, 2.0))
    dec = irm_kd_reference(z, u, a_o, a_s, temperature=2.0, gamma=0.0, beta=0.0, reduction="none").loss
    torch.testing.assert_close(dec, (kd_rows(z, u, 2.0) + kd_rows(z, a_o, 2.0) + kd_rows(z, a_s, 2.0)) / 3)


def test_reduce_rows():
    rows = torch.tensor([1.0, 2.0, 6.0])
    assert reduce_rows(rows, "mean").item() == 3.0 and reduce_rows(rows, "sum").item() == 9.0
    assert reduce_rows(rows, "none") is rows


def test_checks_name_the_op_and_the_tensor():
    ok = torch.zeros(3, 5)
    assert check_logits("op", z=ok, t=ok) == (3, 5)
    with pytest.raises(ValueError, match=r"op: logits must all have one shape \(B, K\): t is \(3, 4\), z is \(3, 5\)"):
        check_logits("op", z=ok, t=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"op: logits must be \(B, K\), got z of shape \(3,\)"):
        check_logits("op", z=torch.zeros(3))
    with pytest.raises(ValueError, match="K >= 1"):
        check_logits("op", z=torch.zeros(3, 0))
    with pytest.raises(ValueError, match="op: temperature must be > 0"):
        check_loss_args("op", 0.0, "mean")
    with pytest.raises(ValueError, match="op: reduction must be one of"):
        check_loss_args("op", 1.0, "batchmean")
    # the public ops go through the same checks, with their own name in front
    with pytest.raises(ValueError, match="unimodal_kd: logits must all have one shape"):
        unimodal_kd(ok, torch.zeros(3, 4), ok, ok)
    with pytest.raises(ValueError, match="irm_kd: reduction must be one of"):
        irm_kd(ok, ok, ok, ok, reduction="batchmean")
