"""The command line: help texts, one-line errors, and a synth -> info -> show run through click's runner."""

import json

import pytest
from click.testing import CliRunner

from esccs.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    assert "data" in r.output and "benchmark" in r.output and "Typical flow" in r.output


def test_synth_help_names_the_flags():
    r = run("data", "synth", "--help")
    assert r.exit_code == 0
    for flag in ("--samples", "--size", "--cloud-levels", "--seed", "--layout", "--resume"):
        assert flag in r.output


def _listed(text: str) -> set[str]:
    names = text.split(", a comma list")[0].replace("(upper bounds trained with target labels)", "")
    return {n.split(" (")[0].strip() for n in names.split(",")}


def test_train_help_names_every_method_and_ablation():
    # The help strings are spelled out so that --help stays torch-free; a method or ablation added to the registry
    # must be added there too.
    from esccs.cli.train import ABLATION_HELP, METHOD_HELP
    from esccs.train.methods import ABLATION_NAMES, METHODS

    assert _listed(METHOD_HELP) == set(METHODS)
    assert _listed(ABLATION_HELP) == set(ABLATION_NAMES)
    r = run("train", "--help")
    assert r.exit_code == 0
    assert "no-radiometric,no-calibration" in "".join(r.output.split())


def test_bad_flag_values_are_one_line_errors(tmp_path):
    r = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--cloud-levels", "0,abc"])
    assert r.exit_code == 2 and "expected comma-separated numbers" in r.output
    r = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--samples", "2"])
    assert r.exit_code == 1 and r.output.strip().startswith("Error: --samples must be at least 4")
    assert "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["data", "info", str(tmp_path)])
    assert r.exit_code == 1 and "empty folder" in r.output and len(r.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_synth_info_show_end_to_end(tmp_path):
    out = tmp_path / "d"
    r = run("data", "synth", str(out), "--samples", "30", "--size", "32", "--patches-per-scene", "5",
            "--workers", "1", "--quiet")
    assert r.exit_code == 0, r.output
    assert "wrote 30 samples" in r.output and "cloud levels" in r.output
    r = run("data", "info", str(out), "--json")
    info = json.loads(r.output)
    assert info["source"]["samples"] + info["target"]["samples"] == 30
    assert info["target"]["layout"] == "sen12ms-cr" and info["source"]["skipped"] == 0
    r = run("data", "show", str(out), "--out", str(tmp_path / "q.png"), "-n", "3")
    assert r.exit_code == 0 and (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
