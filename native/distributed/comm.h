// comm.h: the communicator distributed training runs on (docs/design.md, "Distributed
// training"). One interface, the collectives the training step needs and nothing else, so that a
// transport is one class: MPI (mpi.cpp, loaded at run time from the system's libmpi) is the
// first; NCCL for GPUs would be the second, reducing device memory in place where this one stages
// it through the host. The process has at most one communicator, set once by init and kept until
// finalize; every rank must call the same collectives in the same order.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "../core/tensor.h"

namespace duat {

// What a communicator has carried since it was made: collective calls (allreduce, broadcast,
// barrier), the bytes each rank sent into them, and the seconds spent inside them (waiting for
// other ranks included).
struct CommStats {
  int64_t calls = 0, bytes = 0;
  double seconds = 0.0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "Open MPI v4.1.4, ...": what carries the collectives, for messages and logs.
  virtual std::string description() const = 0;
  // Sums `n` values of every rank into every rank's `data` (host memory), in place.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  // Copies `bytes` bytes of rank `root`'s `data` into every other rank's.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job with `code` (an error on one rank must not leave the others
  // waiting in a collective). Does not return.
  [[noreturn]] virtual void abort(int code) = 0;
  // Leaves the job; after it no collective may be called.
  virtual void finalize() = 0;
  // Whether it reduces memory of `device` where it lies (otherwise allreduce_sum(Tensor) copies
  // through the host).
  virtual bool reduces_on(Device device) const { return device == DEVICE_CPU; }
  virtual CommStats stats() const = 0;
};

// Joins the MPI job this process was started in (mpirun), loading `library` (empty: the
// environment's DUAT_MPI_LIBRARY, then libmpi.so.40, then libmpi.so). Once per process: a second
// call returns the communicator already made. ERROR_DISTRIBUTED says what is missing and what to
// install when no usable MPI can be loaded.
Communicator& distributed_init_mpi(const std::string& library);
// Makes `comm` the process's communicator: a transport made outside this file (the C++ tests'
// stand-in; NCCL later). ERROR_DISTRIBUTED when there is one already.
void install_communicator(std::unique_ptr<Communicator> comm);
// The communicator, or null before init and after finalize.
Communicator* communicator();
// The communicator; ERROR_DISTRIBUTED naming `what` when there is none.
Communicator& require_communicator(const char* what);
// Finalizes and drops the communicator (no-op without one).
void distributed_finalize();

// Sums a float32 tensor over every rank, in place; any device, any layout (a non-contiguous
// tensor is rejected with ERROR_ARGUMENT).
void allreduce_sum(Communicator& comm, const Tensor& t);

// How a model's training is spread over ranks (docs/design.md, "Distributed training").
// data: every rank holds the whole model and sums the gradients of its shard of each batch;
// branches: every rank holds a contiguous share of each stage's branches (ModelConfig.shard).
enum ParallelMode : int { PARALLEL_NONE = 0, PARALLEL_DATA = 1, PARALLEL_BRANCHES = 2 };

// The share of `branches` branches that `rank` of `size` holds: the first (branches % size) ranks
// hold one more. {offset, count}.
struct BranchShare {
  int64_t offset = 0, count = 0;
};
BranchShare branch_share(int64_t branches, int rank, int size);

}  // namespace duat
