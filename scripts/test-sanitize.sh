#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer (CI's sanitizer job; npm run test:sanitize):
# the C++ tests built with -fsanitize=address,undefined, then the jest suites that drive native
# code (ops, errors, hardening, CUDA path on the test device, model, training, fit, workers, data,
# ViT loading, the short fuzz run) against an addon built the same way, with libasan preloaded
# into node. Any sanitizer report aborts the process that made it, which fails its test.
# Usage: scripts/test-sanitize.sh [jest-json-report]
set -uo pipefail
cd "$(dirname "$0")/.."
report="${1:-}"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)

echo "== sanitizers: C++ tests"
cmake -S . -B build-sanitize "${gen[@]}" -DDUAT_SANITIZE=ON >/dev/null || exit 1
cmake --build build-sanitize --parallel --target duat_tests >/dev/null || exit 1
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-sanitize/duat_tests > build-sanitize/duat_tests.log 2>&1
cpp=$?
grep -E "ERROR: |runtime error|passed, .* failed" build-sanitize/duat_tests.log | tail -5
[ $cpp -eq 0 ] || { echo "C++ tests under the sanitizers failed (build-sanitize/duat_tests.log)"; }

echo "== sanitizers: jest against the sanitized addon"
npx cmake-js compile --CDDUAT_SANITIZE=ON -O build-sanitize-addon --log-level error >/dev/null || exit 1
libasan="$(gcc -print-file-name=libasan.so)"
args=(test/errors.test.ts test/hardening.test.ts test/ops.test.ts test/cuda.test.ts test/model.test.ts test/training.test.ts
      test/fit.test.ts test/worker.test.ts test/vit.test.ts test/data.test.ts test/backend.test.ts test/fuzz.test.ts)
[ -n "$report" ] && args+=(--json --outputFile="$report")
# allocator_may_return_null: a request above ASan's own 1 TB ceiling (the api fuzz target asks for
# tensors up to 2^40 elements) returns null, as the plain allocator does, and duat throws
# OutOfMemoryError, instead of ASan aborting the process.
LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
  DUAT_BINDING_PATH="$PWD/build-sanitize-addon/Release/duat.node" npx jest "${args[@]}" > /dev/null
js=$?
[ $cpp -eq 0 ] && [ $js -eq 0 ]
