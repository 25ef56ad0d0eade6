# Cross toolchain for the release binaries: zig's clang driver, which targets a chosen glibc
# version for any architecture from one machine (x86_64-linux-gnu.2.28, aarch64-linux-gnu.2.28).
# zig links its own libc++ statically, so the addon needs nothing from the system but glibc.
#   -DCMAKE_TOOLCHAIN_FILE=cmake/zig-toolchain.cmake -DDUAT_ZIG=<path to zig> -DDUAT_ZIG_TARGET=<triple>
# scripts/prebuild.js passes both; the environment variables of the same names work too.
if(NOT DUAT_ZIG)
  set(DUAT_ZIG "$ENV{DUAT_ZIG}")
endif()
if(NOT DUAT_ZIG_TARGET)
  set(DUAT_ZIG_TARGET "$ENV{DUAT_ZIG_TARGET}")
endif()
if(NOT DUAT_ZIG OR NOT DUAT_ZIG_TARGET)
  message(FATAL_ERROR "zig-toolchain.cmake needs DUAT_ZIG (the zig executable) and DUAT_ZIG_TARGET (for example x86_64-linux-gnu.2.28)")
endif()
# try_compile projects read this file again: hand them the two settings.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES DUAT_ZIG DUAT_ZIG_TARGET)

string(REGEX MATCH "^[^-]+" DUAT_ZIG_ARCH "${DUAT_ZIG_TARGET}")
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR ${DUAT_ZIG_ARCH})
# A list: the compiler, then its mandatory argument; CMake adds --target=<triple>.
set(CMAKE_C_COMPILER "${DUAT_ZIG}" cc)
set(CMAKE_CXX_COMPILER "${DUAT_ZIG}" c++)
set(CMAKE_C_COMPILER_TARGET ${DUAT_ZIG_TARGET})
set(CMAKE_CXX_COMPILER_TARGET ${DUAT_ZIG_TARGET})
# Release binaries carry no symbol table (what `strip` did; binutils' strip cannot read arm64).
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-s")
