"""The exactly-once contract of `--engine ray` without a cluster: shards, commits, merge and dedup, resume numbering,
the local engine's guard, the flags, and a missing Ray (these tests never start Ray)."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from esccs.cli import cli
from esccs.errors import ConfigError
from esccs.runtime import InferOptions, open_tiles, run_inference
from esccs.runtime.outputs import iter_manifest
from esccs.runtime.ray_engine import (
    committed_ids,
    merge_shards,
    next_run,
    plan_shards,
    shard_files,
    write_shard,
)
from esccs.runtime.sources import Job


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _jobs(n):
    return [Job(f"t{i:03d}", f"o/{i}.tif", f"s/{i}.tif") for i in range(n)]


def test_shards_are_deterministic_consecutive_slices_covering_every_job_once():
    jobs = _jobs(23)
    a, b = plan_shards(jobs, 5, 3), plan_shards(list(jobs), 5, 3)
    assert a == b and [name for name, _ in a] == [f"r003-{k:06d}.jsonl" for k in range(5)]
    assert [len(c) for _, c in a] == [5, 5, 5, 5, 3]
    assert [j for _, c in a for j in c] == jobs
    assert plan_shards([], 5, 1) == []
    with pytest.raises(ConfigError):
        plan_shards(jobs, 0, 1)


def test_a_new_run_never_reuses_a_run_number(tmp_path):
    assert next_run(tmp_path / "absent") == 1
    d = tmp_path / "p.shards"
    d.mkdir()
    (d / "run-001.json").write_text("{}")  # a run that started but committed nothing
    assert next_run(d) == 2
    write_shard(d / "r002-000000.jsonl", [{"id": "a", "status": "ok"}])
    (d / ".r007-000000.jsonl.tmp.jsonl").write_text("")  # a temporary file does not count
    assert next_run(d) == 3


def test_a_shard_exists_only_complete(tmp_path):
    path = tmp_path / "r001-000000.jsonl"
    with pytest.raises(TypeError):  # the writer fails half-way through the rows
        write_shard(path, [{"id": "a", "status": "ok"}, {"id": "b", "bad": object()}])
    assert not path.exists() and list(tmp_path.iterdir()) == []  # no file, no temporary left
    write_shard(path, [{"id": "a", "status": "ok"}, {"id": "b", "status": "error"}])
    assert [r["id"] for r in _rows(path)] == ["a", "b"] and shard_files(tmp_path) == [path]


def test_merge_keeps_one_row_per_tile_ok_beating_error(tmp_path):
    manifest, d = tmp_path / "p.manifest.jsonl", tmp_path / "p.shards"
    manifest.write_text('{"id":"a","status":"ok","v":1}\n{"id":"b","status":"error","v":1}\n'
                        '{"id":"z","sta')  # a local run's torn last line
    write_shard(d / "r001-000000.jsonl", [{"id": "b", "status": "ok", "v": 2}, {"id": "c", "status": "error", "v": 2}])
    write_shard(d / "r001-000001.jsonl", [{"id": "c", "status": "ok", "v": 3}, {"id": "d", "status": "ok", "v": 3}])
    write_shard(d / "r002-000000.jsonl", [{"id": "c", "status": "ok", "v": 4}, {"id": "e", "status": "error", "v": 4}])
    write_shard(d / "r002-scan.jsonl", [{"id": "f", "status": "error", "v": 5}])
    (d / ".r002-000001.jsonl.x1.jsonl").write_text('{"id":"g","status":"ok"}\n')  # never committed
    (d / "run-001.json").write_text("{}")
    assert committed_ids(manifest, d) == {"a", "b", "c", "d", "e", "f"}
    m = merge_shards(manifest, d)
    rows = _rows(manifest)
    assert [(r["id"], r["status"], r["v"]) for r in rows] == [("a", "ok", 1), ("b", "ok", 2), ("c", "ok", 3),
                                                              ("d", "ok", 3), ("e", "error", 4), ("f", "error", 5)]
    assert m == {"rows": 6, "duplicates": 3, "shards": 4}
    assert not d.exists()  # shards, markers and the temporary file are gone once the manifest holds every row
    assert [r["id"] for c in iter_manifest(manifest) for r in c] == ["a", "b", "c", "d", "e", "f"]
    assert merge_shards(manifest, d) == {"rows": 6, "duplicates": 0, "shards": 0}  # idempotent
    assert _rows(manifest) == rows


def test_the_local_engine_does_not_resume_over_an_unfinished_ray_run(synth_root, ort_model, tmp_path):
    out = tmp_path / "p.csv"
    write_shard(tmp_path / "p.shards" / "r001-000000.jsonl", [{"id": "x", "status": "ok"}])
    with pytest.raises(ConfigError, match="shards of an unfinished `--engine ray` run; finish it with --engine ray"):
        run_inference(open_tiles(synth_root), ort_model, [out], InferOptions(progress=False, resume=True))
    assert not out.exists()
    s = run_inference(open_tiles(synth_root), ort_model, [out], InferOptions(progress=False, overwrite=True))
    assert s["classified"] == 20 and not (tmp_path / "p.shards").exists()


@pytest.mark.parametrize("flag", [["--actors", "2"], ["--address", "auto"], ["--gpus-per-actor", "1"],
                                  ["--cpus-per-actor", "2"], ["--shard-size", "64"]])
def test_ray_flags_are_refused_by_the_local_engine(flag, synth_root, onnx_path, tmp_path):
    r = CliRunner().invoke(cli, ["infer", str(synth_root), "--model", str(onnx_path), "--out",
                                 str(tmp_path / "p.csv"), *flag])
    assert r.exit_code == 2 and f"{flag[0]} belong to --engine ray" in r.output
    assert not (tmp_path / "p.csv").exists()


def test_help_and_the_runtime_never_import_ray():
    code = ("import sys\nfrom click.testing import CliRunner\nimport esccs.runtime\nfrom esccs.cli import cli\n"
            "r = CliRunner().invoke(cli, ['infer', '--help'])\nassert r.exit_code == 0 and '--engine' in r.output\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ray_missing_gives_the_install_hint_in_one_line(synth_root, onnx_path, tmp_path):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ray':\n"
            "            raise ImportError('no ray here')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from esccs.cli import main\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code, "infer", str(synth_root), "--model", str(onnx_path), "--out",
                        str(tmp_path / "p.csv"), "--engine", "ray", "--quiet"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["Error: ray is needed for --engine ray: pip install 'esccs[ray]'"]
    assert not (tmp_path / "p.csv").exists()
