#!/bin/sh
# prebuildify calls `<node-gyp> rebuild --target=... --devdir=... [--arch=...] --release|--debug`;
# duat builds with cmake-js, so this translates the call.
cfg=Release; arch=""
for a in "$@"; do
  case "$a" in
    --debug) cfg=Debug ;;
    --arch=*) arch="--arch=${a#--arch=}" ;;
  esac
done
exec npx --no-install cmake-js rebuild --config "$cfg" $arch --log-level error
