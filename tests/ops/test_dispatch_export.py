"""The dispatcher: switch, env variable, export path; a model using the fused ops exports to standard ONNX ops."""

import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from esccs.models import create_model
from esccs.ops import _dispatch, irm_kd, set_fused, unimodal_kd
from esccs.ops.irm_kd.function import IRMKDFunction


class TrainGraph(nn.Module):
    """A step-2 training graph in one forward: dual model with grad_scale, irm_kd and unimodal_kd losses."""

    def __init__(self):
        super().__init__()
        self.net = create_model("dual_resnet10", width=8, patch_size=32)

    def forward(self, optical, sar, u, a_o, a_s, k):
        out = self.net(optical, sar, k=k)
        dec = irm_kd(out["logits"], u, a_o, a_s)
        uni = unimodal_kd(out["logits_o"], out["logits_s"], a_o, a_s)
        return dec.loss + 0.5 * uni, dec.pi, out["probs"]


def _inputs(b=3, k=10):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 10, 32, 32, generator=g), torch.randn(b, 2, 32, 32, generator=g),
            torch.randn(b, k, generator=g), torch.randn(b, k, generator=g), torch.randn(b, k, generator=g),
            torch.rand(b, 2, generator=g))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_model_using_the_fused_ops_exports_to_standard_onnx(tmp_path, dynamo, monkeypatch):
    assert _dispatch.interpreting()  # the fused path is live in this test session ...
    calls = []
    monkeypatch.setattr(IRMKDFunction, "apply", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    model = TrainGraph().eval()
    path = tmp_path / "g.onnx"
    for p in model.parameters():
        p.requires_grad_(True)  # export with live autograd, as from a training script
    kw = {"dynamo": True} if dynamo else {"dynamo": False, "opset_version": 17}
    torch.onnx.export(model, _inputs(), str(path), input_names=["optical", "sar", "u", "a_o", "a_s", "k"], **kw)
    assert not calls  # ... but export took the reference
    graph = onnx.load(str(path)).graph
    domains = {n.domain for n in graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not any("triton" in n.op_type.lower() or "grad" in n.op_type.lower() for n in graph.node)


def test_set_fused_switch_and_context():
    assert _dispatch.fused_enabled()
    with set_fused(False):
        assert not _dispatch.fused_enabled()
        assert not _dispatch.use_fused("irm_kd", torch.zeros(2))
    assert _dispatch.fused_enabled()
    assert _dispatch.use_fused("irm_kd", torch.zeros(2))  # interpreter on in tests


def test_reference_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    assert not _dispatch.use_fused("irm_kd", torch.zeros(2))


@pytest.mark.parametrize("value,expected", [("0", "False"), ("off", "False"), ("1", "True")])
def test_env_variable_switches_fused_off(value, expected):
    code = "from esccs.ops import fused_enabled; print(fused_enabled())"
    env = {"ESCCS_FUSED": value, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
