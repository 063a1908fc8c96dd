#!/usr/bin/env bash
# `make gpu-check`: the prepared GPU check (issue 15). Without a CUDA GPU it says so in one line and exits 0; with one
# it runs benchmarks/gpu_check.py (every step under `timeout`, 8 minutes in all) with the machine's own python3.
# Where $OUT is a folder (the device tool's output folder), the results are also packed into $OUT/gpu_<device>.tar.gz.
# NVIDIA_SMI overrides the nvidia-smi that is asked (tests point it at a missing file).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
smi=${NVIDIA_SMI:-nvidia-smi}
if ! gpus=$("$smi" -L 2>/dev/null) || ! grep -q '^GPU ' <<<"$gpus"; then
    echo "gpu-check: no CUDA GPU on this machine ($smi lists none); nothing to run"
    exit 0
fi
args=()
if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
    args+=(--export-to "$OUT")
fi
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "${args[@]}" "$@"
