"""Data-parallel training with real torchrun processes (gloo on CPU): equivalence with one process, sharded
inference, a 2-process pipeline, a rank killed then the command relaunched, a failing rank's one-line error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from esccs.data.synth import SynthConfig, synthesize
from esccs.train import distributed as ddp

TIMEOUT = 900  # generous: CI machines may be shared; a tiny run takes ~10 s on an idle 2-core machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1", ddp.TIMEOUT_ENV: "60", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]

# A BN-free probe trained by the real Trainer (augmentation, random erasing, warm-up, clipping): one process with
# global batch B, or N torchrun ranks splitting the same global batch.
PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch, torch.nn.functional as F
    from torch import nn
    from safetensors.torch import save_file
    from esccs.train import distributed as ddp
    from esccs.train.config import LoopConfig
    from esccs.train.loop import Trainer

    ddp.init("cpu")
    out, batch, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    n = batch * steps + 3  # the remainder is dropped, as in one process
    x, y = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 4))

    def step(m, b):
        z = m(b["optical"])
        return F.cross_entropy(z, b["target"]), z, {}

    cfg = LoopConfig(epochs=2, batch_size=batch, select="last", erase_p=0.5, lr=0.05, lr_head=0.05)
    lo, hi = torch.full((3,), -2.0), torch.full((3,), 2.0)
    Trainer(model, {"optical": x, "target": y}, step, cfg, out, "probe", False, (lo, hi)).fit()
    if ddp.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "params.safetensors"))
    ddp.shutdown()
""")

