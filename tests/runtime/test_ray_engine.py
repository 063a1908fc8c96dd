"""`esccs infer --engine ray` on a real local Ray cluster: the local engine's results, exactly once, under faults.

One Ray for the whole session: a two-"node" ``ray.cluster_utils.Cluster`` (2 logical CPUs per node, no dashboard),
shut down after. Tests that kill things run their driver as a subprocess joined to that cluster, with a job-level
``worker_process_setup_hook`` that pauses every backend call in the actors (so a run lasts seconds and can be caught
mid-way); everything else is the real command.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rt_helpers import PATCH, read_csv, read_json, write_tif
from test_infer_bad_input import BAD, bad_folder  # noqa: F401 - the runtime's bad tiles, as a fixture

from esccs.data.synth import SynthConfig, synthesize
from esccs.runtime import InferOptions, open_scene, open_tiles, run_inference

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'esccs[ray]'")

from esccs.runtime.ray_engine import RayOptions, run_inference_ray  # noqa: E402

pytestmark = pytest.mark.slow

# `esccs infer` joined to the session's cluster with a pause before every backend call inside the actors.
PAUSED_DRIVER = """
import sys
import ray

def pause_backend(pause=float(sys.argv[2])):
    import time
    from esccs.runtime.model import Model
    predict = Model.predict
    def paused(self, *args, **kwargs):
        time.sleep(pause)
        return predict(self, *args, **kwargs)
    Model.predict = paused

ray.init(address=sys.argv[1], include_dashboard=False, logging_level="ERROR",
         runtime_env={"worker_process_setup_hook": pause_backend})
from esccs.cli import main
sys.argv = ["esccs", *sys.argv[3:]]
main()
"""
ACTOR_TITLE = b"ray::MapWorker(MapBatches(ShardWorker))"


@pytest.fixture(scope="session")
def cluster():
    """Two Ray "nodes" of 2 logical CPUs each on this machine, the test process connected as a driver."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False,
                                                      "object_store_memory": 80 * 2**20})
    c.add_node(num_cpus=2, object_store_memory=80 * 2**20)
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR")
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """48 tiles of 16 px (paired SEN12MS-CR layout of an `esccs data synth` folder)."""
    out = tmp_path_factory.mktemp("ray-data") / "d"
    synthesize(SynthConfig(out=out, samples=96, size=PATCH, patches_per_scene=6, workers=1, seed=11), progress=False)
    assert len(open_tiles(out).jobs) == 48
    return out


@pytest.fixture(scope="module")
def local_run(tiles, ort_model, tmp_path_factory):
    """The local engine over the same tiles: the reference, row by row."""
    out = tmp_path_factory.mktemp("ray-local") / "p.csv"
    outs = [out, out.with_suffix(".geojson"), out.with_suffix(".parquet")]
    run_inference(open_tiles(tiles), ort_model, outs, InferOptions(batch_size=4, progress=False))
    return outs


def _by_id(rows):
    return {r["id"]: r for r in rows}


def _same_predictions(rows, want):
    assert len(rows) == len(want) and sorted(r["id"] for r in rows) == sorted(want)
    for r in rows:
        assert r == want[r["id"]], r["id"]  # every column, as written: class, confidence, top-3, weights, footprint


def _committed(shards: Path) -> list[Path]:
    return sorted(p for p in shards.glob("r*.jsonl")) if shards.is_dir() else []


def _actor_pids(cluster) -> list[int]:
    """Our ShardWorker actors on the session's cluster only: children of its raylets (other Ray jobs on this machine,
    another session's tests or a benchmark, are never touched)."""
    raylets = {str(n.all_processes["raylet"][0].process.pid) for n in [cluster.head_node, *cluster.worker_nodes]}
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = (d / "stat").read_text().rsplit(")", 1)[1].split()[1]
                if ppid in raylets and (d / "cmdline").read_bytes().startswith(ACTOR_TITLE):
                    pids.append(int(d.name))
            except (OSError, IndexError):
                pass
    return pids


