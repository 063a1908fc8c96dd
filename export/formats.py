"""The one export format table: names, aliases, suffixes, GPU need, builder and the options each format accepts.

Everything user-facing reads this table: :func:`esccs.export.export_model` (which calls the row's builder),
``esccs export`` (its flags, defaults and epilog are generated from it), validation and the "did you mean" hints. A
bad option for a format is an error, never silently dropped or rewritten.

How an export is judged (:data:`esccs.export.parity.GOALS`): fp32 must reproduce PyTorch (max |d logit| <= 1e-4,
every top-1 equal, on ``parity_batch`` tiles); a reduced precision (``onnx-int8``, ``trt`` at fp16 / bf16 / int8)
is judged on ``eval_samples`` test tiles by its OA loss against PyTorch fp32 (int8: <= 1 point) and its top-1
agreement (int8: >= 99 %), on at least 101 tiles so that one flip weighs less than 1 %.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esccs.errors import ConfigError
from esccs.export.job import Built, ExportJob
from esccs.export.onnx import build_onnx
from esccs.export.quantize import build_int8
from esccs.export.tensorrt import export_engine, require_tensorrt


@dataclass(frozen=True)
class Option:
    """One export option.

    Attributes:
        name: keyword name (the CLI flag is ``--`` + name with ``-`` for ``_``).
        type: ``bool``, ``int``, ``float``, ``str`` or ``Path``.
        default: value used when the option is not given (``None``: decided at export time, and recorded).
        help: one line for tables and ``--help``.
        choices: allowed values of a ``str`` option.
        minimum: smallest allowed value of a number.
        default_text: what a ``None`` default means, for ``--help``.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    default_text: str | None = None

    @property
    def flag(self) -> str:
        """The CLI flag: ``--`` + name with ``-`` for ``_``."""
        return "--" + self.name.replace("_", "-")

    def shown_default(self) -> str:
        """The default as ``--help`` shows it (``on`` / ``off`` for a boolean)."""
        if self.default is None:
            return self.default_text or "none"
        if self.type is bool:
            return "on" if self.default else "off"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


@dataclass(frozen=True)
class Format:
    """One export format.

    Attributes:
        name: canonical name (``onnx``, ``onnx-int8``, ``trt``).
        aliases: other accepted names.
        suffix: file suffix of the artifact, appended to the checkpoint stem by default.
        gpu: whether building it needs a CUDA GPU.
        description: one line.
        options: the options this format accepts.
        builder: ``build(job) -> Built``: writes and checks the artifact (:mod:`esccs.export.job`).
        backend: the :mod:`esccs.runtime` backend that loads it (it picks the backend by the file's last suffix).
        preflight: called before the checkpoint is loaded (a missing package fails fast).
    """

    name: str
    aliases: tuple[str, ...]
    suffix: str
    gpu: bool
    description: str
    options: tuple[Option, ...] = field(default_factory=tuple)
    builder: Callable[[ExportJob], Built] | None = None
    backend: str = "onnxruntime"
    preflight: Callable[[], Any] | None = None

    def option(self, name: str) -> Option:
        """The option called ``name`` (KeyError if this format has none)."""
        return {o.name: o for o in self.options}[name]


