// amx.h: AMX tile instructions in inline assembly (as bf16.h does vdpbf16ps: the intrinsics need
// target attributes that zig's clang 17, which builds the release binaries, and GCC 12 handle
// differently; both assemble these). Tiles are named by number (tmm0-7), strides in bytes. The
// tile configuration (ldtilecfg) and its release are gemm.h's amx_load_config / amx_release.
#pragma once
#if defined(__x86_64__)
#include <cstdint>

// tile t = 16 rows of 64 bytes from p, rows `stride` bytes apart (and the reverse).
#define DUAT_TILELOAD(t, p, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t : : "r"(p), "r"(static_cast<int64_t>(stride)) : "memory")
#define DUAT_TILESTORE(t, p, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" : : "r"(p), "r"(static_cast<int64_t>(stride)) : "memory")
#define DUAT_TILEZERO(t) __asm__ volatile("tilezero %%tmm" #t ::: "memory")
// tile c += tile a (16 rows of 16 bf16 pairs) times tile b (16 pairs of 16 columns), fp32 sums.
#define DUAT_TDP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory")

#endif