def _paused(cluster, pause, args):
    return subprocess.Popen([sys.executable, "-c", PAUSED_DRIVER, cluster.address, str(pause), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(pred, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------------------------------------------ parity
def test_ray_matches_the_local_engine_tile_by_tile_on_two_nodes(cluster, tiles, local_run, ort_model, tmp_path):
    out = tmp_path / "p.csv"
    outs = [out, out.with_suffix(".geojson"), out.with_suffix(".parquet")]
    s = run_inference_ray(open_tiles(tiles), ort_model, outs, InferOptions(batch_size=4, progress=False),
                          RayOptions(actors=2, cpus_per_actor=2, shard_size=8))
    assert out.read_bytes() == local_run[0].read_bytes()  # same rows, same order, same digits
    assert outs[1].read_bytes() == local_run[1].read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_table(outs[2]).equals(pq.read_table(local_run[2]))
    assert out.with_name("p.errors.csv").read_text() == "id,path,reason\n"
    # the summary: the local engine's fields plus the Ray settings and per-actor figures
    assert s["engine"] == "ray" and (s["jobs"], s["classified"], s["failed"], s["processed_this_run"]) == (48, 48, 0,
                                                                                                          48)
    r = s["ray"]
    assert (r["nodes"], r["cpus"], r["actors"], r["threads_per_actor"], r["shards_this_run"]) == (2, 4.0, 2, 2, 6)
    assert s["backend_settings"]["intra_op_threads"] == 2  # the actors' ORT threads = their CPUs, not the machine's
    assert r["first_result_seconds"] > 0 and r["merged"] == {"rows": 48, "duplicates": 0, "shards": 6}
    actors = s["actors"]
    # one actor per node (2 CPUs each); which of the two actors got shards is Ray Data's scheduling: when one actor
    # starts late (a loaded machine), the first can take all 6 shards, so only actors that ran one are listed
    assert 1 <= len(actors) <= 2 and len({a["node"] for a in actors}) == len(actors)
    assert sum(a["tiles"] for a in actors) == 48 and sum(a["shards"] for a in actors) == 6
    for a in actors:
        assert a["tiles_per_second"] > 0 and a["waiting_for_reads_seconds"] >= 0 and a["restarts"] == 0
    assert read_json(out.with_name("p.summary.json"))["actors"] == actors
    assert not out.with_name("p.shards").exists()  # merged into the manifest
    manifest = [json.loads(x) for x in out.with_name("p.manifest.jsonl").read_text().splitlines()]
    assert sorted(m["id"] for m in manifest) == sorted(j.id for j in open_tiles(tiles).jobs)


def test_ray_scene_maps_match_the_local_engine(cluster, ort_model, tmp_path):
    rng = np.random.default_rng(3)
    h, w = 53, 70
    y, x = np.mgrid[0:h, 0:w]
    optical = np.clip(rng.normal(1500, 300, (13, h, w)) * (0.3 + 2.5 * x / w)[None], 0, 12000).astype(np.uint16)
    sar = (np.stack([-20 + 14 * y / h, -25 + 10 * x / w]) + rng.normal(0, 1, (2, h, w))).astype(np.float32)
    o, s1 = write_tif(tmp_path / "s2.tif", optical, block=16), write_tif(tmp_path / "s1.tif", sar, block=16)
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine / "scene.csv"
        source = open_scene(o, s1, PATCH, 8)
        opts = InferOptions(batch_size=8, progress=False)
        if engine == "local":
            run_inference(source, ort_model, [out], opts)
        else:
            s = run_inference_ray(source, ort_model, [out], opts, RayOptions(actors=2, shard_size=8))
            assert s["classified"] == len(source.jobs) == 6 * 8 and s["grid"]["rows"] == 6
        outs[engine] = out
    assert outs["ray"].read_bytes() == outs["local"].read_bytes()
    for suffix in (".class.tif", ".confidence.tif"):
        with rasterio.open(outs["local"].with_name("scene" + suffix)) as a, \
                rasterio.open(outs["ray"].with_name("scene" + suffix)) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
            np.testing.assert_array_equal(a.read(), b.read())


def test_every_bad_tile_gives_the_same_reason_under_ray(cluster, bad_folder, ort_model, tmp_path):  # noqa: F811
    opts = InferOptions(batch_size=4, progress=False)
    run_inference(open_tiles(bad_folder), ort_model, [tmp_path / "local" / "r.csv"], opts)
    s = run_inference_ray(open_tiles(bad_folder), ort_model, [tmp_path / "ray" / "r.csv"], opts,
                          RayOptions(actors=2, shard_size=4))
    local_err = read_csv(tmp_path / "local" / "r.errors.csv")
    ray_err = read_csv(tmp_path / "ray" / "r.errors.csv")
    assert sorted(r["id"] for r in ray_err) == sorted(BAD)
    assert sorted(map(tuple, (r.values() for r in ray_err))) == sorted(map(tuple, (r.values() for r in local_err)))
    for r in ray_err:
        folder, words = BAD[r["id"]]
        assert r["path"] == str(bad_folder / folder / f"{r['id']}.tif") and words in r["reason"], r
    assert read_csv(tmp_path / "ray" / "r.csv") == read_csv(tmp_path / "local" / "r.csv")  # the good tile
    local_s = read_json(tmp_path / "local" / "r.summary.json")
    assert (s["classified"], s["failed"], s["failure_reasons"]) == (1, len(BAD), local_s["failure_reasons"])


# ------------------------------------------------------------------------------------------------------ faults
def test_an_actor_killed_mid_run_leaves_one_row_per_tile(cluster, tiles, local_run, onnx_path, tmp_path):
    out = tmp_path / "p.csv"
    args = ["infer", str(tiles), "--model", str(onnx_path), "--out", str(out), "--engine", "ray", "--address",
            cluster.address, "--actors", "2", "--batch-size", "4", "--shard-size", "4", "--quiet"]
    proc = _paused(cluster, 0.15, args)
    shards = out.with_name("p.shards")
    try:
        caught = _wait_for(lambda: len(_committed(shards)) >= 1, 400, proc)
        committed_at_kill, victims = len(_committed(shards)), _actor_pids(cluster)
        assert caught and victims, "the run was not caught mid-way"
        os.kill(victims[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert committed_at_kill < 12  # 48 tiles in shards of 4: the kill landed with work left
    assert proc.returncode == 0, err.decode()[-1500:]
    assert not Path(f"/proc/{victims[0]}").exists()
    _same_predictions(read_csv(out), _by_id(read_csv(local_run[0])))
    s = read_json(out.with_name("p.summary.json"))
    assert (s["classified"], s["failed"], s["ray"]["merged"]["rows"]) == (48, 0, 48)


def test_a_killed_driver_resumes_to_one_row_per_tile(cluster, tiles, local_run, onnx_path, tmp_path):
    out = tmp_path / "p.csv"
    args = ["infer", str(tiles), "--model", str(onnx_path), "--out", str(out), "--engine", "ray", "--address",
            cluster.address, "--actors", "2", "--batch-size", "4", "--shard-size", "4", "--quiet"]
    proc = _paused(cluster, 0.2, args)
    shards = out.with_name("p.shards")
    try:
        caught = _wait_for(lambda: len(_committed(shards)) >= 2, 400, proc)
        assert caught, f"the run was not caught mid-way (rc {proc.poll()})"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert _wait_for(lambda: not _actor_pids(cluster), 120), "the dead driver's actors were not reaped"
    before = sum(len(p.read_text().splitlines()) for p in _committed(shards))
    assert 8 <= before < 48 and not out.exists()  # shards committed, tables only at the end
    # a writer killed mid-shard leaves its temporary file: never committed, never read, removed
    (shards / ".r001-000099.jsonl.abc123.jsonl").write_text('{"id": "half-written", "sta')

    resumed = subprocess.run([sys.executable, "-c", "from esccs.cli import main; main()", *args, "--resume"],
                             capture_output=True, text=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    s = read_json(out.with_name("p.summary.json"))
    assert (s["resumed_from"], s["processed_this_run"], s["classified"]) == (before, 48 - before, 48)
    assert s["ray"]["run"] == 2
    _same_predictions(read_csv(out), _by_id(read_csv(local_run[0])))
    manifest = out.with_name("p.manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 48 and b"half-written" not in out.with_name("p.manifest.jsonl").read_bytes()
    assert not shards.exists() and not list(tmp_path.glob(".*"))  # no shard, marker or temporary file left


def test_an_unreachable_address_fails_in_one_line(onnx_path, tiles, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", "from esccs.cli import main; main()", "infer", str(tiles), "--model",
                        str(onnx_path), "--out", str(tmp_path / "p.csv"), "--engine", "ray", "--address",
                        f"127.0.0.1:{port}", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and time.monotonic() - t < 60
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert lines == [f"Error: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused): start it "
                     "there with `ray start --head`, or leave --address out to run on a local Ray"], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.csv").exists()
