"""``make gpu-check``: the prepared GPU check (issue 15), one command on a bare CUDA machine, inside 8 minutes in all.

Runs, each step under coreutils ``timeout`` with its own budget (so one hung step cannot eat the rest; the budgets add
up to at most :data:`TOTAL_BUDGET_S`, and a global deadline shortens a step when earlier ones ran long):

1. what the machine is (``nvidia-smi``; Python, torch, triton, onnx, onnxruntime versions and providers);
2. the install, without touching torch: ``pip install --no-index --find-links .gpu-wheels`` of the missing runtime
   dependencies (wheels made on the development machine by ``make gpu-wheels``) under a constraints file that pins
   the machine's own torch, triton, onnx, onnxruntime and numpy, then ``pip install --no-deps -e .`` of this package;
   torch's version and location are checked unchanged afterwards, and the fused kernels compiled, not interpreted;
3. the GPU tests (``pytest -m gpu``: the fused ops compiled by Triton for the GPU);
4. ``esccs benchmark ops --device cuda`` (fused ops vs eager vs torch.compile) and ``esccs benchmark train``;
5. ``esccs data synth`` tiles at 128 and 256 px; a random-weight dual ResNet-18 at each size, exported to ONNX;
6. the backend grid (``esccs benchmark``) at each size: torch eager fp32 and bf16 autocast, onnxruntime and TensorRT
   (rows with their error where onnxruntime-gpu / TensorRT are not installed), and, last because they compile,
   torch.compile and CUDA graphs (bf16);
7. reader figures: ``esccs benchmark read`` when this version has it, else ``esccs benchmark infer`` (which one ran
   is recorded), and ``esccs infer`` end to end on the GPU with 1..N reader workers.

Everything lands in ``benchmarks/results/gpu_<device>/``: ``commands.sh`` (every command as run, with its rc and
seconds), ``steps.json``, ``logs/NN_<step>.log`` (each command's whole output), the benchmarks' own JSON / reports,
and ``summary.md`` (steps and headline figures). With ``--export-to DIR`` (``gpu_check.sh`` passes ``$OUT`` when it
is set) the folder is also packed into ``DIR/gpu_<device>.tar.gz`` after every step, so a cut-off run still returns
what it measured.

``--dry-run`` prints the step list (budgets and commands) and runs nothing; it needs no GPU. This file imports only
the standard library at the top: it runs before the package is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
#: the issue's limit for the whole check, install included (seconds)
TOTAL_BUDGET_S = 480
#: seconds kept back from the last step for writing the summary and the archive
RESERVE_S = 3
#: a step is skipped rather than started with less than this left
MIN_STEP_S = 4
#: ``timeout -k``: seconds between TERM and KILL for a step that outlives its budget
KILL_S = 2
#: packages of the GPU machine's own image that the install must not change
PROTECTED = ("torch", "triton", "onnx", "onnxruntime", "numpy")
ARCH, WIDTH, SIZES = "dual_resnet18", 64, (128, 256)
#: synthetic samples per size; 10 % source scenes, so the target part holds ~720 tiles and its test split >= 128
SAMPLES, SOURCE_FRACTION, GRID_BATCH = 800, 0.1, 128
#: at most this many reader-worker counts for the end-to-end runs (1, 2, ..., N)
MAX_WORKER_COUNTS = 5


@dataclass
class Step:
    """One command of the check.

    Attributes:
        name: short id (``logs/NN_<name>.log``).
        argv: the command.
        budget_s: its ``timeout`` in seconds.
        cli: the ``esccs`` subcommand path it runs (``("benchmark", "ops")``), for ``--help`` checks; ``None`` else.
        needs: steps that must have succeeded first (otherwise this one is skipped).
        collect: ``(source, name)`` files copied into the results folder after the step (``esccs infer`` summaries).
    """

    name: str
    argv: list[str]
    budget_s: int
    cli: tuple[str, ...] | None = None
    needs: tuple[str, ...] = ()
    collect: tuple[tuple[str, str], ...] = ()


@dataclass
class Config:
    """Where things are and what this machine offers (the CLI's options).

    ``samples``, ``width`` and ``scale`` (a factor on every step's budget) exist for local smoke runs on a CPU.
    """

    device: str = "cuda"
    python: str = sys.executable
    esccs: str = ""
    wheels: Path = ROOT / ".gpu-wheels"
    work: Path = Path("/tmp/esccs-gpu-check")
    results: Path = ROOT / "benchmarks" / "results" / "gpu_unknown"
    install: bool = True
    cores: int = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    read_available: bool = False
    budget_s: int = TOTAL_BUDGET_S
    export_to: Path | None = None
    samples: int = SAMPLES
    width: int = WIDTH
    scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.esccs:
            self.esccs = str(Path(sysconfig.get_path("scripts")) / "esccs")


def slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia_h200`` (the results folder's device part)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unknown"


def worker_counts(cores: int) -> list[int]:
    """Reader-worker counts 1, 2, 4, ... up to ``cores`` (``cores`` itself included), at most five of them."""
    counts = sorted({1 << k for k in range(max(cores, 1).bit_length()) if 1 << k <= cores} | {max(cores, 1)})
    if len(counts) > MAX_WORKER_COUNTS:
        counts = sorted({1, 2, max(cores // 4, 1), max(cores // 2, 1), cores})
    return counts


def step_timeout(budget_s: float, elapsed_s: float, total_s: float) -> float:
    """A step's timeout: its budget, cut to what the global deadline leaves; ``0`` = do not start it."""
    left = total_s - RESERVE_S - KILL_S - elapsed_s
    if left < MIN_STEP_S:
        return 0
    return min(float(budget_s), left)


def _ckpt(cfg: Config, size: int) -> Path:
    return cfg.work / "models" / f"{ARCH}_w{cfg.width}_{size}px.safetensors"


def _pip(cfg: Config, *args: str) -> list[str]:
    return [cfg.python, "-m", "pip", "install", "--disable-pip-version-check", "--no-cache-dir", "--no-index",
            "--find-links", str(cfg.wheels), "--constraint", str(cfg.results / "protected-constraints.txt"), *args]


def reader_step(cfg: Config) -> Step:
    """Reader figures: ``esccs benchmark read`` when available, else ``esccs benchmark infer``."""
    es, data, r = cfg.esccs, str(cfg.work / "data_256px"), cfg.results
    if cfg.read_available:  # its own SEN12MS-layout tiles; 1, 2 and all cores (warm-up reads 64 x N triples each)
        workers = ",".join(str(w) for w in sorted({1, min(2, cfg.cores), cfg.cores}))
        return Step("reader-read", [es, "benchmark", "read", "--sizes", "256", "--paths", "rasterio,fast",
                                    "--workers", workers, "--no-threads-too", "--rounds", "3", "--min-time", "0.3",
                                    "--scratch", str(cfg.work / "bench_read"), "--out", str(r / "read_256px.json")],
                    30, ("benchmark", "read"), ("check-install",))
    return Step("reader-infer", [es, "benchmark", "infer", "--data", data, "--model", str(_ckpt(cfg, 256)),
                                 "--tiles", "1000", "--batch-size", str(GRID_BATCH), "--workers", str(cfg.cores),
                                 "--min-time", "1", "--scratch", str(cfg.work / "bench_infer"),
                                 "--out", str(r / "infer_256px.json")], 30, ("benchmark", "infer"),
                ("synth-256", "models"))


def grid_step(cfg: Config, size: int, kind: str) -> Step:
    """The backend grid at one size: ``eager`` (torch fp32 + bf16, onnxruntime, TensorRT) or ``compiled`` (bf16)."""
    backends, precisions, budget = {"eager": ("torch,onnxruntime,tensorrt", "fp32,bf16", 22),
                                    "compiled": ("torch,torch-compile,torch-cudagraphs", "bf16", 56)}[kind]
    onnx = _ckpt(cfg, size).with_suffix(".onnx")
    return Step(f"grid-{kind}-{size}", [
        cfg.esccs, "benchmark", "--model", str(onnx), "--data", str(cfg.work / f"data_{size}px"),
        "--device", cfg.device, "--backends", backends, "--precisions", precisions, "--batch-sizes", str(GRID_BATCH),
        "--eval-samples", str(GRID_BATCH), "--e2e-batch-sizes", "none", "--min-time", "1", "--warmup", "0.3",
        "--out", str(cfg.results / f"grid_{size}px_{kind}")], budget, ("benchmark",), (f"export-{size}",))


def build_steps(cfg: Config) -> list[Step]:
    """Every step in run order (budgets add up to at most :data:`TOTAL_BUDGET_S`)."""
    py, es, r, w, dev = cfg.python, cfg.esccs, cfg.results, cfg.work, cfg.device
    install = ("pip-deps", "pip-esccs") if cfg.install else ()
    steps = [Step("nvidia-smi", ["nvidia-smi"], 5),
             Step("python-env", [py, str(SELF), "env", "--out", str(r / "environment.json")], 8)]
    if cfg.install:
        steps += [Step("pip-deps", _pip(cfg, "-r", str(cfg.wheels / "requirements.txt")), 20, needs=("python-env",)),
                  Step("pip-esccs", _pip(cfg, "--no-deps", "-e", str(ROOT)), 20, needs=("pip-deps",))]
    check = [py, str(SELF), "env", "--require", "esccs.runtime,esccs.benchmarks,esccs.ops,rasterio",
             "--same-torch", str(r / "environment.json")] + (["--compiled-kernels"] if dev == "cuda" else [])
    steps.append(Step("check-install", check, 10, needs=("python-env", *install)))
    ok = ("check-install",)
    steps += [
        Step("pytest-gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                            "--continue-on-collection-errors", "--junitxml", str(r / "pytest_gpu.xml"),
                            str(ROOT / "tests")], 35, needs=ok),
        Step("ops", [es, "benchmark", "ops", "--device", dev, "--batch-sizes", "1024,4096", "--min-time", "0.1",
                     "--out", str(r / "ops.json")], 40, ("benchmark", "ops"), ok),
        Step("train", [es, "benchmark", "train", "--arch", "resnet18", "--width", str(cfg.width), "--size", "128",
                       "--batch", str(GRID_BATCH), "--device", dev, "--rounds", "3", "--min-time", "3",
                       "--out", str(r / "train.json")], 15, ("benchmark", "train"), ok),
    ]
    for size, budget in zip(SIZES, (12, 20)):
        argv = [es, "data", "synth", str(w / f"data_{size}px"), "--samples", str(cfg.samples), "--size", str(size),
                "--source-fraction", str(SOURCE_FRACTION), "--workers", str(cfg.cores), "--overwrite", "--quiet"]
        steps.append(Step(f"synth-{size}", argv, budget, ("data", "synth"), ok))
    steps.append(Step("models", [py, str(SELF), "model", "--arch", ARCH, "--width", str(cfg.width),
                                 *[a for s in SIZES for a in ("--size", str(s))], "--out", str(w / "models")], 12,
                      needs=ok))
    for size in SIZES:
        ckpt = _ckpt(cfg, size)
        # the ONNX anchors the grid (its onnxruntime / TensorRT rows); the TorchScript exporter takes a third of the
        # time of the dynamo one for the same graph
        steps.append(Step(f"export-{size}", [es, "export", str(ckpt), "--format", "onnx", "--exporter", "legacy",
                                             "--out", str(ckpt.with_suffix(".onnx"))], 15, ("export",), ("models",)))
    steps += [grid_step(cfg, s, "eager") for s in SIZES]
    steps.append(reader_step(cfg))
    e2e = [es, "infer", str(w / "data_256px"), "--model", str(_ckpt(cfg, 256)), "--backend", "torch",
           "--device", dev, "--batch-size", str(GRID_BATCH), "--overwrite", "--quiet"]
    needs = ("synth-256", "models")
    steps.append(Step("e2e-warm", e2e + ["--workers", str(cfg.cores), "--out", str(w / "e2e" / "warm.csv")], 8,
                      ("infer",), needs))
    for k in worker_counts(cfg.cores):
        out = w / "e2e" / f"w{k}.csv"
        steps.append(Step(f"e2e-w{k}", e2e + ["--workers", str(k), "--out", str(out)], 10, ("infer",), needs,
                          ((str(out.with_name(out.stem + ".summary.json")), f"e2e_256px_w{k}.summary.json"),)))
    steps += [grid_step(cfg, s, "compiled") for s in SIZES]
    if cfg.scale != 1:
        for s in steps:
            s.budget_s = max(1, round(s.budget_s * cfg.scale))
    return steps


# ------------------------------------------------------------------------------------------------------------ running
@dataclass
class Result:
    """What one step did: ``status`` is ok, failed, timeout or skipped."""

    name: str
    command: str
    budget_s: int
    timeout_s: float
    status: str
    rc: int | None
    seconds: float
    log: str
    note: str = ""


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def step_env() -> dict[str, str]:
    """The environment of every step: Triton compiles (no ``TRITON_INTERPRET``), Python output unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_step(step: Step, index: int, timeout_s: float, logs: Path, env: dict[str, str]) -> Result:
    """Run ``step`` under ``timeout -k KILL_S <timeout_s>``, its whole output in ``logs/NN_<name>.log``."""
    argv = ["timeout", "-k", str(KILL_S), f"{timeout_s:g}", *step.argv]
    log = logs / f"{index:02d}_{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n# budget {step.budget_s} s, timeout {timeout_s:g} s; TRITON_INTERPRET unset\n")
        f.flush()
        try:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=ROOT)
        except OSError as err:  # `timeout` itself is missing
            f.write(f"\n{err}\n")
            rc = 127
        else:
            try:
                rc = proc.wait()
            except BaseException:  # interrupted: end the step's whole process group (timeout leads it), then re-raise
                _end_group(proc)
                raise
        seconds = time.monotonic() - t0
        f.write(f"\n# rc {rc} after {seconds:.1f} s\n")
    # 124: timeout's TERM ended it; after -k, timeout's KILL goes to its whole group, itself included (-9 / 137)
    status = "ok" if rc == 0 else "timeout" if rc in (124, 137, -signal.SIGKILL) else "failed"
    return Result(step.name, shlex.join(argv), step.budget_s, timeout_s, status, rc, round(seconds, 1),
                  str(log.relative_to(logs.parent)))


def _end_group(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the process group ``timeout`` made for a step (its pid is the group's id)."""
    for sig, wait in ((signal.SIGTERM, KILL_S + 1), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_steps(steps: Sequence[Step], results: Path, total_s: float, done: dict[str, Result] | None = None,
              started: float | None = None, on_step: Callable[[list[Result]], Any] = lambda r: None,
              echo: Callable[[str], Any] = print) -> list[Result]:
    """Run ``steps`` in order inside ``total_s`` seconds from ``started``; a step whose needs failed is skipped."""
    done = {} if done is None else done
    started = time.monotonic() if started is None else started
    env, logs, out = step_env(), results / "logs", list(done.values())
    for step in steps:
        if step.name in done:
            continue
        index = len(out) + 1
        missing = [n for n in step.needs if n not in done or done[n].status != "ok"]
        timeout_s = step_timeout(step.budget_s, time.monotonic() - started, total_s)
        if missing or not timeout_s:
            note = f"needs {', '.join(missing)}" if missing else "out of time"
            res = Result(step.name, shlex.join(step.argv), step.budget_s, 0, "skipped", None, 0.0, "", note)
        else:
            res = run_step(step, index, timeout_s, logs, env)
            for src, name in step.collect:
                if Path(src).is_file():
                    shutil.copyfile(src, results / name)
        done[step.name] = res
        out.append(res)
        echo(f"[{index:2d}] {step.name:<18} {res.status:<8} {res.seconds:6.1f} s of {step.budget_s:3d} s"
             + (f"  ({res.note})" if res.note else f"  rc {res.rc}  {res.log}"))
        on_step(out)
    return out


def commands_text(results: Sequence[Result]) -> str:
    """``commands.sh``: every command in run order, with its status, rc and seconds."""
    lines = ["#!/usr/bin/env bash", "# Every command `make gpu-check` ran, in order (the logs/ files hold the output).",
             "# Each step's environment: the caller's, without TRITON_INTERPRET, with PYTHONUNBUFFERED=1.", ""]
    for r in results:
        lines.append(f"# {r.name}: {r.status}" + (f", rc {r.rc}, {r.seconds} s of {r.budget_s} s" if r.rc is not None
                                                   else f" ({r.note})"))
        lines.append(("# " if r.status == "skipped" else "") + r.command)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ summary
#: the grid's progress lines (``esccs.benchmarks.inference``): a backend-only row, or a backend that failed to load
GRID_LINE = re.compile(r"^\s+(?P<backend>[\w-]+)\s+(?P<precision>[\w-]+)\s+(?:b=(?P<batch>\S+)\s+backend-only\s+)?"
                       r"(?:p50\s+(?P<p50>[\d.]+) ms/batch\s+(?P<tps>[\d.]+) tiles/s.*|error: (?P<error>.*))$")


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def grid_rows(folder: Path, log: Path | None) -> list[dict[str, Any]]:
    """The grid's rows from its ``report.json``, else (a cut-off run) from the progress lines of its log."""
    report = _load(folder / "report.json")
    if report:
        return [{"backend": r["backend"], "precision": r.get("precision"), "batch": r.get("batch"),
                 "tiles_per_second": r.get("throughput"), "error": r.get("error"), "source": "report.json"}
                for r in report.get("rows", [])]
    rows = []
    for line in (log.read_text().splitlines() if log and log.is_file() else []):
        m = GRID_LINE.match(line)
        if m:
            rows.append({"backend": m["backend"], "precision": m["precision"],
                         "batch": int(m["batch"]) if (m["batch"] or "").isdigit() else None,
                         "tiles_per_second": float(m["tps"]) if m["tps"] else None, "error": m["error"],
                         "source": "log (no report.json: the step did not finish)"})
    return rows


def figures(results_dir: Path, results: Sequence[Result]) -> dict[str, Any]:
    """Headline figures from the benchmarks' outputs (whatever exists)."""
    logs = {r.name: results_dir / r.log for r in results if r.log}
    out: dict[str, Any] = {}
    xml = results_dir / "pytest_gpu.xml"
    if xml.is_file():
        try:
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            out["pytest_gpu"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        except (ET.ParseError, AttributeError, ValueError) as err:
            out["pytest_gpu"] = {"error": str(err)}
    ops = _load(results_dir / "ops.json")
    if ops:
        out["ops"] = {"goals": ops.get("goals"), "fused": [
            {k: r.get(k) for k in ("op", "batch", "median_ms", "speedup_vs_eager", "speedup_vs_compile", "gbps")}
            for r in ops.get("rows", []) if r.get("provider") == "fused"]}
    train = _load(results_dir / "train.json")
    if train:
        out["train"] = {"rows": train.get("rows"), "step2_over_plain": train.get("step2_over_plain")}
    for size in SIZES:
        for kind in ("eager", "compiled"):
            name = f"grid-{kind}-{size}"
            rows = grid_rows(results_dir / f"grid_{size}px_{kind}", logs.get(name))
            if rows:
                out[name] = rows
    e2e = {}
    for f in sorted(results_dir.glob("e2e_256px_w*.summary.json"), key=lambda p: int(re.findall(r"w(\d+)", p.name)[0])):
        s = _load(f) or {}
        e2e[s.get("readers", f.name)] = {k: s.get(k) for k in ("tiles_per_second", "backend_tiles_per_second",
                                                                "waiting_for_reads_seconds", "seconds", "classified",
                                                                "failed")}
    if e2e:
        out["e2e_256px_by_readers"] = e2e
    infer = _load(results_dir / "infer_256px.json")
    if infer:
        out["reader_infer_256px"] = {"backend_only_tiles_per_second": infer.get("backend_only", {}).get(
            "tiles_per_second"), "end_to_end": {n: {k: r.get(k) for k in ("tiles_per_second", "ratio_to_backend_only")}
                                                for n, r in infer.get("end_to_end", {}).items()}}
    read = _load(results_dir / "read_256px.json")
    if read:
        rows = read.get("sizes", {}).get("256", {}).get("rows", [])
        out["reader_read_256px"] = {"rows": [{k: r.get(k) for k in ("path", "workers", "kind", "triples_per_s")}
                                             for r in rows], "goals": read.get("goals")}
        # the fast path as esccs infer runs it: one thread for one worker, worker processes for more
        fast = {r["workers"]: r["triples_per_s"] for r in rows
                if r.get("path") == "fast" and (r.get("workers") == 1 or r.get("kind") == "process")}
        if fast and e2e:
            n = max(fast)
            e2e_n = next((v["tiles_per_second"] for k, v in e2e.items() if k == n), None)
            if e2e_n:
                ratio = round(e2e_n / fast[n], 3)
                out["goal_e2e_vs_reader"] = {"goal": "esccs infer end to end >= 0.9x reader-only, all cores reading",
                                             "workers": n, "e2e_tiles_per_s": e2e_n, "reader_only_triples_per_s":
                                             fast[n], "ratio": ratio, "met": ratio >= 0.9}
    return out


def summary_md(cfg: Config, device: str, results: Sequence[Result], figs: dict[str, Any], total_s: float) -> str:
    """``summary.md``: the machine, each step's status and time, the figures."""
    env = _load(cfg.results / "environment.json") or {}
    lines = [f"# GPU check on {device}", "",
             f"`make gpu-check` ({total_s:.0f} s of the {cfg.budget_s} s budget); machine: {env.get('cpu_count')} "
             f"cores, torch {env.get('torch', {}).get('version')}, Python {env.get('python')}. Commands: "
             "`commands.sh`; outputs: `logs/`.", "",
             f"Reader figures from: {cfg.extra.get('reader_path', 'n/a')}", "",
             "| # | step | status | rc | s | budget s | note |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {r.name} | {r.status} | {'' if r.rc is None else r.rc} | {r.seconds} | {r.budget_s} | "
              f"{r.note} |" for i, r in enumerate(results, 1)]
    for key, rows in figs.items():
        if key.startswith("grid-"):
            lines += ["", f"## {key} (backend-only, batch {GRID_BATCH})", "",
                      "| backend | precision | tiles/s | error |", "|---|---|---|---|"]
            lines += [f"| {r['backend']} | {r['precision']} | "
                      f"{'' if r['tiles_per_second'] is None else round(r['tiles_per_second'], 1)} | "
                      f"{r['error'] or ''} |" for r in rows]
    if "e2e_256px_by_readers" in figs:
        lines += ["", "## esccs infer end to end, 256 px, torch on the GPU", "",
                  "| readers | tiles/s | backend tiles/s | waiting for reads s | tiles |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['tiles_per_second']} | {v['backend_tiles_per_second']} | "
                  f"{v['waiting_for_reads_seconds']} | {v['classified']} |"
                  for k, v in figs["e2e_256px_by_readers"].items()]
    if "reader_read_256px" in figs:
        lines += ["", "## Reader only, 256 px (esccs benchmark read)", "", "| path | workers | triples/s |",
                  "|---|---|---|"]
        lines += [f"| {r['path']} | {r['workers']} {r['kind']} | {r['triples_per_s']} |"
                  for r in figs["reader_read_256px"]["rows"]]
    goals = [*((figs.get("ops") or {}).get("goals") or []),
             *(f"{g['goal']}: {g['value']} ({'met' if g['met'] else 'not met'})"
               for g in (figs.get("reader_read_256px") or {}).get("goals") or [])]
    if "goal_e2e_vs_reader" in figs:
        g = figs["goal_e2e_vs_reader"]
        goals.append(f"{g['goal']}: {g['e2e_tiles_per_s']} / {g['reader_only_triples_per_s']} = {g['ratio']} with "
                     f"{g['workers']} workers ({'met' if g['met'] else 'not met'})")
    if goals:
        lines += ["", "## Goals", ""] + [f"- {g}" for g in goals]
    shown = ("e2e_256px_by_readers", "reader_read_256px", "goal_e2e_vs_reader")
    rest = {k: v for k, v in figs.items() if not k.startswith("grid-") and k not in shown}
    if rest:
        lines += ["", "## Other figures", "", "```json", json.dumps(rest, default=str), "```"]
    return "\n".join(lines) + "\n"


def export_archive(results_dir: Path, dest: Path) -> Path:
    """Pack ``results_dir`` into ``dest/<name>.tar.gz`` (written whole, then renamed into place)."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{results_dir.name}.tar.gz"
    tmp = dest / f".{final.name}.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(results_dir, arcname=results_dir.name)
    os.replace(tmp, final)
    return final


# ------------------------------------------------------------------------------------------------------------ env
def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine's Python stack (imports torch; never fails on a missing package)."""
    env: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                           "cpu_count": os.cpu_count(), "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
                           "versions": {n: _version(n) for n in (*PROTECTED, "onnxscript", "onnxruntime-gpu",
                                                                  "tensorrt", "rasterio", "esccs", "pytest")}}
    try:
        import torch

        env["torch"] = {"version": torch.__version__, "file": torch.__file__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            env["torch"].update(device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count(),
                                capability=list(torch.cuda.get_device_capability(0)))
    except Exception as err:  # noqa: BLE001 - reported, not raised
        env["torch"] = {"error": f"{type(err).__name__}: {err}"}
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return env


def cmd_env(args: argparse.Namespace) -> int:
    """``env``: print (and write) the environment; with checks, exit 1 when one fails."""
    env, problems = environment(), []
    for mod in filter(None, (args.require or "").split(",")):
        try:
            importlib.import_module(mod)
        except Exception as err:  # noqa: BLE001
            problems.append(f"cannot import {mod}: {type(err).__name__}: {err}")
    if args.same_torch:
        before = (_load(Path(args.same_torch)) or {}).get("torch", {})
        now = env.get("torch", {})
        for k in ("version", "file"):
            if before.get(k) != now.get(k):
                problems.append(f"torch {k} changed by the install: {before.get(k)} -> {now.get(k)}")
    if args.compiled_kernels:
        from esccs.ops._dispatch import interpreting

        bad = ([f"TRITON_INTERPRET={os.environ['TRITON_INTERPRET']} (Triton's interpreter)"] if interpreting() else [])
        bad += [] if env.get("torch", {}).get("cuda_available") else ["torch sees no CUDA GPU"]
        if bad:
            problems.append(f"fused kernels would not compile for the GPU: {'; '.join(bad)}")
        else:
            env["fused_kernels"] = "compiled by Triton for the GPU (TRITON_INTERPRET unset)"
    env["problems"] = problems
    text = json.dumps(env, indent=1)
    print(text)
    if args.out:
        _write(Path(args.out), text + "\n")
    for p in problems:
        print(f"gpu-check: {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_model(args: argparse.Namespace) -> int:
    """``model``: a random-weight checkpoint per size (speed does not depend on the weights)."""
    from esccs.models import create_model, save_checkpoint

    for size in args.size:
        model = create_model(args.arch, width=args.width, patch_size=size, classes="sen12ms_cloud",
                             normalization="sen12ms")
        path = save_checkpoint(Path(args.out) / f"{args.arch}_w{args.width}_{size}px.safetensors", model.eval())
        print(f"wrote {path} (random weights, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0


# ------------------------------------------------------------------------------------------------------------ main
def gpu_name() -> str | None:
    """The first GPU's name from ``nvidia-smi`` (``$NVIDIA_SMI`` when set; ``None`` when it lists no GPU)."""
    try:
        out = subprocess.run([os.environ.get("NVIDIA_SMI", "nvidia-smi"), "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [n.strip() for n in out.stdout.splitlines() if n.strip()] if out.returncode == 0 else []
    return names[0] if names else None


def read_available(esccs: str) -> tuple[bool, str]:
    """Whether ``esccs benchmark read --help`` works here, and what was seen."""
    try:
        p = subprocess.run([esccs, "benchmark", "read", "--help"], capture_output=True, text=True, timeout=60,
                           env=step_env())
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, f"esccs benchmark read --help: {err}"
    last = (p.stderr.strip().splitlines() or [""])[-1]
    return p.returncode == 0, f"esccs benchmark read --help: rc {p.returncode}" + (f" ({last})" if p.returncode else "")


def protect_constraints(path: Path) -> None:
    """A pip constraints file pinning the machine's own :data:`PROTECTED` packages to their installed versions."""
    pins = [f"{n}=={v}" for n in PROTECTED if (v := _version(n))]
    _write(path, "# the GPU machine's own packages: the install must not change them\n" + "\n".join(pins) + "\n")


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(f"gpu-check: stopped by signal {signum}")


def cmd_run(args: argparse.Namespace) -> int:
    """Run (or with ``--dry-run`` list) the whole check."""
    started = time.monotonic()
    device = args.device_name or gpu_name() or ("cpu" if args.device == "cpu" else None)
    if device is None and not args.dry_run:
        print("gpu-check: no CUDA GPU here (nvidia-smi lists none); nothing to run")
        return 0
    device = device or "dry-run"
    cfg = Config(device=args.device, wheels=Path(args.wheels).resolve(), work=Path(args.work),
                 results=Path(args.results).resolve() / f"gpu_{slug(device)}", install=not args.no_install,
                 budget_s=args.budget, export_to=Path(args.export_to) if args.export_to else None,
                 samples=args.samples, width=args.width, scale=args.scale)
    if args.cores:
        cfg.cores = args.cores
    if args.dry_run:
        cfg.read_available, seen = read_available(cfg.esccs)
        steps = build_steps(cfg)
        for s in steps:
            print(f"{s.name:<18} {s.budget_s:4d} s  {shlex.join(s.argv)}")
        print(f"{len(steps)} steps, {sum(s.budget_s for s in steps)} s of budgets (limit {cfg.budget_s} s); "
              f"reader figures: {'esccs benchmark read' if cfg.read_available else 'esccs benchmark infer'} ({seen})")
        return 0
    if cfg.install and not (cfg.wheels / "requirements.txt").is_file():
        print(f"gpu-check: {cfg.wheels}/requirements.txt not found: run `make gpu-wheels` on the development "
              "machine and carry .gpu-wheels (or pass --no-install where the package is installed)", file=sys.stderr)
        return 1
    if shutil.which("timeout") is None:
        print("gpu-check: coreutils `timeout` not found (every step runs under it)", file=sys.stderr)
        return 1
    if cfg.results.exists():
        shutil.rmtree(cfg.results)
    cfg.results.mkdir(parents=True)
    protect_constraints(cfg.results / "protected-constraints.txt")
    print(f"gpu-check on {device}: results -> {cfg.results}, budget {cfg.budget_s} s")

    def save(results: list[Result]) -> None:
        _write(cfg.results / "steps.json", json.dumps({"device": device, "budget_s": cfg.budget_s,
                                                       "reader_path": cfg.extra.get("reader_path"),
                                                       "steps": [asdict(r) for r in results]}, indent=1) + "\n")
        _write(cfg.results / "commands.sh", commands_text(results))
        total = time.monotonic() - started
        _write(cfg.results / "summary.md", summary_md(cfg, device, results, figures(cfg.results, results), total))
        if cfg.export_to:
            export_archive(cfg.results, cfg.export_to)
            shutil.copyfile(cfg.results / "summary.md", cfg.export_to / "summary.md")

    only = set(args.only.split(",")) if args.only else None

    def pick(steps: list[Step]) -> list[Step]:
        return [s for s in steps if only is None or s.name in only or s.name.split("-")[0] in only]

    first = [s for s in build_steps(cfg) if s.name in ("nvidia-smi", "python-env", "pip-deps", "pip-esccs",
                                                        "check-install")]
    signal.signal(signal.SIGTERM, _terminated)  # a TERM ends the running step's processes too (see run_step)
    done = {r.name: r for r in run_steps(pick(first), cfg.results, cfg.budget_s, started=started, on_step=save)}
    cfg.read_available, seen = read_available(cfg.esccs)
    cfg.extra["reader_path"] = ("esccs benchmark read" if cfg.read_available else
                                "esccs benchmark infer (esccs benchmark read not available)") + f"; {seen}"
    results = run_steps(pick(build_steps(cfg)), cfg.results, cfg.budget_s, done=done, started=started,
                        on_step=save)
    bad = [r for r in results if r.status != "ok"]
    print(f"gpu-check: {len(results) - len(bad)} of {len(results)} steps ok in {time.monotonic() - started:.0f} s; "
          f"results in {cfg.results}" + (f"; not ok: {', '.join(r.name for r in bad)}" if bad else ""))
    print((cfg.results / "summary.md").read_text())
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``run`` (default), ``env`` or ``model``."""
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    run = sub.add_parser("run", help="run the check (the default)")
    for p in (parser, run):
        p.add_argument("--dry-run", action="store_true", help="print the steps, budgets and commands; run nothing")
        p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a local smoke run")
        p.add_argument("--device-name", default=None, help="results folder name (default: nvidia-smi's GPU name)")
        p.add_argument("--wheels", default=str(ROOT / ".gpu-wheels"), help="wheels folder (make gpu-wheels)")
        p.add_argument("--no-install", action="store_true", help="the package is installed already")
        p.add_argument("--work", default="/tmp/esccs-gpu-check", help="scratch folder (tiles, models)")
        p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="parent of gpu_<device>/")
        p.add_argument("--budget", type=int, default=TOTAL_BUDGET_S, help="seconds for the whole check")
        p.add_argument("--cores", type=int, default=None, help="reader workers N (default: all cores)")
        p.add_argument("--only", default=None, help="comma-separated step names or prefixes (smoke runs)")
        p.add_argument("--samples", type=int, default=SAMPLES, help="synthetic samples per size (smoke runs)")
        p.add_argument("--width", type=int, default=WIDTH, help="first-stage channels of the models (smoke runs)")
        p.add_argument("--scale", type=float, default=1.0, help="factor on every step's budget (smoke runs)")
        p.add_argument("--export-to", default=None, help="also pack the results into DIR/gpu_<device>.tar.gz")
    env = sub.add_parser("env", help="print the Python stack as JSON (with checks)")
    env.add_argument("--out", default=None)
    env.add_argument("--require", default=None, help="comma-separated modules that must import")
    env.add_argument("--same-torch", default=None, help="environment.json from before the install")
    env.add_argument("--compiled-kernels", action="store_true", help="fail unless Triton compiles for the GPU")
    model = sub.add_parser("model", help="write random-weight checkpoints")
    model.add_argument("--arch", default=ARCH)
    model.add_argument("--width", type=int, default=WIDTH)
    model.add_argument("--size", type=int, action="append", required=True)
    model.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    return {"env": cmd_env, "model": cmd_model}.get(args.cmd, cmd_run)(args)


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == SELF.parent:  # benchmarks/*.py must not shadow other modules
        sys.path.pop(0)
    sys.exit(main())
