#!/usr/bin/env bash
# NRPM on an accelerator: correctness of every backend against the float64 reference, then the speed table.
# Usage: benchmarks/gpu_check.sh [cuda|cpu]   (default cuda; CI runs it with cpu). Budget: under 5 minutes.
# Expected: "check on <device>: ... OK", then one table row per case (see docs/nrpm-benchmark.md).
set -euo pipefail
DEVICE="${1:-cuda}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
timeout 150 "$PY" benchmarks/nrpm.py --device "$DEVICE" --check
if [ "$DEVICE" = "cpu" ]; then
    CASES=(mlp-784-256-b128 lenet-conv2-b128)   # the CPU run in CI stays short
else
    CASES=(mlp-784-256-b128 lenet-conv2-b128 resnet18-narrow-8x8-b32 resnet18-full-64x64-b32)
fi
timeout 150 "$PY" benchmarks/nrpm.py --device "$DEVICE" --reps 5 --only "${CASES[@]}"
