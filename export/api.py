"""The export front door: :func:`export_model` (checkpoint -> ONNX / INT8 ONNX / TensorRT engine) and its result.

Every export loads the checkpoint in eval mode, writes its artifact through a temporary file that is renamed only
after the ONNX check and the parity check ran (so a failure leaves nothing half-written), writes the parity report
as a JSON sidecar, prints one success line with path, size and time, and ready-to-run next steps.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esccs.errors import ConfigError
from esccs.export.errors import ExportError, ParityError
from esccs.export.formats import default_output, get_format, validate_options
from esccs.io.atomic import atomic_path, write_json


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        format: canonical format name.
        path: the artifact.
        size_bytes: its size.
        seconds: wall time of the whole export (load, export, checks, reports).
        parity: the parity report (also in ``parity_path``).
        parity_path: the parity JSON sidecar.
        sidecars: every other file written beside the artifact (engine sidecar, timing cache).
        info: exporter, opset, dynamic axes, node count, notes, options used.
        int8: INT8 accuracy and speed report (``onnx-int8`` only).
        data: the data set used for parity / calibration, if any.
    """

    format: str
    path: Path
    size_bytes: int
    seconds: float
    parity: dict[str, Any]
    parity_path: Path
    sidecars: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] | None = None
    data: Path | None = None

    def success_line(self) -> str:
        """``Export OK: onnx -> path (1.23 MB) in 4.5 s``."""
        return (f"Export OK: {self.format} -> {self.path} ({self.size_bytes / 1e6:.2f} MB) in {self.seconds:.1f} s")

    def next_steps(self) -> str:
        """Ready-to-run commands for the exported model."""
        model = shlex.quote(str(self.path))
        data = shlex.quote(str(self.data)) if self.data else "DIR"
        return ("Next steps:\n"
                f"  esccs infer TILES --model {model}\n"
                f"  esccs benchmark --model {model} --data {data}")

    def report(self) -> str:
        """The printed block: success line, parity, INT8 report, notes, next steps."""
        from esccs.export.parity import parity_line
        from esccs.export.quantize import int8_line

        lines = [self.success_line(), ("  " if self.parity["passed"] else "!! ") + parity_line(self.parity)]
        if not self.parity["passed"]:
            lines.append("!! PARITY CHECK FAILED: the exported model does not match PyTorch (use --strict to make "
                         "this an error)")
        if self.int8:
            lines.append("  " + int8_line(self.int8))
        lines += [f"  note: {n}" for n in self.info.get("notes", [])]
        lines.append(f"  parity report: {self.parity_path}")
        lines += [f"  sidecar: {p}" for p in self.sidecars]
        return "\n".join(lines + [self.next_steps()])


