#!/bin/bash
# The GPU suite without Node (for machines with a GPU but no Node, and for `npm run test:gpu`):
# the parity program (kernels against float64, every op, the model and the training step against
# the CPU), compute-sanitizer memcheck and racecheck on its quick run where present, then, with
# --bench, the GPU benchmark in three precisions and PyTorch's latency on the same models.
#   scripts/gpu-suite.sh [--bench] [BUILD_DIR] [OUTDIR]
# BUILD_DIR (with duat_gpu_parity and duat_gpu_bench) defaults to build-cuda, OUTDIR to
# bench/results/gpu-run. Exit status: 0 all passed, 1 a check failed, 2 no usable GPU.
set -u
bench=0
if [ "${1:-}" = "--bench" ]; then bench=1; shift; fi
dir=${1:-build-cuda}
out=${2:-bench/results/gpu-run}
mkdir -p "$out"
"$dir/duat_gpu_parity" --quick --seed 1 > "$out/probe.log" 2>&1
if [ $? = 2 ]; then cat "$out/probe.log"; exit 2; fi
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/parity.log" 2>&1
echo "== parity"
set -o pipefail
"$dir/duat_gpu_parity" | tee -a "$out/parity.log" | grep -v '^ok' || status=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool (quick parity)"
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$dir/duat_gpu_parity" --quick > "$out/sanitizer-$tool.log" 2>&1 || status=1
    tail -2 "$out/sanitizer-$tool.log"
  done
else
  echo "compute-sanitizer not found: sanitizer runs skipped"
fi
if [ $bench = 1 ]; then
  echo "== benchmark"
  "$dir/duat_gpu_bench" --reps 50 --max-n 16 --train --out "$out/bench-tf32.md" > /dev/null || status=1
  "$dir/duat_gpu_bench" --reps 30 --max-n 4 --precision bf16 --out "$out/bench-bf16.md" > /dev/null || status=1
  "$dir/duat_gpu_bench" --reps 30 --max-n 4 --precision fp32 --out "$out/bench-fp32.md" > /dev/null || status=1
  tail -12 "$out/bench-tf32.md"
  if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    echo "== pytorch"
    python3 bench/reference/gpu_latency_torch.py --max-n 16 --reps 50 > "$out/torch-tf32.md" || status=1
    python3 bench/reference/gpu_latency_torch.py --train --reps 30 >> "$out/torch-tf32.md" || status=1
    tail -8 "$out/torch-tf32.md"
  fi
fi
exit $status
