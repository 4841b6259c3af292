#!/usr/bin/env bash
# One-shot GPU check for a lent GPU (~15 min budget): no installs, finishes well within 10 minutes.
# Writes gpu_check.json (into $OUT when that is set) and prints the table; paste it into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 python3 benchmarks/gpu_check.py --json "$out/gpu_check.json" --iters 30 "$@"
