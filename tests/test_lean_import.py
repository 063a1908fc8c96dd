"""The torch-free core and the runtime import without torch (an edge box has numpy, rasterio and an engine only)."""

import subprocess
import sys

import pytest

LEAN = ["esccs", "esccs.spec", "esccs.errors", "esccs.io.raster", "esccs.io.names", "esccs.io.atomic",
        "esccs.io.labels", "esccs.metrics", "esccs.runtime", "esccs.export", "esccs.io.layouts", "esccs.io.bands",
        "esccs.data.dataset", "esccs.data.split",
        "esccs.data.clouds", "esccs.data.speckle", "esccs.data.noise", "esccs.data.synth", "esccs.cli"]


@pytest.mark.parametrize("module", LEAN)
def test_module_imports_without_torch(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'triton') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} pulled in {out.strip()}"


def test_runtime_works_when_torch_cannot_be_imported(tmp_path):
    # A finder that makes `import torch` fail, as on an edge box without it.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'triton'):\n"
        "            raise ImportError('torch is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import esccs.runtime, esccs.io.raster, esccs.data.dataset\n"
        "print('ok', esccs.runtime.S2_BANDS[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok B01"


def test_cli_help_is_instant_and_torch_free():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom esccs.cli import cli\n"
            "r = CliRunner().invoke(cli, ['data', 'synth', '--help'])\nassert r.exit_code == 0, r.output\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
