"""Training tests run the reference ops: the fused kernels are checked in tests/ops, and Triton's CPU interpreter
would make every training step of these tests orders of magnitude slower."""

import pytest

from esccs.ops import set_fused


@pytest.fixture(autouse=True)
def _reference_ops():
    with set_fused(False):
        yield
