"""Reader worker processes: they fill shared-memory batch rows like threads do, and none outlives its run.

The cleanup tests run ``esccs infer`` / ``run_inference`` in a real subprocess, stop it with an exception or SIGINT
(to the whole process group, as Ctrl-C does), and then look in /proc for any process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from esccs.benchmarks.infer import tile_folder
from esccs.runtime import open_tiles
from esccs.runtime.pipeline import _read_one
from esccs.runtime.reader import Bands, TileReader
from esccs.runtime.workers import ProcessPool, make_pool, pool_kind
from esccs.spec import S1_BANDS, S2_BANDS

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find child processes")


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (zombies included: they are not cleaned up either)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_pool_kind_one_worker_is_a_thread_more_are_processes(monkeypatch):
    assert pool_kind(1) == "thread" and pool_kind(2) == "process"
    monkeypatch.setenv("ESCCS_READER_POOL", "thread")
    assert pool_kind(4) == "thread"


def test_worker_processes_fill_the_same_rows_as_a_thread(synth_root):
    jobs = open_tiles(synth_root).jobs[:10]
    p = 16
    reader = TileReader(Bands(S2_BANDS, S1_BANDS, p))
    got = {}
    for workers in (1, 2):
        pool = make_pool(reader, workers)
        slot = SimpleNamespace(optical=pool.buffer((len(jobs), 13, p, p)), sar=pool.buffer((len(jobs), 2, p, p)))
        slot.optical[:] = -1
        rows = [f.result(timeout=60) for f in pool.submit_batch(_read_one, reader, jobs, slot)]
        assert [r["id"] for r in rows] == [j.id for j in jobs] and all(r["status"] == "ok" for r in rows)
        got[workers] = (slot.optical.copy(), slot.sar.copy(), rows)
        names = [shm.name for shm, _ in getattr(pool, "_shm", {}).values()]
        pool.shutdown()
        reader.absorb(pool)
        if workers == 2:
            assert isinstance(pool, ProcessPool) and not _gone_within(pool.pids(), 5)
            assert names and not any(Path("/dev/shm", n).exists() for n in names)  # shared memory unlinked
    assert got[1][0].tobytes() == got[2][0].tobytes() and got[1][1].tobytes() == got[2][1].tobytes()
    assert got[1][2] == got[2][2]
    assert reader.stats()["files"]["fast"] == 2 * 3 * len(jobs)  # the workers' counts came back


RAISE_MIDWAY = r"""
import json, os, sys
from pathlib import Path
import esccs.runtime.pipeline as pl
from esccs.runtime import InferOptions, load_model, open_tiles, run_inference

