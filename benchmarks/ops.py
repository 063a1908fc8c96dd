"""Speed of the fused ops against eager PyTorch and ``torch.compile``: forward + backward, memory, bandwidth.

Liger-style providers side by side in one run (``fused`` = the Triton kernel, ``eager`` = the pure-PyTorch
reference, ``compile`` = ``torch.compile`` of that reference), nanoGPT-style burn-in then a timed stage, and the
result as a fraction of a physical limit: bytes that must cross HBM at least once / time, against the device's peak.

On CPU the Triton kernels run only in Triton's interpreter (numpy, one program at a time), which says nothing about
speed: the ``fused`` rows are marked and not timed unless ``time_interpreter=True``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from esccs.ops._dispatch import interpreting, set_fused, triton_available

OPS = ("irm_kd", "unimodal_kd", "grad_scale")
PROVIDERS = ("fused", "eager", "compile")
#: GPU goal of the fused-ops issue: fused >= 2x eager and >= 70 % of the device's peak HBM bandwidth.
GOAL_SPEEDUP, GOAL_HBM_FRACTION = 2.0, 0.70
#: Peak HBM bandwidth in bytes/s by device-name fragments (all must appear, case-insensitive); first match wins.
PEAK_HBM = (
    (("H200",), 4.8e12),
    (("H100", "PCIE"), 2.0e12),
    (("H100", "SXM"), 3.35e12),
    (("H100", "HBM3"), 3.35e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (("A100", "80GB"), 2.0e12),
    (("A100", "40GB"), 1.555e12),
)
INTERPRETER = "interpreter (correctness only, not timed)"


@dataclass
class Case:
    """One op at one batch size: a forward + backward closure per provider and the minimum HBM traffic."""

    run: dict[str, Callable[[], None]]
    nbytes: int


def peak_hbm_bandwidth(device_name: str) -> float | None:
    """Peak HBM bandwidth in bytes/s of a CUDA device by name, or ``None`` when the device is not in the table."""
    name = device_name.upper()
    for parts, bw in PEAK_HBM:
        if all(p in name for p in parts):
            return bw
    return None


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _fwd_bwd(fn: Callable, args: tuple, leaves: Iterable[torch.Tensor], pick: Callable = lambda o: o,
             grad: torch.Tensor | None = None, fused: bool = False) -> Callable[[], None]:
    """A closure running ``pick(fn(*args)).backward(grad)`` with fresh ``.grad`` on ``leaves``."""
    leaves = list(leaves)

    def run() -> None:
        for t in leaves:
            t.grad = None
        with set_fused(fused):
            out = pick(fn(*args))
        out.backward(grad)

    return run


def _providers(fused: Callable, ref: Callable, compiled: Callable, args: tuple, leaves: list, **kw) -> dict:
    return {"fused": _fwd_bwd(fused, args, leaves, fused=True, **kw), "eager": _fwd_bwd(ref, args, leaves, **kw),
            "compile": _fwd_bwd(compiled, args, leaves, **kw)}


def _lazy_compile(cache: dict, name: str, fn: Callable) -> Callable:
    """``torch.compile(fn)`` built on first call (compilation lands in the warm-up), shared across batch sizes."""

    def call(*args, **kwargs):
        if name not in cache:
            cache[name] = torch.compile(fn, dynamic=False)
        return cache[name](*args, **kwargs)

    return call


def _logits(n: int, b: int, k: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    return [3 * torch.randn(b, k, device=device, dtype=dtype) for _ in range(n)]


def _unimodal_kd_case(b: int, k: int, d: int, device: str, dtype: torch.dtype, compiled: dict) -> Case:
    """Branch KD: z_o, z_s (B, K) students; a_o, a_s (B, K) teachers; mean loss."""
    from esccs.ops.unimodal_kd import unimodal_kd, unimodal_kd_reference

    z_o, z_s, a_o, a_s = _logits(4, b, k, device, dtype)
    leaves = [z_o.requires_grad_(), z_s.requires_grad_()]
    ref = _lazy_compile(compiled, "unimodal_kd", unimodal_kd_reference)
    run = _providers(unimodal_kd, unimodal_kd_reference, ref, (z_o, z_s, a_o, a_s), leaves)
    # read 4 x (B, K) once, write dz_o, dz_s (B, K) once, write the scalar loss
    return Case(run, _nbytes(z_o, z_s, a_o, a_s) + _nbytes(z_o, z_s) + 4)


def _irm_kd_case(b: int, k: int, d: int, device: str, dtype: torch.dtype, compiled: dict) -> Case:
    """IRM-regulated three-teacher KD: z (B, K) student; u, a_o, a_s (B, K) teachers."""
    from esccs.ops.irm_kd import irm_kd, irm_kd_reference  # written in parallel: import only when benchmarked

    z, u, a_o, a_s = _logits(4, b, k, device, dtype)
    z.requires_grad_()
    ref = _lazy_compile(compiled, "irm_kd", irm_kd_reference)
    run = _providers(irm_kd, irm_kd_reference, ref, (z, u, a_o, a_s), [z], pick=lambda o: o.loss)
    with torch.no_grad():  # the per-row outputs (pi, rho, k, ...) must be written once too
        outs = [t for t in irm_kd_reference(z, u, a_o, a_s) if isinstance(t, torch.Tensor)]
    return Case(run, _nbytes(z, u, a_o, a_s) + _nbytes(z) + _nbytes(*outs))


def _grad_scale_case(b: int, k: int, d: int, device: str, dtype: torch.dtype, compiled: dict) -> Case:
    """Gradient scaling at the fusion point: features (B, feat_dim), k (B,)."""
    from esccs.ops.grad_scale import grad_scale, grad_scale_reference

    x = torch.randn(b, d, device=device, dtype=dtype, requires_grad=True)
    scale = torch.rand(b, device=device)
    dy = torch.randn(b, d, device=device, dtype=dtype)
    ref = _lazy_compile(compiled, "grad_scale", grad_scale_reference)
    run = _providers(grad_scale, grad_scale_reference, ref, (x, scale), [x], grad=dy)
    # forward is a view (no traffic); backward reads dy (B, D) and k (B,), writes dx (B, D)
    return Case(run, 2 * _nbytes(dy) + _nbytes(scale))


CASES = {"irm_kd": _irm_kd_case, "unimodal_kd": _unimodal_kd_case, "grad_scale": _grad_scale_case}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(run: Callable[[], None], device: str, min_time: float = 0.2, warmup: int = 3,
            min_iters: int = 5, max_iters: int = 10_000) -> list[float]:
    """Per-call times in ms after ``warmup`` calls, repeating until ``min_time`` seconds and ``min_iters`` calls.

    GPU: CUDA events around each call, with L2 flushed before it (so the bytes come from HBM). CPU:
    ``time.perf_counter_ns``.
    """
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        run()
    _sync(device)
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device=device) if cuda else None  # 256 MB > any L2
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() < t_end):
        if cuda:
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter_ns()
            run()
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def peak_memory_mb(run: Callable[[], None], device: str) -> float | None:
    """Peak allocated CUDA memory (MB) during one call, live inputs included; ``None`` on CPU."""
    if not device.startswith("cuda"):
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _fused_status(device: str, time_interpreter: bool) -> str | None:
    """Why the fused provider is not timed here, or ``None`` when it is."""
    if not triton_available():
        return "unavailable: triton is not installed"
    if device.startswith("cuda"):
        return None
    if not interpreting():
        return "unavailable: no GPU and TRITON_INTERPRET=1 was not set before the kernels were imported"
    return None if time_interpreter else INTERPRETER


def _measure(case: Case, provider: str, device: str, min_time: float, status: str | None) -> dict:
    """Time one provider on one case and derive bandwidth figures; ``status`` set means "not timed"."""
    row: dict = {"provider": provider, "status": status or "timed", "bytes_moved": case.nbytes}
    if status is not None:
        return row
    try:
        mem = peak_memory_mb(case.run[provider], device)
        times = time_ms(case.run[provider], device, min_time=min_time)
    except Exception as e:  # noqa: BLE001 - one failing provider must not stop the run (Ultralytics-style)
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return row
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    med = statistics.median(times)
    row.update(iters=len(times), median_ms=med, p10_ms=q[0], p90_ms=q[8], peak_mem_mb=mem,
               gbps=case.nbytes / (med * 1e-3) / 1e9)
    if device.startswith("cuda") and (peak := peak_hbm_bandwidth(torch.cuda.get_device_name(device))):
        row["hbm_fraction"] = row["gbps"] * 1e9 / peak
    return row


def _add_speedups(rows: list[dict]) -> None:
    """Fill ``speedup_vs_eager`` / ``speedup_vs_compile`` of fused rows from the same run's medians."""
    by_key = {(r["op"], r["batch"], r["provider"]): r for r in rows}
    for r in rows:
        if r["provider"] != "fused" or "median_ms" not in r:
            continue
        for other in ("eager", "compile"):
            o = by_key.get((r["op"], r["batch"], other), {})
            if "median_ms" in o:
                r[f"speedup_vs_{other}"] = o["median_ms"] / r["median_ms"]


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_ops(device: str | None = None, batch_sizes: Iterable[int] = (256, 1024, 4096), n_classes: int = 10,
              feat_dim: int = 512, dtype: torch.dtype = torch.float32, providers: Iterable[str] = PROVIDERS,
              min_time: float = 0.2, ops: Iterable[str] = OPS, time_interpreter: bool = False) -> list[dict]:
    """Time forward + backward of each op x batch size x provider and return one row (dict) per combination.

    Args:
        device: ``cuda`` or ``cpu``; default ``cuda`` when available.
        batch_sizes: batch sizes ``B``.
        n_classes: classes ``K`` of the logits ``(B, K)`` (``irm_kd``, ``unimodal_kd``).
        feat_dim: feature width ``D`` of ``grad_scale``'s ``(B, D)`` input (one modality at the fusion point).
        dtype: dtype of logits and features.
        providers: any of ``fused`` (Triton), ``eager`` (reference), ``compile`` (``torch.compile`` of it).
        min_time: seconds each timed stage lasts at least.
        ops: any of ``irm_kd``, ``unimodal_kd``, ``grad_scale``.
        time_interpreter: on CPU, time the fused kernels in Triton's interpreter anyway (meaningless for speed).

    Returns:
        Rows with ``op, batch, provider, status, device, device_name, dtype, bytes_moved`` and, when timed,
        ``iters, median_ms, p10_ms, p90_ms, peak_mem_mb`` (``None`` on CPU), ``gbps``, ``hbm_fraction`` (GPU with
        a known peak), ``speedup_vs_eager`` / ``speedup_vs_compile`` (fused rows).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    providers, compiled, rows = [p for p in providers if p in PROVIDERS], {}, []
    base = {"device": device, "device_name": _device_name(device), "dtype": str(dtype).removeprefix("torch."),
            "n_classes": n_classes, "feat_dim": feat_dim}
    for op in ops:
        for b in batch_sizes:
            torch.manual_seed(0)
            try:
                case = CASES[op](b, n_classes, feat_dim, device, dtype, compiled)
            except ImportError as e:
                rows += [{**base, "op": op, "batch": b, "provider": p, "status": f"unavailable: {e}"}
                         for p in providers]
                continue
            for p in providers:
                status = _fused_status(device, time_interpreter) if p == "fused" else None
                rows.append({**base, "op": op, "batch": b, **_measure(case, p, device, min_time, status)})
    _add_speedups(rows)
    return rows


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v * scale, spec)


def format_ops_table(rows: list[dict]) -> str:
    """Render :func:`bench_ops` rows as a Markdown table (one line per op x batch x provider)."""
    head = ("| op | batch | provider | median ms | p10 ms | p90 ms | peak MB | MB moved | GB/s | % HBM peak "
            "| x eager | x compile | status |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        timed = "median_ms" in r
        cells = [r["op"], str(r["batch"]), r["provider"],
                 *(_fmt(r.get(k), ".3f") for k in ("median_ms", "p10_ms", "p90_ms")),
                 _fmt(r.get("peak_mem_mb"), ".1f") if timed else "", _fmt(r.get("bytes_moved"), ".3f", 1e-6),
                 _fmt(r.get("gbps"), ".2f") if timed else "",
                 _fmt(r.get("hbm_fraction"), ".1f", 100) if timed else "",
                 _fmt(r.get("speedup_vs_eager"), ".2f") if "speedup_vs_eager" in r else "",
                 _fmt(r.get("speedup_vs_compile"), ".2f") if "speedup_vs_compile" in r else "", r["status"]]
        lines.append("| " + " | ".join(c if timed or i < 3 or i >= 7 else "" for i, c in enumerate(cells)) + " |")
    return "\n".join(lines)


def ops_goals(rows: list[dict]) -> list[str]:
    """One line per timed fused row against the GPU goals (fused >= 2x eager, >= 70 % of peak HBM bandwidth)."""
    goal = f"GPU goal: fused >= {GOAL_SPEEDUP:g}x eager and >= {GOAL_HBM_FRACTION:.0%} of peak HBM bandwidth"
    fused = [r for r in rows if r["provider"] == "fused" and "median_ms" in r and r["device"].startswith("cuda")]
    if not fused:
        return [f"{goal}: not checked (no fused rows timed on a GPU in this run)"]
    out = [goal]
    for r in fused:
        sp, frac = r.get("speedup_vs_eager"), r.get("hbm_fraction")
        sp_txt = "n/a" if sp is None else f"{sp:.2f}x eager ({'met' if sp >= GOAL_SPEEDUP else 'not met'})"
        fr_txt = ("unknown peak" if frac is None
                  else f"{frac:.0%} of HBM peak ({'met' if frac >= GOAL_HBM_FRACTION else 'not met'})")
        out.append(f"  {r['op']} B={r['batch']}: {sp_txt}, {fr_txt}")
    return out
