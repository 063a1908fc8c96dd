"""Data-parallel training under ``torchrun`` (torch.distributed.run + DistributedDataParallel).

One process per device: gloo on CPU, NCCL on CUDA (``LOCAL_RANK`` picks the GPU). Every rank runs the same recipe
code; what differs is:

- the training batches: each SGD step takes the config's global batch from the epoch's permutation (the same
  per-epoch seed on every rank, so resume stays exact) and rank ``r`` trains on its slice ``[b_r, b_{r+1})``
  (:func:`batch_part`); the augmentation draws are made for the whole global batch and sliced, so every sample gets
  the transform it gets in one process; DDP averages the gradients (a rank's loss is weighted by its share when
  the global batch does not divide evenly);
- inference (pseudo-labels, teacher logits, validation, test scores): rank ``r`` runs a contiguous block of the
  rows (:func:`shard_range`) and the blocks are gathered in rank order (:func:`gather_rows`): each sample exactly
  once, in the input order, the same tensor on every rank;
- files: rank 0 writes checkpoints, resumable state, logs and results (atomically), then every rank waits at a
  barrier (:func:`on_main`). The run folder must be on a file system every node sees.

Frozen teachers are never wrapped in DDP: their logits are computed (sharded, gathered) before the student is
wrapped, and every rank holds the same bytes because they come from one all-gather. Only the trained model is
wrapped (:func:`wrap`); BatchNorm becomes SyncBatchNorm on CUDA with more than one rank (SyncBatchNorm refuses CPU
modules: on CPU the batch statistics are per rank, and the log says so).

Resume lives in the CLI: relaunching the same command (or torchrun's ``--max-restarts``) reloads each stage's
``last.*`` state on every rank. Collectives time out after ``ESCCS_DIST_TIMEOUT`` seconds (default 900).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from esccs.errors import ConfigError

TIMEOUT_ENV = "ESCCS_DIST_TIMEOUT"
#: where ranks drop their one-line error for ``esccs train --nproc`` (set by the launcher)
ERROR_DIR_ENV = "ESCCS_ERROR_DIR"
#: test hook ``STAGE:EPOCH:RANK[:raise]``: that rank dies (``os._exit(17)``) or raises at the start of that epoch
FAULT_ENV = "ESCCS_FAULT"


def launched() -> bool:
    """Whether this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` in the environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_s() -> float:
    """Collective timeout in seconds (``ESCCS_DIST_TIMEOUT``, default 900)."""
    return float(os.environ.get(TIMEOUT_ENV, "900"))


def init(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun set up (no-op outside torchrun); returns ``(rank, world_size)``."""
    if launched() and not dist.is_initialized():
        backend = "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            backend = "nccl"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return rank(), world()


def shutdown() -> None:
    """Leave the process group (end of ``esccs train``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """More than one rank in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    """Number of ranks (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if active():
        dist.barrier()


def on_main(fn: Callable, *args, **kw):
    """Run ``fn`` on rank 0 only (a file write), then a barrier; returns its value on rank 0, None elsewhere."""
    out = fn(*args, **kw) if is_main() else None
    barrier()
    return out


def shard_range(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous block ``[start, stop)`` of ``n`` rows: blocks of ``ceil(n / w)``, the last ones short.

    Nothing is padded or duplicated: the blocks partition ``range(n)`` in order (some are empty when ``n < w``).
    """
    r, w = rank() if r is None else r, world() if w is None else w
    size = -(-n // w)
    return min(r * size, n), min((r + 1) * size, n)


def gather_rows(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate every rank's block of rows (CPU tensors, same keys) in rank order; the same result on all ranks."""
    if not active():
        return parts
    got: list = [None] * world()
    dist.all_gather_object(got, {k: v.cpu() for k, v in parts.items()})
    return {k: torch.cat([g[k] for g in got]) for k in parts}


def all_sum(values: list[float]) -> list[float]:
    """Sum numbers over ranks (float64; unchanged in one process)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def batch_part(batch_size: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s rows ``[start, stop)`` of a global batch.

    ``batch_size // w`` rows each, one more for the first ``batch_size % w`` ranks; a global batch smaller than
    the number of ranks is refused.
    """
    r, w = rank() if r is None else r, world() if w is None else w
    if batch_size < w:
        raise ConfigError(f"batch_size {batch_size} is smaller than the {w} processes: every rank needs a sample")
    base, extra = divmod(batch_size, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


class DDP(DistributedDataParallel):
    """DistributedDataParallel whose unknown attributes fall through to the wrapped module.

    Step functions read attributes of the model they train (a wrapper's ``adv_scale`` or ``centers``); they get
    the DDP module so the gradient all-reduce happens, and still see those attributes.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (their statistics are what the ranks may not share)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The model to train: itself in one process, else DDP (SyncBatchNorm first on CUDA)."""
    if not active():
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[torch.cuda.current_device()])
    return DDP(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The trained module without its DDP shell, SyncBatchNorm layers turned back into BatchNorm2d."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return revert_sync_batchnorm(model)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm by a BatchNorm2d with the same parameters and statistics (in place)."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats).to(next(module.buffers()).device)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def describe(batch_size: int, model: nn.Module, device: torch.device) -> str | None:
    """The log line of a data-parallel stage: global batch, per-rank split, BatchNorm handling (None in one process)."""
    if not active():
        return None
    sizes = [b - a for a, b in (batch_part(batch_size, r) for r in range(world()))]
    split = f"{sizes[0]} per rank" if len(set(sizes)) == 1 else f"{'/'.join(map(str, sizes))} over the ranks"
    bn = ""
    if has_batchnorm(model):
        bn = ("; BatchNorm synchronised (SyncBatchNorm)" if device.type == "cuda" else
              "; BatchNorm statistics are per rank (SyncBatchNorm needs CUDA)")
    return f"global batch {batch_size} = {world()} processes x {split}{bn}"


def fault_point(stage: str, epoch: int) -> None:
    """Test hook (``ESCCS_FAULT=STAGE:EPOCH:RANK[:raise]``): make one rank die or fail at an epoch of a stage."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] == stage and int(parts[1]) == epoch and int(parts[2]) == rank():
        if len(parts) > 3 and parts[3] == "raise":
            raise RuntimeError(f"injected fault in {stage} epoch {epoch}")
        os._exit(17)


def error_line(err: BaseException) -> str:
    """One line for a rank's failure: ``rank R/W: <message>`` (the exception type unless it is ESCCS's own)."""
    from esccs.errors import EsccsError

    msg = (str(err).strip().splitlines() or [""])[0][:300]
    if not isinstance(err, EsccsError):
        msg = f"{type(err).__name__}: {msg}"
    return f"rank {rank()}/{world()}: {msg}"


def record_error(line: str) -> bool:
    """Leave ``line`` for the ``--nproc`` launcher (``ESCCS_ERROR_DIR``); False when there is no launcher."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    path = Path(folder) / f"rank{rank()}.json"
    path.write_text(json.dumps({"time": time.time(), "rank": rank(), "line": line}))
    return True


#: torchrun's own log lines (glog prefix, its OMP banner) and the start of its failure report
_TORCHRUN_LINE = re.compile(r"^([EWI]\d{4} \d\d:\d\d|\*{5,}|Setting OMP_NUM_THREADS|WARNING:torch\.distributed)")
_REPORT_START = re.compile(r"^(Traceback \(most recent call last\)|torch\.distributed\.elastic|=====)")


def launch(nproc: int, args: list[str]) -> int:
    """``esccs ... --nproc N``: run ``python -m torch.distributed.run --standalone --nproc_per_node N -m esccs ARGS``.

    The ranks' output passes through; torchrun's own log lines and failure report are held back, and a failed run
    ends with one line, the error of the rank that failed first (or how it died). Returns the exit status.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "esccs", *args]
    with tempfile.TemporaryDirectory(prefix="esccs-ranks-") as errors:
        proc = subprocess.Popen(cmd, env={**os.environ, ERROR_DIR_ENV: errors}, stderr=subprocess.PIPE, text=True)
        report: list[str] = []
        for line in proc.stderr:
            if report or _REPORT_START.match(line):
                report.append(line)
            elif not _TORCHRUN_LINE.match(line):
                sys.stderr.write(line)
                sys.stderr.flush()
        rc = proc.wait()
        if rc == 0:
            return 0
        lines = sorted((json.loads(p.read_text()) for p in Path(errors).glob("rank*.json")), key=lambda e: e["time"])
    msg = _culprit("".join(report), lines, nproc, rc)
    print(f"Error: {msg}", file=sys.stderr, flush=True)
    return 1


def _culprit(report: str, lines: list[dict], nproc: int, rc: int) -> str:
    """The one line of a failed run.

    A rank that died without a message (killed, crashed, ``os._exit``) is the cause; else the earliest error a
    rank left (the other ranks' errors are the lost connection that follows).
    """
    failed = [(int(r), int(x)) for r, x in re.findall(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", report, re.S)]
    said = {e["rank"] for e in lines}
    dead = [(r, x) for r, x in failed if r not in said and x not in (1, -15)]
    if dead:
        return f"rank {dead[0][0]}/{nproc} died (exit code {dead[0][1]}, no error message)"
    if lines:
        return lines[0]["line"]
    if failed:
        return f"rank {failed[0][0]}/{nproc} failed (exit code {failed[0][1]})"
    return f"torchrun failed (exit status {rc})"


__all__ = ["launch", "init", "shutdown", "active", "rank", "world", "is_main", "barrier", "on_main", "shard_range",
           "gather_rows", "all_sum", "batch_part", "wrap", "unwrap", "describe", "fault_point", "error_line",
           "record_error", "launched"]
