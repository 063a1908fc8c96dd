"""The side folders export/, runtime/ and benchmarks/ install under the esccs name, editable and as a wheel."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIDE = {"esccs.export": "export", "esccs.runtime": "runtime", "esccs.benchmarks": "benchmarks"}


def _where(modules, cwd, env=None):
    code = "import importlib, sys\n" + "".join(
        f"print(importlib.import_module('{m}').__file__)\n" for m in modules)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_editable_install_maps_side_folders(tmp_path):
    files = _where(SIDE, cwd=tmp_path)  # outside the repo: only the installed mapping can find them
    for (mod, folder), f in zip(SIDE.items(), files):
        assert Path(f) == ROOT / folder / "__init__.py", (mod, f)


@pytest.mark.slow
def test_wheel_installs_side_folders_under_esccs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("esccs-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for folder in SIDE.values():
        assert f"esccs/{folder}/__init__.py" in names
        assert not any(n.startswith(f"{folder}/") for n in names), f"generic top-level {folder}/ in the wheel"
    assert "esccs/data/dataset.py" in names and "esccs/io/raster.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    # -S would drop numpy too; instead put the unpacked wheel first on the path and check where modules come from.
    files = _where(["esccs", *SIDE], cwd=tmp_path, env=env)
    assert all(Path(f).is_relative_to(site) for f in files), files
