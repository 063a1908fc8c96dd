"""``make gpu-wheels``: download, on this machine, the wheels a bare GPU machine needs to install this package.

The GPU machine (the device tool's ``nvidia-h200``: Python 3.12, x86-64 Linux, no network) already has a CUDA torch,
triton, onnx, onnxscript, onnxruntime (CPU), numpy and matplotlib; those are never downloaded (:data:`PROVIDED`) and
the check pins them while it installs. Everything else the package needs at run time (its base requirements and the
``train`` extra: rasterio, click, tqdm, safetensors, pyyaml ...) is fetched as binary wheels for that Python, with
each wheel's own requirements followed until nothing is missing, plus the build backend of ``pip install -e .``
(``setuptools``, ``wheel`` from pyproject.toml's ``[build-system]``). Versions are pinned to the ones installed here
(the ones the test suite ran with) where they satisfy the requirement.

Writes ``<dest>/`` whole or not at all (a fresh ``<dest>.tmp`` renamed into place): the wheels, ``requirements.txt``
(the package's own requirement lines, so pip on the GPU machine installs only what is missing there) and
``manifest.json``. Fails, saying why, when a wheel is missing for that platform or the total is over
:data:`LIMIT_MIB` (the device tool carries at most 64 MiB, the working tree included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
#: on the GPU machine's image already; never downloaded (the check pins the first five while it installs)
PROVIDED = frozenset(canonicalize_name(n) for n in ("torch", "triton", "onnx", "onnxruntime", "numpy", "onnxscript",
                                                    "matplotlib", "onnxruntime-gpu", "tensorrt", "cuda-python"))
#: extras of the package the check needs beside its base requirements
EXTRAS = ("train",)
LIMIT_MIB = 64.0


def target_environment() -> dict[str, str]:
    """PEP 508 marker values of the GPU machine (CPython 3.12 on x86-64 Linux)."""
    env = dict(default_environment())
    env.update(python_version=TARGET_PYTHON, python_full_version=f"{TARGET_PYTHON}.3", implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
               os_name="posix", platform_machine="x86_64")
    return env


def applies(req: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    """Whether ``req`` is needed on the GPU machine with ``extras`` asked for."""
    if req.marker is None:
        return True
    env = target_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras)


def package_requirements(dist: str = "esccs") -> list[Requirement]:
    """The installed package's base + :data:`EXTRAS` requirements that the GPU machine does not provide."""
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    return [r for r in reqs if applies(r, ("", *EXTRAS)) and canonicalize_name(r.name) not in PROVIDED]


def build_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """``[build-system] requires`` (what ``pip install -e .`` builds with in its isolated environment)."""
    return [Requirement(r) for r in tomllib.loads(pyproject.read_text())["build-system"]["requires"]]


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """A wheel's ``Requires-Dist`` lines that apply on the GPU machine (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if applies(r)]


def pinned(req: Requirement) -> str:
    """``name==<version installed here>`` when that version satisfies ``req``, else ``req`` as written."""
    try:
        here = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return str(req)
    return f"{req.name}=={here}" if req.specifier.contains(here, prereleases=True) else str(req)


def download(specs: list[str], dest: Path) -> None:
    """``pip download`` binary wheels of ``specs`` (no dependencies) for the GPU machine's Python into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
           "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp",
           *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *specs]
    print("$ " + " ".join(cmd[:4] + ["..."] + specs), flush=True)
    if subprocess.run(cmd).returncode:
        raise SystemExit(f"gpu-wheels: pip download failed for {' '.join(specs)} (no wheel for CPython "
                         f"{TARGET_PYTHON} on {PLATFORMS[0]} or older?)")


def wheels_by_name(folder: Path) -> dict[str, Path]:
    """``{canonical name: wheel}``; fails when a name has two wheels (pip would refuse the install)."""
    out: dict[str, Path] = {}
    for w in sorted(folder.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(w.name)[0])
        if name in out:
            raise SystemExit(f"gpu-wheels: two wheels of {name}: {out[name].name}, {w.name}")
        out[name] = w
    return out


def collect(dest: Path, top: list[Requirement]) -> dict[str, Path]:
    """Download ``top`` and, round by round, every requirement of the downloaded wheels not provided there."""
    want = [pinned(r) for r in top]
    while want:
        download(want, dest)
        have = wheels_by_name(dest)
        missing = {canonicalize_name(r.name): r for w in have.values() for r in wheel_requirements(w)
                   if canonicalize_name(r.name) not in have and canonicalize_name(r.name) not in PROVIDED}
        want = [pinned(r) for r in missing.values()]
    return wheels_by_name(dest)


def tree_mib(root: Path = ROOT) -> float:
    """MiB of what the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    return sum((root / p).stat().st_size for p in out.decode().split("\0") if p and (root / p).is_file()) / 2**20


def check_size(wheels: dict[str, Path], limit_mib: float = LIMIT_MIB, tree: float = 0.0) -> float:
    """Print every wheel and the total; fail when wheels (+ the working tree) exceed ``limit_mib``."""
    total = sum(w.stat().st_size for w in wheels.values()) / 2**20
    for w in sorted(wheels.values(), key=lambda p: -p.stat().st_size):
        print(f"  {w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"gpu-wheels: {len(wheels)} wheels, {total:.1f} MiB in all (limit {limit_mib:g} MiB); with the working "
          f"tree ({tree:.1f} MiB) {total + tree:.1f} MiB travel")
    if total > limit_mib:
        raise SystemExit(f"gpu-wheels: the wheels are {total:.1f} MiB, over the {limit_mib:g} MiB the device tool "
                         "carries")
    if total + tree > limit_mib:
        raise SystemExit(f"gpu-wheels: wheels + working tree = {total + tree:.1f} MiB, over the {limit_mib:g} MiB "
                         "the device tool carries")
    return total


def main(argv: list[str] | None = None) -> int:
    """Make the wheels folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(ROOT / ".gpu-wheels"), help="wheels folder [.gpu-wheels]")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="fail above this total")
    args = parser.parse_args(argv)
    dest = Path(args.dest).resolve()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    top = package_requirements()
    wheels = collect(tmp, top + build_requirements())
    total = check_size(wheels, args.limit_mib, tree_mib() if (ROOT / ".git").exists() else 0.0)
    (tmp / "requirements.txt").write_text("# what `make gpu-check` installs (pip keeps what the machine has)\n"
                                          + "\n".join(f"{r.name}{r.specifier}" for r in top) + "\n")
    (tmp / "manifest.json").write_text(json.dumps({
        "python": TARGET_PYTHON, "platforms": PLATFORMS, "provided_by_the_machine": sorted(PROVIDED),
        "total_mib": round(total, 2), "wheels": {n: w.name for n, w in sorted(wheels.items())}}, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"gpu-wheels: wrote {dest} (carry it: run(carry=['{dest.name}'], command='make gpu-check'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
