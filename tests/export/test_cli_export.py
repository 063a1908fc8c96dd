from click.testing import CliRunner

from esccs.cli import cli
from esccs.export.onnx import read_metadata


def test_cli_exports_onnx(checkpoint, tmp_path):
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(cli, ["export", str(checkpoint), "--format", "onnx", "--out", str(out),
                                 "--exporter", "legacy", "--no-preprocess"])
    assert r.exit_code == 0, r.output
    assert f"Export OK: onnx -> {out}" in r.output and "parity PASS" in r.output
    assert "esccs infer TILES --model" in r.output and "esccs benchmark --model" in r.output
    assert read_metadata(out)["preprocessing_baked"] is False
    assert (tmp_path / "cli.parity.json").is_file()


def test_cli_errors_are_one_line(checkpoint, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["export", str(checkpoint), "--format", "onxx"])
    assert r.exit_code == 1 and r.output.strip() == "Error: unknown export format 'onxx'; did you mean 'onnx'?"
    r = runner.invoke(cli, ["export", str(checkpoint), "--batch-max", "8"])
    assert r.exit_code == 1 and "'batch_max' is not valid for format 'onnx' (only for trt)" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["export", str(tmp_path / "none.safetensors")])
    assert r.exit_code == 1 and "checkpoint file not found" in r.output and "Traceback" not in r.output


def test_cli_help_lists_formats():
    r = CliRunner().invoke(cli, ["export", "--help"])
    assert r.exit_code == 0 and "onnx-int8" in r.output and "tensorrt" in r.output and "--precision" in r.output
