// collective.cpp: the two differentiable collectives of branch-parallel training (ops.h), in the
// pair Megatron-LM uses for tensor parallelism. A stage whose branches are spread over ranks reads
// branch_input(x), identical on every rank, and ends in branch_reduce(partial):
//   forward:  branch_input is the identity;       branch_reduce sums the ranks' partial outputs
//   backward: branch_input sums the ranks' input gradients; branch_reduce passes its own on
// so the stage's output and its input's gradient come out whole and equal on every rank.
#include "../distributed/comm.h"
#include "ops.h"

namespace duat {

namespace {

// A dense buffer holding dout that the backward may overwrite.
Tensor writable_copy(const Tensor& dout, const Grads& g) {
  Tensor d = g.reusable(dout);
  if (d.get() != dout.get()) copy_into(d, dout);
  return d;
}

}  // namespace

Tensor branch_input(const Tensor& x, Communicator& comm) {
  check_f32(x, "branchInput", "x");
  Tensor out = make_view(x, x->shape, x->strides, x->offset);
  Communicator* c = &comm;
  return record(out, "branch_input", {x}, [c](const Tensor& dout, Grads& g) {
    Tensor d = writable_copy(dout, g);
    allreduce_sum(*c, d);
    g.pass(0, d);
  });
}

Tensor branch_reduce(const Tensor& partial, Communicator& comm) {
  check_f32(partial, "branchReduce", "partial");
  Tensor out = empty(partial->shape, DTYPE_F32, partial->device);
  copy_into(out, partial);
  allreduce_sum(comm, out);
  return record(out, "branch_reduce", {partial}, [](const Tensor& dout, Grads& g) { g.pass(0, dout); });
}

}  // namespace duat
