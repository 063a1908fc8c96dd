"""`esccs benchmark --model M --data DIR`: a tiny real run renders Markdown, JSON and HTML; failures are rows.

One tiny run (16 px, width-4 dual model, 40 synthetic samples, batch sizes 1 and 4, a few timed batches) through
the command line serves most tests. Figures are not asserted against goals: timings are for reports, never for
pass/fail tests; only their consistency is.
"""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from esccs.benchmarks.engines import load_engine
from esccs.benchmarks.inference import BenchConfig, find_checkpoint, plan, read_meta, run_benchmark
from esccs.benchmarks.report import to_html, to_markdown
from esccs.cli import cli
from esccs.data.synth import SynthConfig, synthesize
from esccs.export import export_model
from esccs.models import create_model, save_checkpoint

FAST = ["--min-time", "0.02", "--warmup", "0", "--min-iters", "3", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    synthesize(SynthConfig(out=root / "data", samples=40, size=16, patches_per_scene=5, workers=1), progress=False)
    torch.manual_seed(0)
    model = create_model("dual_resnet10", width=4, patch_size=16, classes="sen12ms_cloud", normalization="sen12ms")
    ckpt = save_checkpoint(root / "m.safetensors", model.eval(), model.esccs_config)
    onnx = export_model(ckpt, "onnx", root / "m.onnx", exporter="legacy", print_fn=None).path
    return {"root": root, "data": root / "data", "ckpt": ckpt, "onnx": onnx}


@pytest.fixture(scope="module")
def run(tiny):
    """The CLI run: no --checkpoint (found through M's export sidecar), no INT8 sibling, no TensorRT."""
    out = tiny["root"] / "report"
    args = ["benchmark", "--model", str(tiny["onnx"]), "--data", str(tiny["data"]), "--batch-sizes", "1,4",
            "--backends", "torch,onnxruntime,onnxruntime-int8,tensorrt", "--e2e-batch-sizes", "4", *FAST,
            "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return {"out": out, "stdout": res.stdout, "stderr": res.stderr,
            "report": json.loads((out / "report.json").read_text())}


def _rows(report, backend):
    return [r for r in report["rows"] if r["backend"] == backend]


def test_report_files_render(run):
    out = run["out"]
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    md = (out / "report.md").read_text()
    assert "| backend | precision | batch | status | p50 ms | p90 ms | p99 ms | mean ms |" in md
    assert "| torch | fp32 | 1 | ok |" in md and "| onnxruntime | fp32 | 4 | ok |" in md
    for section in ("## Goals", "## Accuracy and parity", "## End-to-end", "## Per-stage breakdown", "## Method",
                    "## Environment"):
        assert section in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert "onnxruntime" in page and "environment" in page


def test_terminal_shows_the_table(run):
    assert "| torch | fp32 | 4 | ok |" in run["stdout"] and "| goal | status |" in run["stdout"]
    assert "report.html" in run["stdout"]
    assert "checkpoint:" in run["stderr"] and "m.parity.json" in run["stderr"]  # found without --checkpoint


def test_ok_rows_have_every_figure(run):
    report = run["report"]
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["batch"]) for r in ok} == {("torch", 1), ("torch", 4), ("onnxruntime", 1),
                                                         ("onnxruntime", 4)}
    for r in ok:
        lat = r["latency_ms"]
        assert r["iterations"] >= 3 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
        assert r["latency_per_tile_ms"]["p50"] == pytest.approx(lat["p50"] / r["batch"])
        assert r["throughput"] > 0 and r["peak_rss_mb"] > 0 and r["load_s"] >= 0 and r["first_batch_ms"] > 0
        assert r["stages_p50_ms"]["compute"] > 0 and r["stages_p50_ms"]["postprocess"] is not None
        assert r["eval_tiles"] > 0 and 0 <= r["oa"] <= 1 and r["kappa"] is not None
        assert r["top1_agreement"] == pytest.approx(1.0) and r["max_abs_prob_diff"] < 1e-4  # parity with torch
    ort = _rows(report, "onnxruntime")[0]["engine"]
    assert ort["adapter"].startswith("esccs.runtime.load_model") and ort["backend.intra_op_threads"] == 1
    assert report["environment"]["threads"]["benchmark_threads"] == 1 and report["environment"]["libraries"]["numpy"]


