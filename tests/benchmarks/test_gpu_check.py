"""``make gpu-check`` (benchmarks/gpu_check.sh + gpu_check.py) and ``make gpu-wheels``, on a machine without a GPU.

The no-GPU path is run for real (one line, exit 0); the step list is checked for its time budget and for every
command naming a real ``esccs`` subcommand with real options (``esccs <sub> --help``); the step runner is run on real
subprocesses (a step past its budget is killed by ``timeout``, a step whose needs failed is skipped).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from esccs.benchmarks import gpu_check as gc
from esccs.benchmarks import gpu_check_wheels as gw

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
NO_GPU = re.compile(r"^gpu-check: no CUDA GPU on this machine \(.+ lists none\); nothing to run$")


def _no_gpu_env(smi: str) -> dict:
    return {**os.environ, "NVIDIA_SMI": smi}


@pytest.mark.parametrize("smi", ["/nonexistent/nvidia-smi", "true", "false"], ids=["missing", "lists-none", "fails"])
def test_script_without_gpu_says_so_in_one_line_and_exits_0(smi):
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=_no_gpu_env(smi), timeout=60)
    assert p.returncode == 0, p.stderr
    assert NO_GPU.match(p.stdout.rstrip("\n")) and p.stdout.count("\n") == 1, p.stdout
    assert p.stderr == ""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_check_without_gpu_prints_only_that_line():
    p = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "gpu-check"], capture_output=True,
                       text=True, env=_no_gpu_env("/nonexistent/nvidia-smi"), timeout=60)
    assert p.returncode == 0, p.stderr
    assert NO_GPU.match(p.stdout.rstrip("\n")) and p.stdout.count("\n") == 1, p.stdout


def test_driver_without_gpu_says_so_and_exits_0(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--results", str(tmp_path)],
                       capture_output=True, text=True, env=_no_gpu_env("/nonexistent/nvidia-smi"), timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("gpu-check: no CUDA GPU") and p.stdout.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


# ------------------------------------------------------------------------------------------------------------ plan
@pytest.mark.parametrize("cores", [1, 2, 3, 16, 48, 256])
@pytest.mark.parametrize("read", [True, False])
def test_budgets_fit_in_8_minutes_and_needs_come_first(cores, read):
    steps = gc.build_steps(gc.Config(cores=cores, read_available=read))
    names = [s.name for s in steps]
    assert len(set(names)) == len(names)
    assert sum(s.budget_s for s in steps) <= gc.TOTAL_BUDGET_S == 480
    assert all(s.budget_s >= gc.MIN_STEP_S for s in steps)
    for i, s in enumerate(steps):
        assert set(s.needs) <= set(names[:i]), f"{s.name} needs a step that runs after it"
    e2e = [s for s in steps if re.fullmatch(r"e2e-w\d+", s.name)]
    workers = [int(s.argv[s.argv.index("--workers") + 1]) for s in e2e]
    assert workers[0] == 1 and workers[-1] == cores and workers == sorted(set(workers))
    reader = next(s for s in steps if s.name.startswith("reader-"))
    assert reader.cli == (("benchmark", "read") if read else ("benchmark", "infer"))


def test_the_check_covers_what_the_issue_asks():
    steps = {s.name: s for s in gc.build_steps(gc.Config(cores=16))}
    pytest_argv = steps["pytest-gpu"].argv
    assert pytest_argv[1:3] == ["-m", "pytest"] and pytest_argv[pytest_argv.index("-m", 3) + 1] == "gpu"
    assert steps["ops"].argv[steps["ops"].argv.index("--device") + 1] == "cuda"
    rows = set()
    for size in gc.SIZES:
        for kind in ("eager", "compiled"):
            a = steps[f"grid-{kind}-{size}"].argv
            assert a[a.index("--device") + 1] == "cuda" and f"_{size}px" in a[a.index("--model") + 1]
            rows |= {(b, p) for b in a[a.index("--backends") + 1].split(",") for p in a[a.index("--precisions") + 1]
                     .split(",")}
    for want in [("torch", "fp32"), ("torch", "bf16"), ("torch-compile", "bf16"), ("torch-cudagraphs", "bf16"),
                 ("onnxruntime", "fp32"), ("tensorrt", "fp32")]:
        assert want in rows
    for name in ("synth-128", "synth-256", "train", "e2e-w1", "pip-deps", "pip-esccs", "check-install"):
        assert name in steps
    pip = steps["pip-deps"].argv + steps["pip-esccs"].argv
    assert "--no-index" in pip and "--no-deps" in steps["pip-esccs"].argv and "torch" not in " ".join(pip)


def test_step_timeout_follows_the_global_deadline():
    assert gc.step_timeout(30, elapsed_s=0, total_s=480) == 30
    left = 480 - gc.RESERVE_S - gc.KILL_S - 460
    assert gc.step_timeout(30, elapsed_s=460, total_s=480) == left < 30
    assert gc.step_timeout(30, elapsed_s=480 - gc.RESERVE_S - gc.KILL_S - gc.MIN_STEP_S + 1, total_s=480) == 0


@pytest.mark.parametrize("cores,want", [(1, [1]), (2, [1, 2]), (12, [1, 2, 4, 8, 12]), (16, [1, 2, 4, 8, 16])])
def test_worker_counts(cores, want):
    assert gc.worker_counts(cores) == want


def test_worker_counts_are_capped():
    assert gc.worker_counts(64) == [1, 2, 16, 32, 64]


def test_slug_names_the_results_folder():
    assert gc.slug("NVIDIA H200") == "nvidia_h200"
    assert gc.slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert gc.slug("  ") == "unknown"


@pytest.mark.slow
def test_dry_run_prints_every_step_and_the_total():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--cores", "16"],
                       capture_output=True, text=True, timeout=120, env=_no_gpu_env("/nonexistent/nvidia-smi"))
    assert p.returncode == 0, p.stderr
    *lines, total = p.stdout.strip().splitlines()
    m = re.match(r"(\d+) steps, (\d+) s of budgets \(limit 480 s\); reader figures: esccs benchmark (read|infer) ",
                 total)
    assert m, total
    steps = gc.build_steps(gc.Config(cores=16, read_available=m[3] == "read"))
    assert [line.split()[0] for line in lines] == [s.name for s in steps]
    assert [int(line.split()[1]) for line in lines] == [s.budget_s for s in steps]
    assert int(m[1]) == len(steps) and int(m[2]) == sum(s.budget_s for s in steps) <= 480


def _cli_steps():
    seen = {}
    for read in (False, True):
        for s in gc.build_steps(gc.Config(cores=16, read_available=read)):
            if s.cli:
                seen.setdefault(s.cli, set()).update(a for a in s.argv if a.startswith("--"))
    return [pytest.param(cli, sorted(opts), id=" ".join(cli)) for cli, opts in sorted(seen.items())]


def _esccs() -> str:
    path = gc.Config().esccs
    return path if Path(path).is_file() else shutil.which("esccs")


@pytest.mark.slow
@pytest.mark.parametrize("cli,options", _cli_steps())
def test_every_command_names_a_real_subcommand_and_options(cli, options):
    p = subprocess.run([_esccs(), *cli, "--help"], capture_output=True, text=True, timeout=120)
    if cli == ("benchmark", "read") and p.returncode != 0:
        assert "No such command 'read'" in p.stderr  # not written yet: the check falls back to benchmark infer
        assert gc.read_available(_esccs())[0] is False
        return
    assert p.returncode == 0, p.stderr
    missing = [o for o in options if not re.search(rf"(^|[\s,/]){re.escape(o)}([\s,=/]|$)", p.stdout, re.M)]
    assert not missing, f"esccs {' '.join(cli)} has no {missing}"


@pytest.mark.slow
def test_helper_subcommands_take_the_options_the_steps_pass():
    steps = gc.build_steps(gc.Config(cores=16))
    own = [s for s in steps if len(s.argv) > 2 and s.argv[1] == str(gc.SELF)]
    assert {s.argv[2] for s in own} == {"env", "model"}
    for s in own:
        p = subprocess.run([sys.executable, str(gc.SELF), s.argv[2], "--help"], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert not [o for o in s.argv if o.startswith("--") and o not in p.stdout]


def _env(capsys, **kw):
    import argparse

    args = argparse.Namespace(**{"out": None, "require": None, "same_torch": None, "compiled_kernels": False, **kw})
    rc = gc.cmd_env(args)
    out = capsys.readouterr()
    return rc, json.loads(out.out), out.err


def test_env_reports_torch_and_checks_it_unchanged(tmp_path, capsys):
    import torch

    before = tmp_path / "before.json"
    rc, env, _ = _env(capsys, out=str(before))
    assert rc == 0 and json.loads(before.read_text()) == env
    assert env["torch"]["version"] == torch.__version__ and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch"]["file"] == torch.__file__ and env["versions"]["esccs"] is not None
    rc, _, err = _env(capsys, same_torch=str(before), require="esccs.runtime,rasterio")
    assert rc == 0 and err == ""
    env["torch"]["version"] = "0.0.1+other"
    before.write_text(json.dumps(env))
    rc, after, err = _env(capsys, same_torch=str(before), require="esccs.runtime,no_such_module_x")
    assert rc == 1 and len(after["problems"]) == 2
    assert "torch version changed by the install: 0.0.1+other ->" in err
    assert "cannot import no_such_module_x" in err


def test_env_refuses_interpreted_kernels_for_a_gpu_check(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rc, env, err = _env(capsys, compiled_kernels=True)
    assert rc == 1 and "fused kernels would not compile for the GPU: TRITON_INTERPRET=1" in err
    assert "fused_kernels" not in env


# ------------------------------------------------------------------------------------------------------------ runner
def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_runner_times_out_skips_and_records(tmp_path):
    steps = [gc.Step("ok", _py("print('hello')"), 20),
             gc.Step("hang", _py("import time; time.sleep(60)"), 1),
             gc.Step("after-hang", _py("print('never')"), 20, needs=("hang",)),
             gc.Step("fails", _py("import sys; sys.exit(3)"), 20, needs=("ok",)),
             gc.Step("late", _py("print('late')"), 20),
             gc.Step("deaf", _py("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"),
                     1)]
    t0 = time.monotonic()
    lines = []
    res = {r.name: r for r in gc.run_steps(steps, tmp_path, total_s=gc.RESERVE_S + gc.KILL_S + 30, echo=lines.append)}
    assert time.monotonic() - t0 < 25
    assert (res["ok"].status, res["ok"].rc) == ("ok", 0)
    assert "hello" in (tmp_path / res["ok"].log).read_text()
    assert (res["hang"].status, res["hang"].rc) == ("timeout", 124) and res["hang"].seconds < 5
    assert (res["after-hang"].status, res["after-hang"].note) == ("skipped", "needs hang")
    assert (res["fails"].status, res["fails"].rc) == ("failed", 3)
    assert res["late"].status == "ok" and len(lines) == 6
    assert res["deaf"].status == "timeout" and res["deaf"].seconds < 1 + gc.KILL_S + 3  # TERM ignored: KILLed
    text = gc.commands_text(list(res.values())).splitlines()
    i = text.index("# after-hang: skipped (needs hang)")
    assert text[i + 1].startswith(f"# {sys.executable} -c")  # a skipped command is listed, commented out
    assert text[text.index("# hang: timeout, rc 124, " + f"{res['hang'].seconds} s of 1 s") + 1].startswith(
        f"timeout -k {gc.KILL_S} 1 {sys.executable} -c")


def test_runner_skips_what_the_deadline_leaves_no_time_for(tmp_path):
    steps = [gc.Step("slow", _py("import time; time.sleep(60)"), 60), gc.Step("next", _py("print(1)"), 10)]
    total = gc.RESERVE_S + gc.KILL_S + gc.MIN_STEP_S + 1
    res = {r.name: r for r in gc.run_steps(steps, tmp_path, total_s=total, echo=lambda m: None)}
    assert res["slow"].status == "timeout" and res["slow"].timeout_s <= gc.MIN_STEP_S + 1
    assert (res["next"].status, res["next"].note) == ("skipped", "out of time")


def test_runner_steps_never_see_triton_interpret(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    step = gc.Step("env", _py("import os; print('TI=' + str(os.environ.get('TRITON_INTERPRET')))"), 20)
    (r,) = gc.run_steps([step], tmp_path, total_s=60, echo=lambda m: None)
    assert "TI=None" in (tmp_path / r.log).read_text()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_terminated_check_leaves_no_step_processes(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    step_code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
                 f"time.sleep(120)']); open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    driver = (f"import signal, sys; from pathlib import Path; from esccs.benchmarks import gpu_check as gc; "
              f"signal.signal(signal.SIGTERM, gc._terminated); "
              f"gc.run_steps([gc.Step('hang', [sys.executable, '-c', {step_code!r}], 100)], Path({str(tmp_path)!r}), "
              f"total_s=200)")
    proc = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pidfile.is_file() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pidfile.read_text())
    assert _alive(grandchild)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "stopped by signal 15" in err
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the step's child outlived the check"


def test_grid_rows_are_read_back_from_a_cut_off_log(tmp_path):
    from esccs.benchmarks.inference import BenchConfig, bench_backend, error_row, progress_line

    lines = ["torch-cudagraphs bf16"]
    for unstable in (False, True):
        lines.append(progress_line({"backend": "torch-cudagraphs", "precision": "bf16", "batch": 128, "status": "ok",
                                    "unstable": unstable, "latency_ms": {"p50": 4.25}, "throughput": 30117.6}))
    lines.append(progress_line(error_row("torch", "fp32", 64, "CUDA out of memory")))
    cfg = BenchConfig(model=tmp_path / "m.onnx", data=tmp_path, device="cpu").resolved()
    bench_backend("tensorrt", "fp32", cfg, {"threads": 1}, log=lines.append)  # its line for a backend that can't load
    lines.append("  torch             fp32  b=128  end-to-end  error: no tiles")  # not a backend-only row
    log = tmp_path / "grid.log"
    log.write_text("\n".join(lines) + "\n")
    rows = gc.grid_rows(tmp_path / "no-report", log)
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("torch-cudagraphs", "bf16", 128), ("torch-cudagraphs", "bf16", 128), ("torch", "fp32", 64),
        ("tensorrt", "fp32", None)]
    assert [r["tiles_per_second"] for r in rows] == [pytest.approx(30117.6, abs=0.1)] * 2 + [None, None]
    assert [r["error"] for r in rows[:3]] == [None, None, "CUDA out of memory"]
    assert rows[3]["error"] == "tensorrt runs on a CUDA GPU only (this run is --device cpu)"


def test_archive_holds_the_results_folder(tmp_path):
    import tarfile

    res = tmp_path / "gpu_x"
    (res / "logs").mkdir(parents=True)
    (res / "logs" / "01_a.log").write_text("log")
    (res / "summary.md").write_text("# s")
    out = gc.export_archive(res, tmp_path / "out")
    with tarfile.open(out) as t:
        assert sorted(t.getnames()) == ["gpu_x", "gpu_x/logs", "gpu_x/logs/01_a.log", "gpu_x/summary.md"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["gpu_x.tar.gz"]


# ------------------------------------------------------------------------------------------------------------ wheels
def test_wheels_cover_the_runtime_but_never_the_machines_own_stack():
    names = {r.name.lower() for r in gw.package_requirements()}
    assert {"rasterio", "click", "tqdm", "safetensors", "pyyaml"} <= names
    assert not names & {"torch", "triton", "onnx", "onnxruntime", "numpy"}
    assert {r.name for r in gw.build_requirements()} >= {"setuptools", "wheel"}


def test_size_check_fails_loudly_over_the_limit(tmp_path, capsys):
    w = tmp_path / "big-1.0-py3-none-any.whl"
    w.write_bytes(b"\0" * (2 * 2**20))
    assert gw.check_size({"big": w}, limit_mib=3) == pytest.approx(2.0)
    assert "1 wheels, 2.0 MiB in all" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="the wheels are 2.0 MiB, over the 1 MiB"):
        gw.check_size({"big": w}, limit_mib=1)
    with pytest.raises(SystemExit, match="wheels \\+ working tree"):
        gw.check_size({"big": w}, limit_mib=3, tree=1.5)


def test_two_versions_of_one_wheel_are_refused(tmp_path):
    for v in ("1.0", "2.0"):
        (tmp_path / f"affine-{v}-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(SystemExit, match="two wheels of affine"):
        gw.wheels_by_name(tmp_path)


def test_summary_compares_end_to_end_with_reader_only(tmp_path):
    rows = [{"path": p, "workers": w, "kind": "thread" if w == 1 else k, "triples_per_s": v, "rounds": [v]}
            for p, w, k, v in [("rasterio", 1, "", 100.0), ("fast", 1, "", 400.0), ("fast", 4, "process", 1500.0),
                               ("fast", 4, "thread", 420.0)]]
    (tmp_path / "read_256px.json").write_text(json.dumps({"sizes": {"256": {"rows": rows}}, "goals": []}))
    for w, tps in ((1, 390.0), (4, 1200.0)):
        (tmp_path / f"e2e_256px_w{w}.summary.json").write_text(json.dumps(
            {"readers": w, "tiles_per_second": tps, "backend_tiles_per_second": 9000.0, "classified": 720}))
    figs = gc.figures(tmp_path, [])
    assert list(figs["e2e_256px_by_readers"]) == [1, 4]
    g = figs["goal_e2e_vs_reader"]
    assert (g["workers"], g["reader_only_triples_per_s"], g["ratio"], g["met"]) == (4, 1500.0, 0.8, False)
    text = gc.summary_md(gc.Config(results=tmp_path), "NVIDIA H200", [], figs, 1.0)
    assert "| 4 | 1200.0 | 9000.0 |" in text and "= 0.8 with 4 workers (not met)" in text
