// optim.cpp: in-place statistics and scaling of gradients, outside autograd. The updates
// themselves belong to the optimizer (native/train/optimizer.h), which calls the backend's
// multi-tensor kernels.
#include <string>

#include "ops.h"

namespace duat {

Tensor sum_of_squares(const std::vector<Tensor>& ts) {
  DUAT_CHECK(!ts.empty(), ERROR_ARGUMENT, "sumOfSquares: needs at least one tensor");
  const Device dev = ts[0]->device;
  std::vector<Tensor> keep;
  std::vector<std::pair<const float*, int64_t>> list;
  for (const Tensor& t : ts) {
    check_f32(t, "sumOfSquares", "every tensor");
    check_same_device(ts[0], t, "sumOfSquares");
    keep.push_back(contiguous_data(t));
    list.push_back({keep.back()->ptr_f32(), keep.back()->numel()});
  }
  Tensor out = empty({}, DTYPE_F32, dev);
  backend(dev).sum_of_squares(list, out->ptr_f32());
  return out;
}

void scale_inplace(const Tensor& t, float s) {
  check_f32(t, "scale", "the tensor");
  mark_written(t);
  launch_map(MAP_MUL_SCALAR, t, t, nullptr, s);
}

}  // namespace duat