def test_speedup_is_the_throughput_ratio_in_the_same_report(run):
    rows = run["report"]["rows"]
    ref = {r["batch"]: r["throughput"] for r in _rows(run["report"], "torch")}
    for r in rows:
        if r["status"] == "ok":
            assert r["speedup_vs_torch"] == pytest.approx(r["throughput"] / ref[r["batch"]])
    assert all(r["speedup_vs_torch"] == pytest.approx(1.0) for r in _rows(run["report"], "torch"))


def test_end_to_end_beside_backend_only(run):
    """The runtime's pipeline at the e2e batch size, for the backends esccs infer runs (not torch)."""
    for r in run["report"]["rows"]:
        if r["status"] != "ok":
            continue
        if r["batch"] != 4 or r["backend"] == "torch":
            assert r["e2e"] is None
            continue
        e = r["e2e"]
        assert e["status"] == "ok", e
        assert e["tiles"] > 0 and e["tiles_per_second"] > 0 and e["failed_tiles"] == 0 and e["passes"] >= 1
        assert e["ratio_to_backend_only"] == pytest.approx(e["tiles_per_second"] / r["throughput"])
        assert "run_inference" in e["pipeline"] and e["readers"] == 1
        assert e["backend_settings"]["intra_op_threads"] == 1  # the same loaded model as the backend-only row
    goal = next(g for g in run["report"]["goals"] if g["goal"].startswith("esccs infer end to end"))
    ort = next(r for r in run["report"]["rows"] if (r["backend"], r["batch"]) == ("onnxruntime", 4))
    assert goal["value"] == pytest.approx(ort["e2e"]["ratio_to_backend_only"], abs=1e-3)
    # a --min-time 0.02 run shows the figure but does not judge the goal; the verdict it would have is kept
    assert goal["status"] == "not judged" and "short run (--min-time 0.02 s" in goal["why"] and "tiles/s" in goal["why"]
    assert goal["verdict_if_judged"] == ("met" if goal["value"] >= goal["target"] else "not met")


def test_goals_are_judged_on_a_full_length_run_only(run):
    from esccs.benchmarks.goals import GOAL_MIN_TIME, evaluate_goals

    report = {**run["report"], "config": {**run["report"]["config"], "min_time": GOAL_MIN_TIME}}
    full = {g["goal"]: g for g in evaluate_goals(report)}
    short = {g["goal"]: g for g in run["report"]["goals"]}
    assert full.keys() == short.keys()
    for name, g in full.items():
        assert g["status"] in ("met", "not met", "not measured"), g
        if g["status"] != "not measured":
            assert short[name]["status"] == "not judged" and short[name]["verdict_if_judged"] == g["status"]
            assert short[name]["value"] == g["value"]


def test_failing_backends_are_rows_with_one_line_errors(run):
    report = run["report"]
    (int8,) = _rows(report, "onnxruntime-int8")
    assert int8["status"] == "error" and "INT8 model not found" in int8["error"] and "m.int8.onnx" in int8["error"]
    trt = _rows(report, "tensorrt")
    assert trt and all(r["status"] == "error" and "\n" not in r["error"] and r["error"] for r in trt)
    md = (run["out"] / "report.md").read_text()
    assert "| onnxruntime-int8 | int8 | n/a | error |" in md and "INT8 model not found" in md


