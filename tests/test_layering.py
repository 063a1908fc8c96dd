"""Imports flow one way: core <- runtime <- export <- benchmarks; the runtime never imports torch or triton.

import-linter covers the ``esccs/`` folder; the side folders that setup.py installs as ``esccs.export``,
``esccs.runtime`` and ``esccs.benchmarks`` live outside it, so their imports are read here with ``ast``. Export
checks parity through the runtime users run (``esccs.runtime``), so export sits above the runtime. The runtime takes
layouts and band orders from ``esccs.io``; of ``esccs.data`` it may use only the numpy normaliser.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: side folder -> top-level modules it must never import (anywhere in the file, function bodies included)
FORBIDDEN = {
    "export": ("esccs.benchmarks", "esccs.cli", "esccs.train"),
    "runtime": ("esccs.benchmarks", "esccs.cli", "esccs.export", "esccs.train", "esccs.ops", "esccs.data", "torch",
                "triton"),
    "benchmarks": ("esccs.cli",),
}
#: the one runtime module allowed to import torch (lazily): the optional checkpoint backend
TORCH_OK = {"runtime/backends/torch_backend.py"}
#: modules below a banned package that a side folder may still import (numpy-only pieces)
ALLOWED = {"runtime": ("esccs.data.transforms",)}


def imports_of(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _files():
    return [(folder, p) for folder in FORBIDDEN for p in sorted((ROOT / folder).rglob("*.py"))]


@pytest.mark.parametrize("folder,path", _files(), ids=lambda v: str(v).split("/main/")[-1])
def test_side_packages_respect_the_layers(folder, path):
    rel = str(path.relative_to(ROOT))
    banned = [b for b in FORBIDDEN[folder] if not (rel in TORCH_OK and b == "torch")]
    allowed = ALLOWED.get(folder, ())
    bad = [m for m in imports_of(path) if any(m == b or m.startswith(b + ".") for b in banned) and m not in allowed]
    assert not bad, f"{rel} imports {bad}"


def test_the_checker_sees_violations(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    import torch.nn\n    from esccs.benchmarks import synth\n")
    assert imports_of(f) == ["torch.nn", "esccs.benchmarks"]
