"""Fused ops of step 2 (Triton kernels with pure-PyTorch references), one folder per op.

- :func:`irm_kd` — IRM teacher weights, discrepancy ratio, balancing coefficients and the weighted three-teacher KD +
  consensus CE, with its gradient, in one pass per row.
- :func:`unimodal_kd` — KD of both branch heads against their auxiliary teachers in one launch.
- :func:`grad_scale` — identity forward, row-wise scaling of the gradient backward; exports as identity.
- :func:`kd_rows` — the per-row ``KD_T`` every KD loss of the package is built on (:mod:`esccs.ops._common`, with the
  shared reductions and argument checks, and the naming rule: ``_o`` optical, ``_s`` SAR, ``_src`` source).

The dispatcher (:mod:`esccs.ops._dispatch`) picks the Triton kernel or the reference per call.
"""

from esccs.ops._common import kd_rows
from esccs.ops._dispatch import fused_enabled, set_fused, use_fused
from esccs.ops.grad_scale import GradScale, grad_scale
from esccs.ops.irm_kd import IRMKDLoss, irm_kd
from esccs.ops.unimodal_kd import UnimodalKDLoss, unimodal_kd

__all__ = ["set_fused", "fused_enabled", "use_fused", "irm_kd", "IRMKDLoss", "unimodal_kd", "UnimodalKDLoss",
           "grad_scale", "GradScale", "kd_rows"]