# Sharded inference: each rank records the rows its model saw; every rank gets all outputs back in order.
SHARDS = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    from esccs.train import distributed as ddp
    from esccs.train.stages import predict

    ddp.init("cpu")

    class Seen(nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = []
        def forward(self, x):
            self.rows += x[:, 0].long().tolist()
            return x * 2

    report = {}
    for n in (7, 1, 9):
        m = Seen()
        x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
        out = predict(m, x, batch=2)["logits"]
        report[n] = {"seen": m.rows, "out": out[:, 0].tolist()}
    with open(sys.argv[1] + f"/rank{ddp.rank()}.json", "w") as f:
        json.dump(report, f)
    ddp.shutdown()
""")


def _run(cmd, env=None, timeout=TIMEOUT, cwd=None):
    return subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _probe(tmp_path, name, nproc, batch, steps=5):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cmd = ([sys.executable] if nproc == 0 else [*TORCHRUN, f"--nproc_per_node={nproc}"])
    r = _run([*cmd, str(script), str(out), str(batch), str(steps)])
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(str(out / "params.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [16, 15])  # 15: uneven split 8 + 7, each rank's loss weighted by its share
def test_two_ranks_match_one_process(tmp_path, batch):
    one = _probe(tmp_path, "one", 0, batch)
    two = _probe(tmp_path, "two", 2, batch)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"max |param diff| 2 ranks vs 1 process after 10 steps: {diff:.3g}")
    assert diff < 1e-6
    moved = max(float((one[k] - v).abs().max()) for k, v in _initial().items())
    assert moved > 1e-2  # the probe trained: the comparison is not between two untouched models


def _initial():
    from torch import nn

    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(6, 4))
    return m.state_dict()


def test_batch_parts_partition_the_global_batch():
    for b in (1, 2, 7, 15, 16):
        for w in range(1, b + 1):
            parts = [ddp.batch_part(b, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == b
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:], strict=False))
            assert max(p[1] - p[0] for p in parts) - min(p[1] - p[0] for p in parts) <= 1
    with pytest.raises(Exception, match="smaller than the 4 processes"):
        ddp.batch_part(3, 0, 4)
    for n in (0, 1, 7, 9):
        for w in (1, 2, 3, 4):
            rows = [i for r in range(w) for i in range(*ddp.shard_range(n, r, w))]
            assert rows == list(range(n))


@pytest.mark.slow
def test_sharded_inference_returns_each_sample_once_in_order(tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(SHARDS)
    r = _run([*TORCHRUN, "--nproc_per_node=2", str(script), str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    for n in ("7", "1", "9"):
        seen = reports[0][n]["seen"] + reports[1][n]["seen"]
        assert seen == list(range(int(n)))  # each row run once, blocks in rank order
        assert min(len(rep[n]["seen"]) for rep in reports) >= int(n) // 2 - 1  # the work is split
        for rep in reports:
            assert rep[n]["out"] == [2.0 * i for i in range(int(n))]


# ------------------------------------------------------------------------------------------------ esccs train
TINY = ["--arch", "resnet10", "--width", "8", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "d"
    synthesize(SynthConfig(out=out, samples=192, size=24, patches_per_scene=12, workers=1, seed=3), progress=False)
    cfg = out.parent / "tiny.yaml"
    cfg.write_text("step1:\n  min_per_class: 2\nsource:\n  batch_size: 16\naux:\n  batch_size: 16\n"
                   "target:\n  batch_size: 16\n")
    return out, cfg


def _esccs(*args, env=None):
    return _run([sys.executable, "-m", "esccs", "train", *args], env=env)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The tiny ESCCS pipeline with 1 process and with `esccs train --nproc 2`."""
    d, cfg = data
    root = tmp_path_factory.mktemp("ddp_runs")
    out = {}
    for n in (1, 2):
        r = _esccs("--data", str(d), "--config", str(cfg), "--out", str(root / f"n{n}"), "--method", "esccs",
                   "--nproc", str(n), *TINY)
        assert r.returncode == 0, r.stderr[-3000:]
        out[n] = (root / f"n{n}", r)
    return out


@pytest.mark.slow
def test_two_process_pipeline_matches_one_process(runs, data):
    from esccs.models import load_checkpoint
    from esccs.train.run import evaluate_checkpoint

    one, two = runs[1][0], runs[2][0]
    assert "global batch 16 = 2 processes x 8 per rank; BatchNorm statistics are per rank" in runs[2][1].stdout
    acc = {}
    for run in (one, two):
        res = json.loads((run / "results" / "esccs.json").read_text())
        acc[run.name] = res["overall"]["oa"]
        for stage in ("source", "aux_optical", "aux_sar", "target"):
            model, mcfg, extra = load_checkpoint(run / stage / "model.safetensors")
            assert extra["epochs"] == 2
            assert len((run / stage / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs, one writer
        again = evaluate_checkpoint(run / "target" / "model.safetensors", data[0], progress=False)
        assert again["overall"]["oa"] == pytest.approx(res["overall"]["oa"], abs=1e-9)
    print(f"target OA: 1 process {acc['n1']:.3f}, 2 processes {acc['n2']:.3f}")
    assert abs(acc["n1"] - acc["n2"]) <= 0.15


@pytest.mark.slow
def test_killed_rank_then_relaunch_resumes_at_the_next_epoch(runs, data, tmp_path):
    d, cfg = data
    out = tmp_path / "run"
    args = ["--data", str(d), "--config", str(cfg), "--out", str(out), "--method", "esccs", "--nproc", "2", *TINY]
    dead = _esccs(*args, env={**ENV, ddp.FAULT_ENV: "aux_optical:1:1"})  # rank 1 dies at epoch 2 of aux_optical
    assert dead.returncode != 0
    assert "rank 1/2 died (exit code 17" in dead.stderr.strip().splitlines()[-1]
    assert json.loads((out / "aux_optical" / "last.json").read_text())["epoch"] == 0
    assert not (out / "aux_optical" / "model.safetensors").exists()
    again = _esccs(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (out / "aux_optical" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]  # epoch 0 kept, epoch 1 run after the relaunch
    assert json.loads((out / "aux_optical" / "last.json").read_text())["epoch"] == 1
    ref = runs[2][0]  # the uninterrupted 2-process run: the resumed stages end on the same weights
    for stage in ("aux_optical", "target"):
        a, b = (load_file(str(r / stage / "model.safetensors")) for r in (out, ref))
        assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-5, stage


@pytest.mark.slow
def test_failing_rank_ends_the_run_with_its_error_in_one_line(data, tmp_path):
    d, cfg = data
    r = _esccs("--data", str(d), "--config", str(cfg), "--out", str(tmp_path / "run"), "--method", "source-only",
               "--nproc", "2", *TINY, env={**ENV, ddp.FAULT_ENV: "source:0:1:raise"})
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if "Error" in line or "Traceback" in line]
    assert errors == ["Error: rank 1/2: RuntimeError: injected fault in source epoch 0"], r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm over NCCL needs 2 CUDA devices")
def test_sync_batchnorm_on_two_gpus(data, tmp_path):
    d, cfg = data
    r = _esccs("--data", str(d), "--config", str(cfg), "--out", str(tmp_path / "run"), "--method", "source-only",
               "--device", "cuda", "--nproc", "2", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BatchNorm synchronised (SyncBatchNorm)" in r.stdout


def test_cli_help_names_torchrun():
    r = _run([sys.executable, "-m", "esccs", "train", "--help"], timeout=60, cwd=Path(__file__).parent)
    assert r.returncode == 0 and "torch.distributed.run" in r.stdout and "--nproc" in r.stdout
