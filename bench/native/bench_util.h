// bench_util.h: what the native benchmarks share.
#pragma once
#include <algorithm>
#include <vector>

namespace duat_bench {

// The middle value (the upper of the two middle ones for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace duat_bench
