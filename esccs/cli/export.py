"""``esccs export``: a checkpoint -> ONNX / INT8 ONNX / TensorRT engine, with metadata and a parity report.

Flags map one to one onto the options of :func:`esccs.export.export_model`; a flag left out is not passed, so the
format table's defaults apply and a flag that the chosen format does not take is an error (never ignored).
"""

from __future__ import annotations

from pathlib import Path

import click

_EPILOG = """\b
Formats (aliases):
  onnx       (onnx-fp32)              ONNX fp32, inputs optical + sar, dynamic batch, metadata
  onnx-int8  (int8)                   static INT8 QDQ for CPU onnxruntime; needs --data (calibration)
  trt        (tensorrt, engine)       TensorRT 10/11 engine; needs tensorrt + a CUDA GPU
\b
Options per format: all take --data --opset --exporter --preprocess/--no-preprocess --simplify --strict;
onnx-int8 adds --calib-samples --eval-samples; trt adds --precision --batch-min/--batch-opt/--batch-max
--workspace --timing-cache --version-compatible --hardware-compat --weak-typing.
\b
Examples:
  esccs export runs/target.safetensors --format onnx --data data/
  esccs export runs/target.safetensors --format int8 --data data/ --out exports/
  esccs export runs/target.safetensors --format trt --precision fp16 --batch-max 256
"""


@click.command(epilog=_EPILOG)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "-f", "fmt", default="onnx", show_default=True, help="onnx, onnx-int8 or trt (aliases ok).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Artifact file or folder (default: beside the checkpoint).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Data set folder: real tiles for parity and calibration (a synthetic index folder uses its target "
                   "part).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18 dynamo / 17 legacy).")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default=None,
              help="torch.onnx exporter [default: dynamo, falling back to legacy with a warning].")
@click.option("--preprocess/--no-preprocess", default=None,
              help="Bake NaN cleaning, clipping and band normalisation into the graph (feed raw DN / dB) "
                   "[default: on].")
@click.option("--simplify", is_flag=True, default=None, help="Simplify the graph with onnxslim (must be installed).")
@click.option("--calib-samples", type=int, default=None, help="INT8 calibration tiles [128].")
@click.option("--eval-samples", type=int, default=None, help="Labelled tiles for the INT8 accuracy report [256].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None,
              help="trt: engine precision, baked into the ONNX [fp32].")
@click.option("--batch-min", type=int, default=None, help="trt: profile min batch [1].")
@click.option("--batch-opt", type=int, default=None, help="trt: profile opt batch [16].")
@click.option("--batch-max", type=int, default=None, help="trt: profile max batch [64].")
@click.option("--workspace", type=float, default=None, help="trt: builder workspace in GiB [4].")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="trt: timing-cache file.")
@click.option("--version-compatible", is_flag=True, default=None, help="trt: engine runs on later TensorRT (slower).")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere+", "same-cc"]), default=None,
              help="trt: engine runs on other GPUs (slower) [none].")
@click.option("--weak-typing", is_flag=True, default=None, help="trt < 11 only: legacy FP16/INT8 builder flags.")
@click.option("--strict", is_flag=True, default=None, help="A failed parity check is an error; nothing is written.")
def export(checkpoint: Path, fmt: str, out: Path | None, **opts) -> None:
    """Export CHECKPOINT (a dual-branch .safetensors + .json) and check it against PyTorch.

    Writes the artifact, a `<artifact>.parity.json` report (max |d logit|, top-1 agreement, modality-weight and
    probability differences on real tiles with --data, else on a seeded random batch), prints a success line with
    path, size and time, and ready-to-run next steps. Metadata (classes, bands, normalisation, patch size, model
    config, checkpoint SHA-256) is stored in the ONNX metadata_props / the engine's JSON sidecar.
    """
    from esccs.export import export_model

    given = {k: v for k, v in opts.items() if v is not None}
    export_model(checkpoint, fmt, out, print_fn=click.echo, **given)
