"""The runtime runs a whole folder with `import torch` made impossible (an edge box: numpy, rasterio, onnxruntime)."""

import json
import subprocess
import sys

from rt_helpers import read_csv, read_jobs

from esccs.runtime import open_tiles

BLOCKED = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'triton'):
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, Block())
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
import esccs.runtime as rt
model = rt.load_model(sys.argv[1], device='cpu', threads=1)
s = rt.run_inference(rt.open_tiles(sys.argv[2]), model, [sys.argv[3]], rt.InferOptions(batch_size=8, progress=False))
try:
    rt.load_model(sys.argv[4])
    ckpt = 'loaded'
except Exception as e:
    ckpt = f'{type(e).__name__}: {e}'
print(json.dumps({'blocked': blocked, 'torch': 'torch' in sys.modules, 'triton': 'triton' in sys.modules,
                  'classified': s['classified'], 'failed': s['failed'], 'backend': s['backend'], 'ckpt': ckpt}))
"""


def test_folder_inference_without_torch(onnx_path, checkpoint, synth_root, ort_model, tmp_path):
    out = tmp_path / "lean.csv"
    proc = subprocess.run([sys.executable, "-c", BLOCKED, str(onnx_path), str(synth_root), str(out), str(checkpoint)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["blocked"] is True  # the finder really stops torch
    assert res["torch"] is False and res["triton"] is False
    jobs = open_tiles(synth_root).jobs
    assert (res["classified"], res["failed"], res["backend"]) == (len(jobs), 0, "onnxruntime")
    # the checkpoint backend is the only one that needs torch: a one-line install hint, not a traceback
    assert res["ckpt"].startswith("DependencyMissingError: torch is needed for the torch backend")
    assert "pip install 'esccs[train]'" in res["ckpt"] and "\n" not in res["ckpt"]
    rows = {r["id"]: int(r["class_index"]) for r in read_csv(out)}
    probs = ort_model.predict(*read_jobs(jobs, ort_model.info))["probs"]
    assert rows == {j.id: int(probs[k].argmax()) for k, j in enumerate(jobs)}
