#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one CUDA GPU (165 s on an H100, 2026-11-27):
# the quick smoke run first (its failure shows in seconds), then the checks and the 1B-class
# measurements. Figures go to $OUT (default bench/results) as gpu.json and gpu.txt, and profiles
# of one pass of scoring, covariances and eigenvalue correction as gpu-profile-*.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu-card.txt"
python3 -m bench.gpu --quick --out "$OUT/gpu-quick.json" 2>&1 | tee "$OUT/gpu-quick.txt"
python3 -m bench.gpu --out "$OUT/gpu.json" --profile "$OUT/gpu-profile" 2>&1 | tee "$OUT/gpu.txt"
