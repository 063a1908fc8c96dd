"""Crash safety: a run killed with SIGKILL mid-way resumes to exactly one row per tile, as if never interrupted."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rt_helpers import PATCH, read_csv, read_json

from esccs.data.synth import SynthConfig, synthesize
from esccs.runtime import InferOptions, open_tiles, run_inference
from esccs.runtime.outputs import Manifest, iter_manifest

# `esccs infer` with a pause before every backend call, so a batch-size-4 run over 60 tiles takes seconds and can be
# killed between batches. Everything else is the real command (esccs.cli.main, as the console script runs it).
PAUSED_ESCCS = """
import sys, time
from esccs.runtime.model import Model
_predict, PAUSE = Model.predict, float(sys.argv[1])
def paused_predict(self, *args, **kwargs):
    time.sleep(PAUSE)
    return _predict(self, *args, **kwargs)
Model.predict = paused_predict
from esccs.cli import main
sys.argv = ["esccs", *sys.argv[2:]]
main()
"""


def _esccs() -> str:
    exe = shutil.which("esccs") or str(Path(sys.executable).parent / "esccs")
    assert Path(exe).is_file(), "the esccs console script is not installed"
    return exe


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def sixty_tiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume-data") / "d"
    synthesize(SynthConfig(out=out, samples=120, size=PATCH, patches_per_scene=6, workers=1, seed=9), progress=False)
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_one_row_per_tile(sixty_tiles, onnx_path, ort_model, tmp_path):
    jobs = open_tiles(sixty_tiles).jobs
    n = len(jobs)
    assert n == 60
    out = tmp_path / "res.csv"
    manifest = tmp_path / "res.manifest.jsonl"
    args = ["infer", str(sixty_tiles), "--model", str(onnx_path), "--out", str(out), "--batch-size", "4",
            "--threads", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_ESCCS, "0.15", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline, killed_at = time.monotonic() + 90, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = _lines(manifest)
            if 8 <= done < n:
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = done
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert killed_at is not None, f"the run was not caught mid-way (rc {proc.returncode}): {err.decode()[-800:]}"
    assert proc.returncode == -signal.SIGKILL
    before = _lines(manifest)
    assert killed_at <= before < n  # a batch may have landed between the poll and the kill, not all of them
    assert not out.exists()  # final tables are rendered only at the end
    # a kill -9 during a write leaves a torn last line; add one (whether or not this kill tore one)
    with open(manifest, "ab") as f:
        f.write(b'{"id":"torn-by-the-kill","status":"o')

    resumed = subprocess.run([_esccs(), *args, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_json(tmp_path / "res.summary.json")
    assert (summary["resumed_from"], summary["processed_this_run"], summary["classified"]) == (before, n - before, n)
    rows = read_csv(out)
    assert len(rows) == n and sorted(r["id"] for r in rows) == sorted(j.id for j in jobs)
    assert _lines(manifest) == n and b"torn-by-the-kill" not in manifest.read_bytes()

    # the same predictions as one uninterrupted run
    whole = tmp_path / "whole" / "res.csv"
    run_inference(open_tiles(sixty_tiles), ort_model, [whole], InferOptions(batch_size=4, progress=False))
    want = {r["id"]: r for r in read_csv(whole)}
    assert len(want) == n
    for r in rows:
        w = want[r["id"]]
        assert (r["class_index"], r["class_name"]) == (w["class_index"], w["class_name"]), r["id"]
        assert float(r["confidence"]) == pytest.approx(float(w["confidence"]), abs=2e-6), r["id"]
        assert float(r["w_optical"]) == pytest.approx(float(w["w_optical"]), abs=2e-6), r["id"]


def test_manifest_load_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "m.manifest.jsonl"
    m = Manifest(path)
    m.append([{"id": "a", "status": "ok"}, {"id": "b", "status": "error"}])
    m.append([{"id": "c", "status": "ok"}])
    m.close()
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"id": "d", "sta')
    rows = Manifest(path).load()
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert path.stat().st_size == good  # the torn tail is cut off the file, so appends start on a fresh line
    m = Manifest(path)
    m.append([{"id": "d", "status": "ok"}])
    m.close()
    assert [r["id"] for r in Manifest(path).load()] == ["a", "b", "c", "d"]
    # torn right before its newline: valid JSON, but not a finished record (the next append would glue onto it)
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"id": "e", "status": "ok"}')
    assert [r["id"] for r in Manifest(path).load()] == ["a", "b", "c", "d"]
    assert path.stat().st_size == good


def test_manifest_load_stops_at_a_complete_but_garbled_last_line(tmp_path):
    path = tmp_path / "m.manifest.jsonl"
    path.write_bytes(b'{"id": "a", "status": "ok"}\n{"id": "b", "sta\x00\x00\n')
    assert [r["id"] for r in Manifest(path).load()] == ["a"]
    assert path.read_bytes() == b'{"id": "a", "status": "ok"}\n'


def test_manifest_of_nothing(tmp_path):
    assert Manifest(tmp_path / "absent.jsonl").load() == []
    m = Manifest(tmp_path / "x.jsonl")
    m.append([])
    m.close()
    assert not (tmp_path / "x.jsonl").exists()


def test_iter_manifest_keeps_the_last_record_per_id_in_chunks(tmp_path):
    m = Manifest(tmp_path / "m.jsonl")
    m.append([{"id": "a", "v": 1}, {"id": "b", "v": 1}, {"id": "a", "v": 2}, {"id": "c", "v": 1}])
    m.close()
    chunks = list(iter_manifest(tmp_path / "m.jsonl", chunk=2))
    assert [len(c) for c in chunks] == [2, 1]
    assert [r for c in chunks for r in c] == [{"id": "b", "v": 1}, {"id": "a", "v": 2}, {"id": "c", "v": 1}]
    assert list(iter_manifest(tmp_path / "missing.jsonl")) == []
