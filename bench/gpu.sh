#!/usr/bin/env bash
# Every GPU check in one go, for a machine with one CUDA GPU (165 s on an H100, 2026-11-27, before
# the 7B and wide-projection steps): the quick smoke run first (its failure shows in seconds), then
# the checks and the 1B-class measurements, Llama-2-7B's shape (bench/gpu_7b.py, stopping itself
# within 7 minutes), and the default store's accuracy at 1024 x 4096 layers (the demo's model,
# trained 8x wider: bench/projection.py). Figures go to $OUT (default bench/results) as gpu.json
# and gpu.txt, gpu-7b-<date>-<card>.json and gpu-7b.txt, projection-wide-1024.txt, and profiles of
# one pass of scoring, covariances and eigenvalue correction as gpu-profile-*.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu-card.txt"
python3 -m bench.gpu --quick --out "$OUT/gpu-quick.json" 2>&1 | tee "$OUT/gpu-quick.txt"
python3 -m bench.gpu --out "$OUT/gpu.json" --profile "$OUT/gpu-profile" 2>&1 | tee "$OUT/gpu.txt"
python3 -m bench.gpu_7b --results "$OUT" 2>&1 | tee "$OUT/gpu-7b.txt"
python3 -m bench.projection --model demo --device cuda --hidden 1024 --intermediate 4096 --ks 32 128 304 \
    --seeds 1 --threads 8 2>&1 | tee "$OUT/projection-wide-1024.txt"
