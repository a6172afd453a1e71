#!/usr/bin/env bash
# The GPU check (issue 19): what the library costs per image when the model runs on a CUDA GPU, beside the
# peers, and the rate of a ResNet-50-shaped Grad-CAM on that GPU, from which docs/scaling.md sizes the CPU
# cores a GPU worker needs. Run it on any machine with a GPU, from a checkout, with the benchmark venv:
#
#     make .venv-bench/.installed && bash benchmarks/gpu_check.sh      # 5 to 10 minutes
#
# It prints three tables and their ratios: the library's overhead per image on the near-free model ("x unit"
# and "overhead ms/img" beside the peers), the same on the ResNet-50-shaped model (its unit's images/s is the
# Grad-CAM rate G of one GPU), and bench_torch's time and GPU memory of each method over plain inference
# ("x plain"). Tests never need a GPU; this script is how the GPU numbers in docs/scaling.md are made.
# ROUNDS (default 15) and PYTHON (default .venv-bench/bin/python) can be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-bench/bin/python}
ROUNDS=${ROUNDS:-15}

fail() {
    echo "gpu_check: $*" >&2
    exit 1
}

[ -x "$PYTHON" ] || fail "no $PYTHON: build the benchmark venv first (make .venv-bench/.installed) or set PYTHON"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: this machine has no NVIDIA driver, so no CUDA GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || fail "nvidia-smi sees no GPU (see its message above)"
"$PYTHON" - <<'EOF' || fail "torch cannot use a GPU here (the line above says why)"
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}) sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

echo
echo "## The library's own work per image, near-free model on the GPU (batch 64, 224 px)"
"$PYTHON" benchmarks/bench_overhead.py --device cuda --rounds "$ROUNDS"

echo
echo "## ResNet-50-shaped model on the GPU at layer4: the unit's images/s is the Grad-CAM rate G of one GPU"
"$PYTHON" benchmarks/bench_overhead.py --device cuda --model resnet50 --rounds "$ROUNDS"

echo
echo "## bench_torch on the GPU: our methods and the peers beside plain inference (time and GPU memory)"
"$PYTHON" benchmarks/bench_torch.py --device cuda --batch-sizes 8 64 --rounds "$ROUNDS" --memory-repeats 1
