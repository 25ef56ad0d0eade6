#!/bin/bash
# Prepares .gpucarry/ for a GPU machine that has CUDA but no Node (the workplace's lent machines):
# the parity program, the GPU benchmark and the C++ tests built with CUDA, the tarballs of duat
# and of its CUDA package (whose binary the jest suites load), this machine's Node binary and the
# node_modules that jest and the CLI need, all compressed to travel (the tool carries 64 MiB).
# scripts/gpu-remote.sh runs them there. Builds happen here, so the GPU's time goes to running.
# Node and node_modules are compressed once (delete .gpucarry to redo them); builds every time.
#   scripts/gpu-pack.sh [ARCH]     ARCH: CMAKE_CUDA_ARCHITECTURES, default 90-real (Hopper)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-90-real}
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
carry=.gpucarry
rm -rf "$carry/bin" "$carry/bin.tar.xz" "$carry/duat.node" && mkdir -p "$carry/bin"

cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DDUAT_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" > /dev/null
cmake --build build-cuda --target duat_gpu_parity duat_gpu_bench duat_tests --parallel "$(nproc)"
cp build-cuda/duat_gpu_parity build-cuda/duat_gpu_bench build-cuda/duat_tests "$carry/bin/"
tar -cJf "$carry/bin.tar.xz" -C "$carry" bin && rm -rf "$carry/bin"
npm run build:ts > /dev/null
# The packages as users install them: duat's tarball (its prepack builds the release binaries) and
# the optional CUDA package's.
rm -f "$carry"/*.tgz
npm pack --silent --pack-destination "$carry" > /dev/null
node scripts/prebuild-cuda.js --pack "$carry" > /dev/null

# Node is one self-contained binary here; node_modules without what only mutation testing uses.
[ -f "$carry/node.xz" ] || xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > "$carry/node.xz"
[ -f "$carry/node_modules.tar.xz" ] || tar -cJf "$carry/node_modules.tar.xz" --exclude='node_modules/@stryker-mutator' --exclude='node_modules/rxjs' \
  --exclude='node_modules/zod' --exclude='node_modules/weapon-regex' --exclude='node_modules/.cache' \
  --exclude='node_modules/typedoc' --exclude='node_modules/typedoc-plugin-markdown' --exclude='node_modules/@shikijs' node_modules
git rev-parse HEAD > "$carry/commit"
du -sh "$carry" "$carry"/*
