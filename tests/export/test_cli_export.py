import re

from click.testing import CliRunner

from esccs.cli import cli
from esccs.export import FORMATS
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


def _help_entries(text: str) -> dict[str, str]:
    """``esccs export --help`` options block -> ``{flag: help text}`` (continuation lines joined)."""
    block = text.split("Options:\n", 1)[1]
    entries: dict[str, list[str]] = {}  # flag -> [help text, negative flag, metavar]
    current = None
    for line in block.splitlines():
        if not line.strip() or not line.startswith(" "):
            break
        m = re.match(r"^  (-\w, )?(--[a-z0-9-]+)( / --no-[a-z0-9-]+)?( \S+)?(\s{2,}(.*))?$", line)
        if m:
            current = m.group(2)
            entries[current] = [m.group(6) or "", m.group(3) or "", m.group(4) or ""]
        else:
            entries[current][0] += " " + line.strip()
    return entries


def _shown(value, option) -> str:
    """How the table's default must read in --help (written here, not taken from the code under test)."""
    if value is None:
        return option.default_text
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_help_lists_every_option_of_the_table_with_the_tables_default():
    r = CliRunner().invoke(cli, ["export", "--help"], terminal_width=400, max_content_width=400)
    assert r.exit_code == 0, r.output
    entries = _help_entries(r.output)
    table: dict[str, dict] = {}
    for f in FORMATS:
        for o in f.options:
            table.setdefault(o.name, {})[f.name] = o
    assert set(entries) == {"--" + n.replace("_", "-") for n in table} | {"--format", "--out", "--help"}
    for name, by_format in table.items():
        flag = "--" + name.replace("_", "-")
        text, negative, metavar = entries[flag]
        m = re.search(r"\[(?:formats: ([^;\]]+); )?default: ([^\]]+)\]$", text)
        assert m, f"{flag}: no [default: ...] in {text!r}"
        formats, default = m.groups()
        if len(by_format) == len(FORMATS):
            assert formats is None, flag
        else:
            assert formats.split(", ") == list(by_format), flag
        shown = {_shown(o.default, o) for o in by_format.values()}
        assert len(shown) == 1, f"{flag}: defaults differ between formats: handle it in this test"
        assert default == shown.pop(), flag
        o = next(iter(by_format.values()))
        assert (negative == f" / --no-{flag[2:]}") == (o.type is bool), flag
        if o.choices:
            assert metavar.strip() == "[" + "|".join(o.choices) + "]", flag
    assert "--calib-samples" in entries and entries["--calib-samples"][0].endswith("default: 512]")


def test_help_epilog_lists_every_format_with_all_its_aliases_and_rules():
    r = CliRunner().invoke(cli, ["export", "--help"], terminal_width=400, max_content_width=400)
    epilog = r.output.split("Formats (aliases)", 1)[1]
    for f in FORMATS:
        assert f"  {f.name} ({', '.join(f.aliases)}): " in epilog
    assert "flip rate <= 1.0%" in epilog and "OA loss <= 1.0 points" in epilog and "max |d logit| <= 1e-04" in epilog
