"""``esccs export``: a checkpoint -> ONNX / INT8 ONNX / TensorRT engine, with metadata and a checked verdict.

The flags, their help, their defaults and the epilog are generated from the format table
(:data:`esccs.export.formats.FORMATS`): one flag per option of the table, named ``--`` + the option's name, showing
the table's default and the formats that take it. A flag left out is not passed, so the table's defaults apply, and a
flag that the chosen format does not take is an error (never ignored).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import click

from esccs.export.formats import FORMATS, TableOption, table_options

EXAMPLES = """\
  esccs export runs/target.safetensors --format onnx --data data/
  esccs export runs/target.safetensors --format int8 --data data/ --out exports/
  esccs export runs/target.safetensors --format trt --precision fp16 --batch-max 256"""


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent + "    ", break_on_hyphens=False)


def _epilog() -> str:
    """Formats with aliases and their own options, the pass rules, examples (``\\b``: click keeps the lines)."""
    from esccs.export.parity import goal_text

    common = {o.name for o in FORMATS[0].options}
    lines = ["\b", "Formats (aliases): description; options beyond the common ones"]
    for f in FORMATS:
        extra = [o.flag for o in f.options if o.name not in common]
        lines += _wrap(f"{f.name} ({', '.join(f.aliases)}): {f.description}"
                       + (f"; adds {' '.join(extra)}" if extra else ""))
    lines += ["\b", "Common options (every format):", *_wrap(" ".join(o.flag for o in FORMATS[0].options))]
    lines += ["\b", "Pass rules (a failed check prints '!!'; --strict makes it an error and writes nothing):",
              *_wrap(f"fp32: {goal_text('fp32')} against PyTorch, on --parity-batch tiles"),
              *_wrap(f"int8, fp16, bf16: judged on --eval-samples tiles of the test split; int8: {goal_text('int8')}; "
                     f"fp16: {goal_text('fp16')}; bf16: {goal_text('bf16')}"),
              "\b", "Examples:", EXAMPLES]
    return "\n".join(lines)


def _click_option(t: TableOption):
    """The click option of one table option (default ``None``: not given, so the table's default applies)."""
    o = t.option
    formats = "" if len(t.formats) == len(FORMATS) else f"formats: {', '.join(t.formats)}; "
    help_text = f"{o.help[0].upper()}{o.help[1:]} [{formats}default: {t.shown_default()}]"
    if o.type is bool:
        return click.option(f"{o.flag}/--no-{o.flag[2:]}", o.name, default=None, help=help_text)
    if o.choices:
        kind = click.Choice(list(o.choices))
    elif o.type is Path:
        kind = click.Path(path_type=Path)
    else:
        kind = o.type
    return click.option(o.flag, o.name, type=kind, default=None, help=help_text)


def _with_table_options(fn):
    for t in reversed(table_options()):
        fn = _click_option(t)(fn)
    return fn


_NAMES = ", ".join(f.name for f in FORMATS)
_ALIASES = "; ".join(f"{f.name}: {', '.join(f.aliases)}" for f in FORMATS)


@click.command(epilog=_epilog())
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "-f", "fmt", default=FORMATS[0].name, show_default=True,
              help=f"{_NAMES} (aliases {_ALIASES}).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Artifact file or folder [default: beside the checkpoint, with the format's suffix].")
@_with_table_options
def export(checkpoint: Path, fmt: str, out: Path | None, **opts) -> None:
    """Export CHECKPOINT (a dual-branch .safetensors + .json) and check it through the runtime.

    Writes the artifact, a `<artifact>.parity.json` report, prints a success line with path, size and time, the
    verdict (fp32: parity against PyTorch; INT8 / fp16 / bf16: OA loss and top-1 agreement on the evaluation tiles)
    and ready-to-run next steps. Metadata (classes, bands, normalisation, patch size, model config, checkpoint
    SHA-256) is stored in the ONNX metadata_props / the engine's JSON sidecar.
    """
    from esccs.export import export_model

    given = {k: v for k, v in opts.items() if v is not None}
    export_model(checkpoint, fmt, out, print_fn=click.echo, **given)
