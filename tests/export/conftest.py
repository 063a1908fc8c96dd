"""Shared fixtures: a small synthetic data set, a tiny dual checkpoint trained for a few steps, and exports of it.

The data set's target part has 200 test tiles (90 % of 760 samples, 10 of its 34 scenes held out), so INT8 is
judged on enough tiles that one flip weighs < 1 %. The model is width 16: at width 8 the logits of a model trained
this briefly are so close that 2 to 5 % of the test tiles flip under INT8 (measured), which says nothing about the
export. Dynamo exports take seconds, so the artifacts are built once per
session and reused by read-only tests.
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
    return create_model("dual_resnet10", width=16, patch_size=32, classes="sen12ms_cloud", normalization="sen12ms")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d"
    synthesize(SynthConfig(out=out, samples=760, size=32, patches_per_scene=20, source_fraction=0.1, workers=1),
               progress=False)
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, data_dir):
    """A tiny dual model trained for 100 steps on the target train tiles (separated logits: INT8 is meaningful)."""
    model = tiny_model()
    cfg = model.esccs_config
    tiles = read_tiles(open_tiles(data_dir, cfg), cfg, 1000, split="train")
    xo, xs = torch.from_numpy(tiles.normalized["optical"]), torch.from_numpy(tiles.normalized["sar"])
    y = torch.from_numpy(np.maximum(tiles.labels, 0))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(100):  # 2 of 200 test tiles flip under INT8, OA unchanged; 1 calibration tile: 42 flip
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