_ONNX_OPTIONS = (
    Option("data", Path, None, "data set folder: real tiles for parity, calibration and evaluation (a synthetic "
                               "index folder uses its target part)",
           default_text="none: a seeded random batch"),
    Option("opset", int, None, "ONNX opset", minimum=13, default_text="18 with dynamo, 17 with legacy"),
    Option("exporter", str, "dynamo", "the torch.onnx exporter; dynamo falls back to legacy with a warning unless "
                                      "asked for explicitly", choices=("dynamo", "legacy")),
    Option("preprocess", bool, True, "bake NaN cleaning, clipping and band normalisation into the graph "
                                     "(the runtime feeds raw DN / dB)"),
    Option("simplify", bool, False, "simplify the graph with onnxslim (must be installed)"),
    Option("dynamic_spatial", bool, True, "dynamic height/width (falls back to the fixed patch size, recorded)"),
    Option("parity_batch", int, 16, "tiles in the fp32 parity batch", minimum=1),
    Option("strict", bool, False, "a failed parity check is an error (the artifact is not written)"),
)
_INT8_OPTIONS = (
    Option("calib_samples", int, 512, "tiles used for INT8 calibration (>= 500 recommended)", minimum=1),
    Option("eval_samples", int, 256, "test tiles the INT8 model is judged on (OA loss, top-1 agreement; >= 101)",
           minimum=1),
    Option("speed_batch", int, 32, "batch size of the INT8 vs fp32 speed comparison", minimum=1),
    Option("speed_reps", int, 10, "timed repetitions (median reported)", minimum=1),
)
_TRT_OPTIONS = (
    Option("precision", str, "fp32", "engine precision, baked into the ONNX first (strongly typed build)",
           choices=("fp32", "fp16", "bf16", "int8")),
    Option("batch_min", int, 1, "smallest batch of the optimisation profile", minimum=1),
    Option("batch_opt", int, 16, "batch TensorRT tunes for", minimum=1),
    Option("batch_max", int, 64, "largest batch of the optimisation profile", minimum=1),
    Option("workspace", float, 4.0, "builder workspace limit in GiB", minimum=0.0),
    Option("timing_cache", Path, None, "timing-cache file, read if present and written back",
           default_text="<engine stem>.timing.cache"),
    Option("version_compatible", bool, False, "engine runs on later TensorRT versions (embeds a lean runtime; "
                                              "slower; loading must allow host code)"),
    Option("hardware_compat", str, "none", "run on other GPUs: ampere+ or same-cc (fewer tactics; slower)",
           choices=("none", "ampere+", "same-cc")),
    Option("weak_typing", bool, False, "TensorRT < 11 only: legacy FP16/INT8 builder flags instead of a "
                                       "strongly typed network"),
    Option("calib_samples", int, 512, "tiles used for INT8 calibration (precision int8)", minimum=1),
    Option("eval_samples", int, 256, "test tiles a reduced precision (fp16, bf16, int8) is judged on", minimum=1),
)

FORMATS: tuple[Format, ...] = (
    Format("onnx", ("onnx-fp32",), ".onnx", False, "ONNX fp32, two inputs, dynamic batch, metadata",
           _ONNX_OPTIONS, build_onnx),
    Format("onnx-int8", ("int8", "onnx_int8", "onnxint8"), ".int8.onnx", False,
           "ONNX static INT8 (QDQ, per-channel) for CPU onnxruntime; needs --data for calibration",
           _ONNX_OPTIONS + _INT8_OPTIONS, build_int8),
    Format("trt", ("tensorrt", "engine", "trt-engine"), ".engine", True,
           "TensorRT 10/11 engine (strongly typed; precision baked into the ONNX); needs tensorrt and CUDA",
           _ONNX_OPTIONS + _TRT_OPTIONS, export_engine, "tensorrt", require_tensorrt),
)

_BY_NAME: dict[str, Format] = {n: f for f in FORMATS for n in (f.name, *f.aliases)}
ALL_OPTIONS: dict[str, Option] = {o.name: o for f in FORMATS for o in f.options}


def did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for a close match, else ``"; choose one of a, b, c"``."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; choose one of {', '.join(choices)}"


def get_format(name: str) -> Format:
    """Resolve a format name or alias (case-insensitive).

    Raises:
        ConfigError: unknown name, with a "did you mean" hint.
    """
    key = str(name).strip().lower()
    if key not in _BY_NAME:
        raise ConfigError(f"unknown export format {name!r}" + did_you_mean(key, sorted(_BY_NAME)))
    return _BY_NAME[key]


def _check_value(fmt: Format, opt: Option, value: Any) -> Any:
    where = f"option {opt.name!r} of format {fmt.name!r}"
    if opt.type is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where} must be a path, got {value!r}")
        return Path(value)
    ok = isinstance(value, opt.type) and not (opt.type is int and isinstance(value, bool))
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where} must be {opt.type.__name__}, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{where} is {value!r}" + did_you_mean(str(value), list(opt.choices)))
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{where} must be >= {opt.minimum:g}, got {value!r}")
    return value