def _check_writable(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise ExportError(f"{path}: output path exists and is not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ExportError(f"{path}: output folder is not writable ({err.strerror or type(err).__name__})") from None


def _load(checkpoint: str | os.PathLike):
    """Load a dual-branch checkpoint (eval mode) and the SHA-256 of its weights file."""
    from esccs.models import checkpoint_sha256, load_checkpoint

    path = Path(checkpoint)
    model, cfg, _ = load_checkpoint(path)
    if cfg.family != "dual":
        raise ConfigError(f"checkpoint {path} is a {cfg.name} classifier; esccs export takes the dual-branch target "
                          "model (dual_resnet*, inputs optical + sar)")
    weights = path
    if path.suffix == ".json":
        weights = path.with_name(json.loads(path.read_text())["weights"]["file"])
    return model.eval(), cfg, checkpoint_sha256(weights)


def _tiles(o: dict[str, Any], cfg):
    """``(dataset or None, parity tiles)``: real tiles spread over ``data``, else a seeded random batch."""
    from esccs.export.tiles import open_tiles, random_tiles, read_tiles

    if o["data"] is None:
        return None, random_tiles(cfg, o["parity_batch"])
    ds = open_tiles(o["data"], cfg)
    return ds, read_tiles(ds, cfg, o["parity_batch"])


def _parity_sizes(n: int) -> tuple[int, ...]:
    return tuple(sorted({1, min(3, n), n}))


def _onnx_fp32(model, cfg, sha, o, path: Path, tiles) -> tuple[dict, dict]:
    from esccs.export.onnx import write_onnx
    from esccs.export.parity import check_parity

    with atomic_path(path) as tmp:
        info = write_onnx(model, cfg, tmp, o, sha)
        parity = check_parity(tmp, model, tiles, o["preprocess"], "fp32", _parity_sizes(len(tiles)))
        _strict(o, parity)
    return info, parity


def _strict(o: dict[str, Any], parity: dict[str, Any]) -> None:
    from esccs.export.parity import parity_line

    if o["strict"] and not parity["passed"]:
        raise ParityError("strict: " + parity_line(parity) + "; nothing written")


def _onnx_int8(model, cfg, sha, o, path: Path, ds, tiles) -> tuple[dict, dict, dict]:
    from esccs.export.onnx import build_metadata, finish_model, write_onnx
    from esccs.export.parity import check_parity
    from esccs.export.quantize import int8_report, quantize_int8
    from esccs.export.tiles import read_tiles

    calib = read_tiles(ds, cfg, o["calib_samples"], split="train")
    evaluation = read_tiles(ds, cfg, o["eval_samples"], split="test")
    with tempfile.TemporaryDirectory(prefix="esccs-export-") as tmpdir:
        fp32 = Path(tmpdir) / "fp32.onnx"
        info = write_onnx(model, cfg, fp32, o, sha)
        info["fp32_parity"] = check_parity(fp32, model, tiles, o["preprocess"], "fp32", _parity_sizes(len(tiles)))
        with atomic_path(path) as tmp:
            recipe = quantize_int8(fp32, tmp, calib, o["preprocess"])
            meta = {**build_metadata(cfg, info, sha, o["preprocess"], "int8"), "quantization": json.dumps(recipe)}
            info.update(finish_model(tmp, meta, simplify=False), quantization=recipe)
            parity = check_parity(tmp, model, tiles, o["preprocess"], "int8", _parity_sizes(len(tiles)))
            _strict(o, parity)
            report = int8_report(fp32, tmp, evaluation, tiles.take(o["speed_batch"]), o["preprocess"],
                                 o["speed_reps"])
    return info, parity, report


def export_model(checkpoint: str | os.PathLike, format: str = "onnx", out: str | os.PathLike | None = None,
                 print_fn: Callable[[str], Any] | None = print, **opts: Any) -> ExportResult:
    """Export a dual-branch checkpoint and check the result against PyTorch.

    Args:
        checkpoint: a ``.safetensors`` checkpoint (with its ``.json`` config) of a ``dual_*`` model.
        format: ``onnx``, ``onnx-int8`` or ``trt`` (aliases: :data:`esccs.export.formats.FORMATS`).
        out: the artifact path, or a folder for it (default: beside the checkpoint, the format's suffix).
        print_fn: where the report goes (``None``: nowhere).
        **opts: options of the format (``data``, ``opset``, ``exporter``, ``preprocess``, ``simplify``,
            ``strict``, ...); a bad option for the format is an error.

    Returns:
        The :class:`ExportResult` (artifact, parity, INT8 report, sidecars).

    Raises:
        ConfigError: unknown format or option, bad value or combination, a classifier checkpoint.
        DataError: missing or corrupt checkpoint, missing config, empty or unreadable data folder.
        ExportError: output not writable, exporter or checker failure, parity failure with ``strict``.
        DependencyMissingError: tensorrt (``trt``) or another optional package not installed.

    Examples:
        >>> r = export_model("runs/target.safetensors", "onnx", data="data/")  # doctest: +SKIP
        >>> r.parity["max_abs_logit_diff"] <= 1e-4  # doctest: +SKIP
        True
    """
    t0 = time.perf_counter()
    fmt = get_format(format)
    o = validate_options(fmt, opts)
    path = default_output(checkpoint, fmt, out)
    _check_writable(path)
    if fmt.name == "trt":
        from esccs.export.tensorrt import require_tensorrt

        require_tensorrt()
    model, cfg, sha = _load(checkpoint)
    ds, tiles = _tiles(o, cfg)
    int8 = None
    sidecars: list[Path] = []
    if fmt.name == "onnx":
        info, parity = _onnx_fp32(model, cfg, sha, o, path, tiles)
    elif fmt.name == "onnx-int8":
        info, parity, int8 = _onnx_int8(model, cfg, sha, o, path, ds, tiles)
    else:
        from esccs.export.tensorrt import export_engine

        info, parity, sidecars = export_engine(model, cfg, sha, o, path, ds, tiles, print_fn)
    from esccs.export.parity import parity_path

    p_path = parity_path(path)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in o.items() if k != "explicit"}
    write_json(p_path, {"artifact": path.name, "format": fmt.name, "checkpoint": str(checkpoint),
                        "checkpoint_sha256": sha, "parity": parity, "int8": int8, "options": options,
                        "export": {k: v for k, v in info.items() if k != "metadata"}})
    result = ExportResult(fmt.name, path, path.stat().st_size, time.perf_counter() - t0, parity, p_path, sidecars,
                          {**info, "options": options}, int8, Path(o["data"]) if o["data"] else None)
    if print_fn is not None:
        print_fn(result.report())
    return result
