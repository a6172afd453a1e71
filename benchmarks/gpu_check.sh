#!/usr/bin/env bash
# The GPU check (issue 19): what the library costs per image when the model runs on a CUDA GPU, beside the
# peers, and the rate of a ResNet-50-shaped Grad-CAM on that GPU, from which docs/scaling.md sizes the CPU
# cores a GPU worker needs. Run it on any machine with a GPU, from a checkout, with the benchmark venv:
#
#     make .venv-bench/.installed && bash benchmarks/gpu_check.sh      # about 5 minutes
#
# Tests never need a GPU; this script is how the GPU numbers in docs/scaling.md are made.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-bench/bin/python}
ROUNDS=${ROUNDS:-15}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'

echo "## The library's own work per image, near-free model on the GPU (batch 64, 224 px)"
"$PYTHON" benchmarks/bench_overhead.py --device cuda --rounds "$ROUNDS"

echo "## ResNet-50-shaped model on the GPU at layer4: the unit's images/s is the Grad-CAM rate G of one GPU"
"$PYTHON" benchmarks/bench_overhead.py --device cuda --model resnet50 --rounds "$ROUNDS"

echo "## bench_torch on the GPU (our methods and the peers beside plain inference)"
if "$PYTHON" benchmarks/bench_torch.py --help | grep -q -- "--device"; then
    "$PYTHON" benchmarks/bench_torch.py --device cuda --batch-sizes 8 64 --skip-memory
else
    echo "skipped: benchmarks/bench_torch.py has no --device option yet (it times CPU runs only)"
fi
