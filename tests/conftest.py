"""Test-wide set-up. TRITON_INTERPRET=1 must be set before any kernel module is imported (``@triton.jit`` reads it
at decoration time), so the fused ops run on CPU tensors through Triton's interpreter in every test."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # on a GPU host the kernels compile for real
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
