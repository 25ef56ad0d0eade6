// profile.h: where a step's time goes, by op family. While profiling is on, backend(DEVICE_CPU)
// returns a wrapper around the CPU backend that times every call (outermost calls only), counts
// its analytic FLOPs (products and attention), reads the process's minor page faults and
// kernel CPU time around it, and counts the thread time the pool left unused in it (a thread
// waiting for the last tasks of a region, or for the caller's serial stretches: parallel.h).
// Time outside every backend call is the graph, autograd, bindings and JavaScript. CPU only:
// CUDA kernels run asynchronously, so their wall time here would lie.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace duat {

class Backend;

enum ProfileFamily : int {
  PROFILE_PRODUCTS = 0,  // gemm (with its fused bias, GELU and stage epilogues)
  PROFILE_ATTENTION,     // the fused attention kernels (their per-head products included)
  PROFILE_NORMS,         // LayerNorm forward and backward
  PROFILE_GELU,          // GELU and its gradient when not fused into a product
  PROFILE_SOFTMAX,       // softmax rows and the cross-entropy loss
  PROFILE_ELEMENTWISE,   // arithmetic maps, reductions, dropout, affine folding, argmax
  PROFILE_COPIES,        // copies, fills, layout changes (strided copies), patchify, transfers
  PROFILE_ALLOCATION,    // the block cache: allocate and release
  PROFILE_OPTIMIZER,     // AdamW, SGD and the gradient norm
  PROFILE_FAMILIES
};
const char* profile_family_name(ProfileFamily f);

struct ProfileEntry {
  std::string family;
  double seconds = 0;         // wall time inside the family's calls
  int64_t calls = 0;
  double flops = 0;           // analytic floating-point operations (products and attention)
  int64_t page_faults = 0;    // minor faults of the whole process during the calls
  double kernel_seconds = 0;  // system CPU time of the whole process during the calls
  double idle_seconds = 0;    // thread time (over the pool's threads) the calls left unused
};
// One kind of call: a product's shape ("MxNxK", the batch, which operands are read transposed,
// the fused epilogue), an element-wise map's op and size, a reduction's shapes, or the method.
struct ProfileCall {
  std::string label;
  std::string family;
  double seconds = 0;
  int64_t calls = 0;
  double flops = 0;
  double idle_seconds = 0;
};
struct ProfileReport {
  double seconds = 0;  // wall time from start to stop
  double process_kernel_seconds = 0;
  int64_t process_page_faults = 0;
  std::vector<ProfileEntry> families;
  std::vector<ProfileCall> calls;  // largest first
};

void profile_start();          // resets the totals and turns profiling on
ProfileReport profile_stop();  // turns it off and returns the totals
bool profiling();
Backend& profiling_backend(Backend& inner);  // the wrapper (one per process, around the CPU backend)

}  // namespace duat
