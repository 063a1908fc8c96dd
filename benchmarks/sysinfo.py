"""The environment block of a benchmark report, and memory probes (host RSS, torch allocator, NVML).

Peak host RSS is per backend in one process: Linux lets a process reset its own high-water mark
(``/proc/self/clear_refs`` <- ``5``, since Linux 4.0), so each backend's peak starts from the RSS it found. Where the
reset is refused the process-wide ``ru_maxrss`` is reported and marked as such.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

LIBRARIES = ("numpy", "torch", "onnxruntime", "onnx", "rasterio", "matplotlib", "esccs", "tensorrt", "psutil",
             "pynvml")
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GDAL_NUM_THREADS")


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process in MB (``VmRSS``), ``None`` off Linux."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark; ``False`` where the kernel refuses (then peaks are cumulative)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS in MB since the last :func:`reset_peak_rss` (``VmHWM``), else the process-wide ``ru_maxrss``."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


def nvml_used_mb(index: int = 0) -> float | None:
    """Device memory in use (MB) on GPU ``index`` via NVML, ``None`` without pynvml or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used
        return used / 2**20
    except Exception:  # noqa: BLE001 - NVML errors only make the figure unavailable
        return None


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except OSError:
        pass
    return []


def _version(name: str) -> str | None:
    if name == "esccs":
        import esccs

        return esccs.__version__
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_info() -> dict[str, Any] | None:
    """GPU name, memory, compute capability and driver (through torch and nvidia-smi), ``None`` without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    info = {"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1), "capability": f"{p.major}.{p.minor}",
            "cuda": torch.version.cuda, "count": torch.cuda.device_count()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    return info


def thread_settings() -> dict[str, Any]:
    """Core budget and thread settings: cpu_count, affinity, torch threads (if imported), thread env variables."""
    out: dict[str, Any] = {"os_cpu_count": os.cpu_count()}
    try:
        out["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        out["affinity_cores"] = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    out.update({k: os.environ.get(k) for k in THREAD_VARS})
    return out


def environment() -> dict[str, Any]:
    """Everything a reader needs to interpret the figures: machine, load, GPU, library versions, threads."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(), "cpu_flags": _cpu_flags(), "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "load_average_1_5_15": load, "gpu": gpu_info(), "threads": thread_settings(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "peak_rss_method": "VmHWM reset per backend" if reset_peak_rss() else "ru_maxrss (process-wide, cumulative)",
    }
