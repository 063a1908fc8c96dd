"""Shared fixtures: a tiny synthetic data set, a tiny dual checkpoint trained for a few steps, and exports of it.

Dynamo exports take seconds, so the artifacts are built once per session and reused by read-only tests.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from esccs.data.synth import SynthConfig, synthesize
from esccs.export import export_model
from esccs.export.tiles import open_tiles, read_tiles
from esccs.models import create_model, save_checkpoint


def tiny_model():
    torch.manual_seed(0)
    return create_model("dual_resnet10", width=8, patch_size=32, classes="sen12ms_cloud", normalization="sen12ms")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d"
    synthesize(SynthConfig(out=out, samples=40, size=32, patches_per_scene=5, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, data_dir):
    """A tiny dual model trained for 60 steps on the synthetic target tiles (separated logits: INT8 is meaningful)."""
    model = tiny_model()
    cfg = model.esccs_config
    tiles = read_tiles(open_tiles(data_dir, cfg), cfg, 1000)
    xo, xs = torch.from_numpy(tiles.normalized["optical"]), torch.from_numpy(tiles.normalized["sar"])
    y = torch.from_numpy(np.maximum(tiles.labels, 0))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        i = torch.randint(0, len(y), (16,), generator=g)
        loss = F.cross_entropy(model(xo[i], xs[i])["logits"], y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, model.eval(), cfg)
    return path


@pytest.fixture(scope="session")
def onnx_dynamo(checkpoint, data_dir, tmp_path_factory):
    return export_model(checkpoint, "onnx", tmp_path_factory.mktemp("dyn"), data=data_dir, print_fn=None)


@pytest.fixture(scope="session")
def onnx_legacy(checkpoint, tmp_path_factory):
    return export_model(checkpoint, "onnx", tmp_path_factory.mktemp("leg"), exporter="legacy", print_fn=None)
