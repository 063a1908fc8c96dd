"""``esccs train`` and ``esccs eval``: the multi-step transfer, its baselines, and their evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import click

from esccs.cli._options import int_list

METHOD_HELP = ("esccs (our recipe), esccs-paper (docs/method.md's recipe), source-only, optical-only, sar-only, kd-s, "
               "tlf, tlf-late, kdhn, spl, ttl, cycit, gdl, oracle-dual, oracle-optical, oracle-sar (upper bounds "
               "trained with target labels), a comma list, or all")
# Spelled out (not read from esccs.train.methods) so `esccs --help` does not import torch; tests/test_cli.py
# checks that both lists name every registered method and ablation.
ABLATION_HELP = ("no-irm, irm-a, irm-b, no-filter, maxprob-filter, step2-filter, source-ref, single-step, "
                 "no-cloud-step1, no-source-clouds, hard-clouded, teacher-vote, no-rounds, one-round, relabel-both, "
                 "mixture, no-radiometric, no-calibration, a comma list, or all")


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data set from `esccs data synth` (or with the same source/ and target/ parts).")
@click.option("--out", default="runs/esccs", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: one sub-folder per stage, results/, config.yaml. Existing stages are reused.")
@click.option("--method", default=None, help=METHOD_HELP + " [default: the config's `method`, esccs]")
@click.option("--ablation", default=None, help=ABLATION_HELP + " [default: the config's `ablation`, none]")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config (keys of esccs.train.config.TrainConfig; unknown keys are errors).")
@click.option("--epochs", type=int, default=None, help="Epochs of every stage (overrides the config).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--seeds", callback=int_list, default=None,
              help="Several seeds, e.g. 0,1,2: one run per seed in OUT/seed<K>/.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Training device.")
@click.option("--arch", default=None, help="Backbone family: resnet10, resnet18 (default), resnet34.")
@click.option("--width", type=int, default=None, help="Channels of the first ResNet stage (64 standard; 16 on CPU).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine (one per GPU with --device cuda): starts "
                   "`python -m torch.distributed.run --standalone --nproc_per_node N -m esccs train ...`.")
@click.pass_context
def train(ctx: click.Context, data: Path, out: Path, method: str, ablation: str, config_path: Path | None,
          epochs: int | None, seed: int | None, seeds, device: str | None, arch: str | None, width: int | None,
          quiet: bool, nproc: int) -> None:
    """Train a method (every stage it needs) and evaluate it on the target test split.

    \b
    Stages: source (step 0) -> aux_optical, aux_sar (step 1, filtered pseudo-labels) -> target (step 2, IRM).
    Target labels are never used for training; they score the results (RUN/results/<method>.json).
    Interrupted? Run the same command again: finished stages are skipped, the current one resumes.

    \b
    Data-parallel (every stage, every method): `esccs train --nproc N ...` on one machine, or
    `torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT] -m esccs train ...`; the config's
    batch is the global batch, split across the processes.
    """
    from esccs.train import distributed as ddp

    if nproc > 1 and not ddp.launched():
        raise SystemExit(ddp.launch(nproc, ["train", *_args_without(ctx, "nproc")]))
    if not ddp.launched():
        return _train(data, out, method, ablation, config_path, epochs, seed, seeds, device, arch, width, quiet)
    try:
        _train(data, out, method, ablation, config_path, epochs, seed, seeds, device, arch, width, quiet)
    except Exception as e:  # under torchrun: the rank's error in one line (the launcher prints the first one)
        line = ddp.error_line(e)
        if ddp.record_error(line):
            raise SystemExit(1) from None
        raise click.ClickException(line) from None
    finally:
        ddp.shutdown()


def _args_without(ctx: click.Context, skip: str) -> list[str]:
    """The command's options as given (defaults left out), less ``skip``: what the ranks are started with."""
    args: list[str] = []
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.name == skip or value is None or value is False or \
                ctx.get_parameter_source(p.name) == click.core.ParameterSource.DEFAULT:
            continue
        if getattr(p, "is_flag", False):
            args.append(p.opts[0])
        else:
            args += [p.opts[0], ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    return args


def _train(data: Path, out: Path, method: str, ablation: str, config_path: Path | None, epochs: int | None,
           seed: int | None, seeds, device: str | None, arch: str | None, width: int | None, quiet: bool) -> None:
    from esccs.train import distributed as ddp
    from esccs.train.config import load_config
    from esccs.train.methods import resolve_methods
    from esccs.train.run import load_banks
    from esccs.train.run import train as run_train

    overrides = {"data": str(data), "out": str(out), "device": device, "model.arch": arch, "model.width": width,
                 "method": method, "ablation": ablation}
    if epochs is not None:
        overrides.update({"source.epochs": epochs, "aux.epochs": epochs, "target.epochs": epochs})
    banks = None
    for s in seeds or [seed]:
        cfg = load_config(config_path, {**overrides, "seed": s,
                                        "out": str(out / f"seed{s}") if seeds else str(out)})
        methods, ablations = resolve_methods(cfg.method, cfg.ablation)
        ddp.init(cfg.device)  # under torchrun: join the process group (gloo on CPU, NCCL on CUDA)
        quiet = quiet or not ddp.is_main()
        banks = banks or load_banks(cfg, progress=not quiet)
        if ddp.is_main():
            n = f", {ddp.world()} processes" if ddp.world() > 1 else ""
            click.echo(f"== {', '.join(methods + [f'ablation:{a}' for a in ablations])} -> {cfg.out} "
                       f"(seed {cfg.seed}{n})")
        run_train(cfg, methods, ablations, progress=not quiet, banks=banks)
    if ddp.is_main():
        click.echo(f"done: results in {out}; next: esccs eval {out} --table accuracy.md")


@click.command(name="eval")
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.argument("more", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data set to evaluate a checkpoint on (its target test split).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON to write (checkpoint mode), default: print a summary.")
@click.option("--table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run-folder mode: write the methods x strata table (Markdown) and plots here.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Checkpoint mode: also write a confusion-matrix PNG here.")
@click.option("--notes", default="",
              help="Run-folder mode: a paragraph under the table's title (data, sizes, commands).")
def evaluate(target: Path, more: tuple[Path, ...], data: Path | None, out: Path | None, table: Path | None,
             plots: Path | None, notes: str) -> None:
    """Evaluate a checkpoint (TARGET = .safetensors) or summarise run folders (TARGET = RUN).

    \b
    esccs eval RUN/target/model.safetensors --data DIR --out eval.json   # OA, kappa, F1, confusion, by stratum
    esccs eval RUN [RUN ...] --table accuracy.md                        # all rows, runs grouped by data option
    """
    from esccs.errors import ConfigError
    from esccs.io.atomic import write_json
    from esccs.train import report
    from esccs.train.evaluate import summary_line

    targets = (target, *more)
    if target.is_dir():
        comp = report.write_table(list(targets), table or target / "accuracy.md", notes=notes)
        for option, sec in comp.items():
            click.echo(f"== {option} data, {len(sec['runs'])} runs")
            for m, row in sorted(sec["table"].items(), key=lambda kv: -kv[1]["oa"][0]):
                iv = sec["paired"].get(m, {}).get("all")
                ci = f"  ESCCS-row {100 * iv['diff']:+.1f} [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}]" if iv else ""
                click.echo(f"{m + (' (oracle)' if row['oracle'] else ''):30s} OA {100 * row['oa'][0]:5.1f} ± "
                           f"{100 * row['oa'][1]:.1f}  " + "  ".join(f"{s} {100 * row[f'oa:{s}'][0]:5.1f}"
                                                                     for s in report.STRATA) + ci)
        click.echo(f"wrote {table or target / 'accuracy.md'}")
        return
    if data is None:
        raise ConfigError(f"{target}: evaluating a checkpoint needs --data DIR")
    from esccs.train.run import evaluate_checkpoint

    res = evaluate_checkpoint(target, data)
    click.echo(summary_line(res["method"], res))
    if plots:
        png = report.plot_confusion(res, Path(plots) / f"{res['method']}_confusion.png")
        click.echo(f"confusion matrix: {png}")
    if out:
        write_json(out, res)
        click.echo(f"wrote {out}")
    else:
        click.echo(json.dumps({k: res[k] for k in ("overall", "strata")}, default=str)[:2000])