def test_html_without_matplotlib_says_so(run, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib -> ImportError
    page = to_html(run["report"])
    assert "data:image/png" not in page and "matplotlib is not installed" in page
    assert "| torch | fp32 | 1 | ok |" in to_markdown(run["report"])


def test_missing_checkpoint_fails_only_the_torch_rows(tiny, tmp_path):
    model = tmp_path / "alone.onnx"
    shutil.copy(tiny["onnx"], model)  # no export sidecar, no checkpoint beside it
    found, why = find_checkpoint(model, read_meta(model))
    assert found is None and "--checkpoint" in why
    report = run_benchmark(BenchConfig(model=model, data=tiny["data"], backends=("torch", "onnxruntime"),
                                       batch_sizes=(2,), e2e_batch_sizes=(), min_time=0.0, warmup=0.0, min_iters=2,
                                       threads=1), log=lambda m: None)
    by = {r["backend"]: r for r in report["rows"]}
    assert by["torch"]["status"] == "error" and "--checkpoint" in by["torch"]["error"]
    assert by["onnxruntime"]["status"] == "ok" and by["onnxruntime"]["speedup_vs_torch"] is None


def test_checkpoint_beside_the_model_must_match_its_sha(tiny, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(tiny["onnx"], model)
    for name in ("m.safetensors", "m.json"):
        shutil.copy(tiny["root"] / name, tmp_path / name)
    found, why = find_checkpoint(model, read_meta(model))
    assert found == tmp_path / "m.safetensors" and "sha256" in why
    assert find_checkpoint(model, {"checkpoint_sha256": "0" * 64})[0] is None


def test_runtime_rows_feed_raw_tiles_to_a_model_without_baked_preprocessing(tiny, tmp_path):
    """A graph that expects normalised inputs is normalised once, by the runtime (never twice)."""
    plain = export_model(tiny["ckpt"], "onnx", tmp_path / "plain.onnx", exporter="legacy", preprocess=False,
                         print_fn=None).path
    from esccs.export.tiles import open_tiles, read_tiles

    eng_plain = load_engine("onnxruntime", "fp32", model=plain, checkpoint=None, int8_model=None, device="cpu",
                            threads=1)
    eng_baked = load_engine("onnxruntime", "fp32", model=tiny["onnx"], checkpoint=None, int8_model=None,
                            device="cpu", threads=1)
    cfg = eng_plain.model.info
    tiles = read_tiles(open_tiles(tiny["data"], cfg), cfg, 8)
    assert not cfg.preprocessing_baked and "normalised by the runtime" in eng_plain.info["inputs"]
    from esccs.benchmarks.timing import HostClock

    clock = HostClock()
    a = eng_plain.run(eng_plain.stage(tiles.raw), clock)
    b = eng_baked.predict_probs(tiles.raw)
    assert set(clock.finish()) == {"preprocess", "compute"}
    assert abs(a - b).max() < 1e-4


def test_plan_crosses_backends_with_the_precisions_they_run(tiny):
    cfg = BenchConfig(model=tiny["onnx"], data=tiny["data"], backends=("onnxruntime-int8", "onnxruntime", "torch"),
                      precisions=("fp32", "fp16")).resolved()
    assert plan(cfg) == [("torch", "fp32"), ("onnxruntime-int8", None), ("onnxruntime", "fp32"), ("torch", "fp16")]
    gpu = BenchConfig(model=tiny["onnx"], data=tiny["data"], device="cuda").resolved()
    assert 64 in gpu.batch_sizes and "torch-cudagraphs" in gpu.backends and gpu.e2e_batch_sizes == gpu.batch_sizes


def test_cli_help_explains_the_grid_and_the_subcommands():
    r = CliRunner().invoke(cli, ["benchmark", "--help"])
    assert r.exit_code == 0
    for word in ("--model", "--data", "--backends", "--batch-sizes", "--precisions", "--device", "--out",
                 "--checkpoint", "--threads", "--min-time", "synth", "ops", "train", "infer"):
        assert word in r.output
    assert CliRunner().invoke(cli, ["benchmark", "synth", "--help"]).exit_code == 0
    assert CliRunner().invoke(cli, ["benchmark", "infer", "--help"]).exit_code == 0


def test_cli_refuses_grid_options_before_a_subcommand_and_a_grid_without_data(tiny):
    r = CliRunner().invoke(cli, ["benchmark", "--model", str(tiny["onnx"]), "synth", "--samples", "1"])
    assert r.exit_code == 2 and "--model" in r.output and "synth" in r.output
    r = CliRunner().invoke(cli, ["benchmark", "--model", str(tiny["onnx"])])
    assert r.exit_code == 2 and "--data" in r.output
