#!/bin/sh
# prebuildify calls `<node-gyp> rebuild --target=... --devdir=... [--arch=...] --release|--debug`;
# duat builds with cmake-js, so this translates the call. With DUAT_ZIG and DUAT_ZIG_TARGET set
# (scripts/prebuild.js sets them) the compiler is zig's clang for that target
# (cmake/zig-toolchain.cmake): the release binaries, for glibc 2.28 on x64 and arm64.
cfg=Release; arch=""
for a in "$@"; do
  case "$a" in
    --debug) cfg=Debug ;;
    --arch=*) arch="--arch=${a#--arch=}" ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${DUAT_ZIG_TARGET:-}" ]; then
  exec npx --no-install cmake-js rebuild --config "$cfg" $arch --log-level error \
    "--CDCMAKE_TOOLCHAIN_FILE=$root/cmake/zig-toolchain.cmake" "--CDDUAT_ZIG=$DUAT_ZIG" "--CDDUAT_ZIG_TARGET=$DUAT_ZIG_TARGET"
fi
exec npx --no-install cmake-js rebuild --config "$cfg" $arch --log-level error