def validate_options(fmt: Format, opts: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``opts`` against ``fmt``'s table and fill the defaults.

    ``None`` values count as "not given". The returned dict has every option of the format plus ``explicit``, the
    set of names the caller gave.

    Raises:
        ConfigError: an option the format does not take (naming the formats that do), a typo (with a suggestion),
            a wrong type or value, or an inconsistent combination (batch range, opset with exporter).
    """
    allowed = {o.name: o for o in fmt.options}
    given = {k: v for k, v in opts.items() if v is not None}
    for key in given:
        if key in allowed:
            continue
        if key in ALL_OPTIONS:
            users = [f.name for f in FORMATS if any(o.name == key for o in f.options)]
            raise ConfigError(f"option {key!r} is not valid for format {fmt.name!r} (only for {', '.join(users)})")
        raise ConfigError(f"unknown option {key!r} for format {fmt.name!r}" + did_you_mean(key, sorted(allowed)))
    out: dict[str, Any] = {name: opt.default for name, opt in allowed.items()}
    out.update({k: _check_value(fmt, allowed[k], v) for k, v in given.items()})
    out["explicit"] = frozenset(given)
    _check_combinations(fmt, out)
    return out


def _quantised(o: dict[str, Any]) -> bool:
    """Whether the export calibrates INT8 (a format with ``calib_samples``, at precision int8 where it has one)."""
    return "calib_samples" in o and o.get("precision", "int8") == "int8"


def _check_combinations(fmt: Format, o: dict[str, Any]) -> None:
    if _quantised(o) and o["data"] is None:
        raise ConfigError(f"format {fmt.name!r}" + (" with precision int8" if "precision" in o else "") +
                          " needs data=DIR (--data): calibration tiles from a data set")
    if o["opset"] is not None:
        lo, hi = (18, 23) if o["exporter"] == "dynamo" else (13, 20)
        if not lo <= o["opset"] <= hi:
            raise ConfigError(f"opset {o['opset']} is outside {lo}..{hi} for the {o['exporter']} exporter")
        if _quantised(o) and o["opset"] > 20:
            raise ConfigError(f"opset {o['opset']}: onnxruntime static INT8 quantisation needs opset <= 20")
    if "batch_min" in o:
        if not o["batch_min"] <= o["batch_opt"] <= o["batch_max"]:
            raise ConfigError(f"batch range must satisfy batch_min <= batch_opt <= batch_max, got "
                              f"{o['batch_min']} / {o['batch_opt']} / {o['batch_max']}")
    if o.get("weak_typing") and o.get("precision") == "bf16":
        raise ConfigError("weak_typing supports fp32, fp16 and int8 only (bf16 needs the strongly typed path)")


def default_output(checkpoint: str | os.PathLike, fmt: Format, out: str | os.PathLike | None) -> Path:
    """Where the artifact goes: ``out``, inside ``out`` for a folder (or a new name without suffix), else by the ckpt.

    Raises:
        ConfigError: a file name whose suffix the runtime would not load with this format's backend.
    """
    ckpt = Path(checkpoint)
    stem = ckpt.name[: -len(ckpt.suffix)] if ckpt.suffix else ckpt.name
    if out is None:
        return ckpt.with_name(stem + fmt.suffix)
    out = Path(out)
    folder = out.is_dir() or (not out.exists() and not out.suffix)
    path = out / (stem + fmt.suffix) if folder else out
    from esccs.runtime.model import SUFFIX_BACKEND

    if SUFFIX_BACKEND.get(path.suffix.lower()) != fmt.backend:
        ends = sorted(k for k, v in SUFFIX_BACKEND.items() if v == fmt.backend)
        raise ConfigError(f"{path}: {fmt.name} artifacts must end in {' or '.join(ends)} (the runtime picks its "
                          "backend by the suffix)")
    return path


@dataclass(frozen=True)
class TableOption:
    """One option of the whole table (``esccs export`` has one flag per option).

    Attributes:
        option: the option (its first row in the table).
        formats: the formats that take it.
        defaults: its default in each of those formats.
    """

    option: Option
    formats: tuple[str, ...]
    defaults: dict[str, Any]

    def shown_default(self) -> str:
        """The default for ``--help``: one value, or one per format where they differ."""
        if len({repr(d) for d in self.defaults.values()}) == 1:
            return self.option.shown_default()
        by = {f: next(o for o in get_format(f).options if o.name == self.option.name) for f in self.formats}
        return ", ".join(f"{f} {by[f].shown_default()}" for f in self.formats)


def table_options() -> list[TableOption]:
    """Every option of :data:`FORMATS` once, in table order, with the formats that take it and their defaults."""
    seen: dict[str, TableOption] = {}
    for f in FORMATS:
        for o in f.options:
            if o.name in seen:
                t = seen[o.name]
                seen[o.name] = TableOption(t.option, (*t.formats, f.name), {**t.defaults, f.name: o.default})
            else:
                seen[o.name] = TableOption(o, (f.name,), {f.name: o.default})
    return list(seen.values())


def format_table() -> str:
    """The format table as Markdown (README, ``--help``)."""
    rows = ["| format | aliases | suffix | GPU | options |", "|---|---|---|---|---|"]
    common = {o.name for o in _ONNX_OPTIONS}
    for f in FORMATS:
        extra = [o.name for o in f.options if o.name not in common]
        opts = "common" + (", " + ", ".join(extra) if extra else "")
        rows.append(f"| `{f.name}` | {', '.join(f.aliases)} | `{f.suffix}` | {'yes' if f.gpu else 'no'} | {opts} |")
    return "\n".join(rows)
