"""Shared fixtures of the runtime tests: a tiny dual checkpoint, its ONNX export, a synthetic tile set, GeoTIFF helpers.

The checkpoint is untrained but not degenerate (``zero_init_last=False``: residual branches are live, so different
tiles get different classes, confidences and modality weights). It is exported once per session with the legacy
exporter (about 1 s; the dynamo exporter is covered by tests/export).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rt_helpers import PATCH  # noqa: E402

from esccs.data.synth import SynthConfig, synthesize
from esccs.export import export_model
from esccs.models import create_model, save_checkpoint
from esccs.runtime import load_model


def tiny_model():
    torch.manual_seed(0)
    return create_model("dual_resnet10", width=4, patch_size=PATCH, classes="sen12ms_cloud", normalization="sen12ms",
                        zero_init_last=False)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """An ``esccs data synth`` index folder; its target part (SEN12MS-CR layout) has 20 tiles of 16 px."""
    out = tmp_path_factory.mktemp("rt-data") / "d"
    synthesize(SynthConfig(out=out, samples=40, size=PATCH, patches_per_scene=5, workers=1, seed=5), progress=False)
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    model = tiny_model().eval()
    path = tmp_path_factory.mktemp("rt-ckpt") / "m.safetensors"
    save_checkpoint(path, model, model.esccs_config)
    return path


@pytest.fixture(scope="session")
def onnx_path(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rt-onnx") / "m.onnx"
    result = export_model(checkpoint, "onnx", out, exporter="legacy", parity_batch=4, print_fn=None)
    assert result.parity["passed"]
    return result.path


@pytest.fixture(scope="session")
def ort_model(onnx_path):
    """The ONNX model on onnxruntime, one thread (shared: tests must not close it)."""
    return load_model(onnx_path, device="cpu", threads=1)


# ------------------------------------------------------------------------------------------------------- helpers