// init.cpp: seeded random tensors. Element i of a tensor with seed s is a pure function of
// (s, i), so results do not depend on threads or devices. Normal draws use Box-Muller.
#include <cmath>
#include <string>

#include "../core/parallel.h"
#include "ops.h"

namespace duat {

namespace {

float normal_at(uint64_t seed, uint64_t index, uint64_t draw) {
  // u1 in (0, 1] so the log is finite.
  const float u1 = 1.0f - dm::uniform_at(seed, index, 2 * draw);
  const float u2 = dm::uniform_at(seed, index, 2 * draw + 1);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.283185307179586f * u2);
}

// Generated on the host, then copied to `device`: the values are the same wherever they live.
template <typename F>
Tensor generate(const Shape& shape, Device device, const char* op, F f) {
  for (int64_t d : shape) DUAT_CHECK(d >= 0, ERROR_SHAPE, std::string(op) + ": negative dimension in " + shape_str(shape));
  Tensor out = empty(shape);
  float* p = out->f32();
  parallel_for_range(out->numel(), 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) p[i] = f(static_cast<uint64_t>(i));
  });
  return to_device(out, device);
}

}  // namespace

Tensor randn(const Shape& shape, uint64_t seed, float mean, float std, Device device) {
  DUAT_CHECK(std >= 0.0f, ERROR_ARGUMENT, "randn: std must be non-negative");
  return generate(shape, device, "randn", [=](uint64_t i) { return mean + std * normal_at(seed, i, 0); });
}

Tensor rand_uniform(const Shape& shape, uint64_t seed, float low, float high, Device device) {
  DUAT_CHECK(high >= low, ERROR_ARGUMENT, "rand: high must not be below low");
  return generate(shape, device, "rand", [=](uint64_t i) { return low + (high - low) * dm::uniform_at(seed, i, 0); });
}

Tensor trunc_normal(const Shape& shape, uint64_t seed, float mean, float std, float a, float b, Device device) {
  DUAT_CHECK(std > 0.0f && a < b && a <= mean + 6 * std && b >= mean - 6 * std, ERROR_ARGUMENT,
             "truncNormal: needs std > 0 and a < b within six standard deviations of the mean");
  return generate(shape, device, "truncNormal", [=](uint64_t i) {
    for (uint64_t draw = 0; draw < 1000; draw++) {
      const float v = mean + std * normal_at(seed, i, draw);
      if (v >= a && v <= b) return v;
    }
    return std::fmin(std::fmax(mean, a), b);
  });
}

}  // namespace duat
