"""Install ESCCS. The top-level folders export/, runtime/ and benchmarks/ install under the esccs name.

So no generic top-level module such as ``runtime`` lands in site-packages: ``export`` -> ``esccs.export``,
``runtime`` -> ``esccs.runtime``, ``benchmarks`` -> ``esccs.benchmarks`` (editable and wheel installs alike).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "esccs" / "__init__.py").read_text()).group(1)

SIDE_FOLDERS = {"esccs.export": "export", "esccs.runtime": "runtime", "esccs.benchmarks": "benchmarks"}
packages = find_packages(include=["esccs", "esccs.*"])
for name, folder in SIDE_FOLDERS.items():
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(
    name="esccs",
    version=VERSION,
    description="Land-cover scene classification under clouds: optical -> optical+SAR transfer, export, runtime",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"esccs": "esccs", **SIDE_FOLDERS},
    include_package_data=False,
    # Base install = what the torch-free runtime needs on an edge box.
    install_requires=["numpy>=1.24", "rasterio>=1.3", "click>=8.1", "tqdm>=4.60", "onnxruntime>=1.17"],
    extras_require={
        # Training, fused kernels, export. torch first from the CPU wheel on CPU machines (see the Makefile).
        "train": ["torch>=2.4", "triton>=3.0", "onnx>=1.16", "onnxscript>=0.2", "safetensors>=0.4", "pyyaml>=6",
                  "matplotlib>=3.7"],
        "viz": ["matplotlib>=3.7"],
        # GPU hosts: onnxruntime-gpu provides the same `onnxruntime` module as onnxruntime; install only one of
        # them (pip uninstall onnxruntime first), otherwise whichever was installed last silently wins.
        # cuda-python gives the TensorRT runtime its pinned/device buffers, streams and CUDA graphs without torch.
        "gpu": ["onnxruntime-gpu>=1.17", "tensorrt>=10", "cuda-python>=12"],
        "parquet": ["pyarrow>=14"],
        # `esccs infer --engine ray`: Ray Data actor pools, locally or on a cluster (a 79 MB wheel for cp311).
        "ray": ["ray[data]==2.60.*"],
        "runtime": ["onnxruntime>=1.17"],  # already in the base install; named so install hints always resolve
        "dev": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "import-linter>=2.1", "ruff>=0.6", "build>=1",
                "pyarrow>=14"],
    },
    entry_points={"console_scripts": ["esccs=esccs.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: GIS"],
)
