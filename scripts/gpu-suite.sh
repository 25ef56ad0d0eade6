#!/bin/bash
# The GPU suite without Node (for machines with a GPU but no Node, and for `npm run test:gpu`):
# kernel parity, compute-sanitizer (memcheck, racecheck) where present, then, with --bench,
# the latency benchmark, a per-launch profile and PyTorch's latency on the same models.
#   scripts/gpu-suite.sh [--bench] [BINARY] [OUTDIR]
# BINARY defaults to build-cuda/duat_gpu_parity, OUTDIR to bench/results/gpu-run.
set -u
bench=0
if [ "${1:-}" = "--bench" ]; then bench=1; shift; fi
bin=${1:-build-cuda/duat_gpu_parity}
out=${2:-bench/results/gpu-run}
mkdir -p "$out"
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/parity.log"
echo "== parity"
set -o pipefail
"$bin" | tee -a "$out/parity.log" | grep -v '^ok' || status=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool (quick parity)"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$bin" --quick > "$out/sanitizer-$tool.log" 2>&1 || status=1
    tail -2 "$out/sanitizer-$tool.log"
  done
else
  echo "compute-sanitizer not found: sanitizer runs skipped"
fi
if [ $bench = 1 ]; then
  echo "== benchmark"
  "$bin" --no-parity --bench --reps 50 --max-n 16 --out "$out/bench-tf32.md" > /dev/null || status=1
  "$bin" --no-parity --bench --reps 30 --max-n 4 --precision bf16 --out "$out/bench-bf16.md" > /dev/null || status=1
  "$bin" --no-parity --bench --reps 30 --max-n 4 --precision fp32 --out "$out/bench-fp32.md" > /dev/null || status=1
  "$bin" --no-parity --profile --reps 50 > "$out/profile.txt" || status=1
  "$bin" --no-parity --bench-train --reps 30 --out "$out/train-tf32.md" > /dev/null || status=1
  tail -8 "$out/bench-tf32.md"
  if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "== pytorch"
    python3 bench/reference/gpu_latency_torch.py --max-n 16 --reps 50 > "$out/torch-tf32.md" || status=1
    python3 bench/reference/gpu_latency_torch.py --train --reps 30 >> "$out/torch-tf32.md" || status=1
    tail -8 "$out/torch-tf32.md"
  fi
fi
exit $status