pools = []
real = pl.make_pool
pl.make_pool = lambda *a, **k: pools.append(real(*a, **k)) or pools[-1]
model = load_model(sys.argv[1], device="cpu", threads=1)
calls = []
def boom(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("backend failed midway")
    return type(model).predict(model, *a, **k)
model.predict = boom
try:
    run_inference(open_tiles(sys.argv[2]), model, [Path(sys.argv[3])],
                  InferOptions(batch_size=8, readers=2, progress=False))
    err = None
except RuntimeError as e:
    err = str(e)
pool = pools[0]
alive = [p for p in pool.pids() if os.path.exists(f"/proc/{p}") and
         open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
print(json.dumps({"error": err, "kind": pool.kind, "pids": pool.pids(), "alive_after": alive}))
"""


def test_workers_are_gone_after_the_run_fails(onnx_path, synth_root, tmp_path):
    proc = subprocess.run([sys.executable, "-c", RAISE_MIDWAY, str(onnx_path), str(synth_root),
                           str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["error"] == "backend failed midway" and res["kind"] == "process" and len(res["pids"]) == 2
    assert res["alive_after"] == []  # joined inside run_inference, before the exception reached the caller
    assert _gone_within(res["pids"], 5) == []


@pytest.fixture(scope="module")
def many_tiles(synth_root, tmp_path_factory):
    """3000 tiles (hard links of the synthetic ones): a run that lasts seconds, long enough to interrupt."""
    return tile_folder(synth_root, 3000, tmp_path_factory.mktemp("many"))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "parent"])
def test_sigint_leaves_no_orphans(onnx_path, many_tiles, tmp_path, target):
    """Ctrl-C (SIGINT to the process group) or SIGINT to esccs alone, while 2 worker processes read."""
    folder = many_tiles
    manifest = tmp_path / "out.manifest.jsonl"
    cmd = [sys.executable, "-c", "from esccs.cli import main; main()", "infer", str(folder), "--model",
           str(onnx_path), "--out", str(tmp_path / "out.csv"), "--workers", "2", "--threads", "1", "--quiet",
           "--batch-size", "8"]
    env = {**os.environ, "ESCCS_READER": "rasterio"}  # the slower path: more time left to interrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=env, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 90
        seen: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:  # until the workers' first rows are written
            seen |= set(_children(proc.pid))
            if manifest.exists() and manifest.stat().st_size > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"esccs infer ended before it could be interrupted: {proc.communicate()}"
        seen |= set(_children(proc.pid))
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, (out, err)
    assert "interrupted; finished tiles are in the manifest" in err and "Traceback" not in err, err
    assert len(seen) >= 2
    assert _gone_within(sorted(seen), 10) == [], "processes esccs infer started outlived it"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_workers_exit_when_their_parent_is_killed(onnx_path, synth_root, tmp_path):
    """SIGKILL gives the parent no chance to clean up: the workers notice and exit on their own."""
    code = ("import sys, time\nfrom esccs.runtime.reader import Bands, TileReader\n"
            "from esccs.runtime.workers import ProcessPool\nfrom esccs.spec import S1_BANDS, S2_BANDS\n"
            "pool = ProcessPool(TileReader(Bands(S2_BANDS, S1_BANDS, 16)), 2)\n"
            "print(' '.join(map(str, pool.pids())), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    assert _gone_within(pids, 10) == []


IGNORE_SIGINT = r"""
import json, os, signal, sys, time
from types import SimpleNamespace
from esccs.runtime import open_tiles
from esccs.runtime.pipeline import _read_one
from esccs.runtime.reader import Bands, TileReader
from esccs.runtime.workers import ProcessPool
from esccs.spec import S1_BANDS, S2_BANDS
jobs = open_tiles(sys.argv[1]).jobs[:4]
reader = TileReader(Bands(S2_BANDS, S1_BANDS, 16))
pool = ProcessPool(reader, 2)
slot = SimpleNamespace(optical=pool.buffer((4, 13, 16, 16)), sar=pool.buffer((4, 2, 16, 16)))
for _ in range(20):  # until both workers have answered (imports done)
    [f.result(timeout=120) for f in pool.submit_batch(_read_one, reader, jobs, slot)]
try:
    os.killpg(os.getpgid(0), signal.SIGINT)  # Ctrl-C: the whole process group
    time.sleep(5)
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
time.sleep(1.0)
alive = [p.is_alive() for p in pool._procs]
ok = [f.result(timeout=60)["status"] for f in pool.submit_batch(_read_one, reader, jobs, slot)]
pool.shutdown()
print(json.dumps({"interrupted": interrupted, "alive": alive, "after": ok,
                  "exitcodes": [p.exitcode for p in pool._procs]}))
"""


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default. A shell runs background jobs with SIGINT ignored and
    Python keeps an inherited SIG_IGN, so without this a test started from `make test &` could never interrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_workers_ignore_sigint_and_exit_cleanly_on_shutdown(synth_root):
    """Ctrl-C is the parent's to handle: the workers keep reading until the parent shuts them down (exit 0)."""
    proc = subprocess.run([sys.executable, "-c", IGNORE_SIGINT, str(synth_root)], capture_output=True, text=True,
                          timeout=300, start_new_session=True, preexec_fn=_default_sigint)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["interrupted"] is True  # the parent got the KeyboardInterrupt
    assert res["alive"] == [True, True] and res["after"] == ["ok"] * 4  # the workers did not
    assert res["exitcodes"] == [0, 0]  # and left through the sentinel, not killed
    assert "Traceback" not in proc.stderr


def _my_nice(_reader=None, _job=None, _slot=None, _row=None) -> int:
    import threading

    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.parametrize("setting, shift", [(None, 3), ("0", 0), ("7", 7)])
def test_readers_run_below_the_backend_priority(synth_root, monkeypatch, setting, shift):
    """Reader threads and worker processes are niced (default 3); the calling (backend) thread is not."""
    from esccs.runtime.workers import READER_NICE

    assert READER_NICE == 3
    if setting is None:
        monkeypatch.delenv("ESCCS_READER_NICE", raising=False)
    else:
        monkeypatch.setenv("ESCCS_READER_NICE", setting)
    base = _my_nice()
    want = min(19, base + shift)
    reader = TileReader(Bands(S2_BANDS, S1_BANDS, 16))
    pool = make_pool(reader, 1)
    try:
        assert pool.submit(_my_nice).result(timeout=30) == want
    finally:
        pool.shutdown()
    assert _my_nice() == base  # only the reader thread was reniced
    jobs = open_tiles(synth_root).jobs[:2]
    pool = make_pool(reader, 2)
    try:
        slot = SimpleNamespace(optical=pool.buffer((2, 13, 16, 16)), sar=pool.buffer((2, 2, 16, 16)))
        [f.result(timeout=60) for f in pool.submit_batch(_read_one, reader, jobs, slot)]
        deadline = time.monotonic() + 60  # a worker renices itself first thing, once it has started
        while (got := [os.getpriority(os.PRIO_PROCESS, pid) for pid in pool.pids()]) != [want, want]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == [want, want]
    finally:
        pool.shutdown()
    assert _my_nice() == base


def test_a_bad_reader_nice_fails_in_one_line_before_any_worker_starts(monkeypatch):
    from esccs.errors import ConfigError

    monkeypatch.setenv("ESCCS_READER_NICE", "high")
    with pytest.raises(ConfigError, match=r"ESCCS_READER_NICE='high': expected an integer 0..19"):
        make_pool(TileReader(Bands(S2_BANDS, S1_BANDS, 16)), 2)
