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
# a cold inductor cache compiles the kernels first (~30 s of CPU, more on a loaded machine): the CPU run in CI
# gets generous limits, the CUDA run keeps the 5-minute budget
if [ "$DEVICE" = "cpu" ]; then T_CHECK=600; T_TABLE=600; else T_CHECK=120; T_TABLE=170; fi
timeout "$T_CHECK" "$PY" benchmarks/nrpm.py --device "$DEVICE" --check
if [ "$DEVICE" = "cpu" ]; then
    # the CPU run in CI stays short: two cases, no paper-algorithm column (it takes seconds per call here)
    ARGS=(--reps 3 --paper-max-elems 0 --only mlp-784-256-b128 lenet-conv2-b128)
else
    ARGS=(--reps 5)
fi
timeout "$T_TABLE" "$PY" benchmarks/nrpm.py --device "$DEVICE" "${ARGS[@]}"
