"""The export front door: :func:`export_model` (checkpoint -> ONNX / INT8 ONNX / TensorRT engine) and its result.

Every export loads the checkpoint in eval mode and calls its format's builder (:data:`esccs.export.FORMATS`), which
writes the artifact through a temporary file renamed only after the ONNX check and the artifact's own check ran
through :mod:`esccs.runtime` (so a failure leaves nothing half-written); the report goes into a JSON sidecar and one
block is printed: success line with path, size and time, the verdict, and ready-to-run next steps.
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
from esccs.export.errors import ExportError
from esccs.export.formats import default_output, get_format, validate_options
from esccs.export.job import ExportJob
from esccs.io.atomic import write_json


@dataclass
class ExportResult:
    """What an export produced.

    Attributes:
        format: canonical format name.
        path: the artifact.
        size_bytes: its size.
        seconds: wall time of the whole export (load, export, checks, reports).
        parity: the verdict's report (also in ``parity_path``): fp32 against PyTorch on the parity batch, a reduced
            precision on the evaluation tiles (:data:`esccs.export.parity.GOALS`).
        parity_path: the parity JSON sidecar.
        sidecars: every other file written beside the artifact (engine sidecar, timing cache).
        info: exporter, opset, dynamic axes, node count, notes, options used.
        speed: INT8 vs fp32 speed (``onnx-int8`` only).
        data: the data set used for parity / calibration / evaluation, if any.
    """

    format: str
    path: Path
    size_bytes: int
    seconds: float
    parity: dict[str, Any]
    parity_path: Path
    sidecars: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] | None = None
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

    def failure_line(self) -> str | None:
        """The one loud line of a check that did not pass (``None`` when it passed)."""
        p = self.parity
        if p["passed"]:
            return None
        if p["verdict"] == "inconclusive":
            return (f"!! {p['precision'].upper()} CHECK INCONCLUSIVE: too few evaluation tiles to judge the "
                    "quantised model (use --strict to make this an error)")
        if p["precision"] == "fp32":
            return ("!! PARITY CHECK FAILED: the exported model does not match PyTorch (use --strict to make this an "
                    "error)")
        return (f"!! {p['precision'].upper()} CHECK FAILED: the {p['precision']} model loses accuracy against PyTorch "
                "fp32 (use --strict to make this an error)")

    def report(self) -> str:
        """The printed block: success line, the verdict (stated once), speed, notes, next steps."""
        from esccs.export.parity import parity_line
        from esccs.export.quantize import speed_line

        lines = [self.success_line(), ("  " if self.parity["passed"] else "!! ") + parity_line(self.parity)]
        failure = self.failure_line()
        if failure:
            lines.append(failure)
        if self.speed:
            lines.append("  " + speed_line(self.speed))
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
        The :class:`ExportResult` (artifact, verdict, INT8 speed, sidecars).

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
    if fmt.preflight is not None:
        fmt.preflight()
    model, cfg, sha = _load(checkpoint)
    ds, tiles = _tiles(o, cfg)
    built = fmt.builder(ExportJob(model, cfg, sha, o, path, ds, tiles, print_fn))
    from esccs.export.parity import parity_path

    p_path = parity_path(path)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in o.items() if k != "explicit"}
    write_json(p_path, {"artifact": path.name, "format": fmt.name, "checkpoint": str(checkpoint),
                        "checkpoint_sha256": sha, "parity": built.parity, "speed": built.speed, "options": options,
                        "export": {k: v for k, v in built.info.items() if k != "metadata"}})
    result = ExportResult(fmt.name, path, path.stat().st_size, time.perf_counter() - t0, built.parity, p_path,
                          built.sidecars, {**built.info, "options": options}, built.speed,
                          Path(o["data"]) if o["data"] else None)
    if print_fn is not None:
        print_fn(result.report())
    return result
