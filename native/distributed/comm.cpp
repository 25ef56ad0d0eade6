// comm.cpp: the process's communicator and the helpers every transport shares (comm.h).
#include "comm.h"

#include <algorithm>
#include <mutex>

#include "../core/errors.h"

namespace duat {

namespace {

std::mutex g_mutex;
std::unique_ptr<Communicator> g_comm;
bool g_finalized = false;

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const std::string& library);  // mpi.cpp

Communicator& distributed_init_mpi(const std::string& library) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_comm) return *g_comm;
  // MPI allows one initialisation per process: after finalize there is no way back in.
  DUAT_CHECK(!g_finalized, ERROR_DISTRIBUTED, "distributed: MPI was finalized in this process and cannot be initialised again");
  g_comm = make_mpi_communicator(library);
  return *g_comm;
}

void install_communicator(std::unique_ptr<Communicator> comm) {
  std::lock_guard<std::mutex> lock(g_mutex);
  DUAT_CHECK(!g_comm, ERROR_DISTRIBUTED, "distributed: this process has a communicator already");
  g_comm = std::move(comm);
}

Communicator* communicator() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_comm.get();
}

Communicator& require_communicator(const char* what) {
  Communicator* c = communicator();
  DUAT_CHECK(c != nullptr, ERROR_DISTRIBUTED,
             std::string(what) + " needs a distributed job: call duat.distributed.init() first (under mpirun)");
  return *c;
}

void distributed_finalize() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_comm) return;
  g_comm->finalize();
  g_comm.reset();
  g_finalized = true;
}

void allreduce_sum(Communicator& comm, const Tensor& t) {
  DUAT_CHECK(t->dtype == DTYPE_F32, ERROR_DTYPE, "allreduce: expected a float32 tensor");
  DUAT_CHECK(is_dense(t), ERROR_ARGUMENT, "allreduce: expected a tensor whose elements fill their memory (not a strided view)");
  if (t->numel() == 0) return;
  if (comm.reduces_on(t->device)) {
    comm.allreduce_sum(t->ptr_f32(), t->numel());
    mark_written(t);
    return;
  }
  const Tensor host = to_device(t, DEVICE_CPU);  // contiguous, in t's element order
  comm.allreduce_sum(host->f32(), host->numel());
  copy_into(t, host);
}

BranchShare branch_share(int64_t branches, int rank, int size) {
  DUAT_CHECK(size >= 1 && rank >= 0 && rank < size, ERROR_ARGUMENT,
             "branch share: rank " + std::to_string(rank) + " is not in [0, " + std::to_string(size) + ")");
  DUAT_CHECK(branches >= size, ERROR_ARGUMENT,
             "branch-parallel training: " + std::to_string(branches) + " branches per stage cannot be split over " +
                 std::to_string(size) + " ranks (every rank needs at least one); use fewer ranks or parallel 'data'");
  const int64_t base = branches / size, extra = branches % size;
  BranchShare s;
  s.count = base + (rank < extra ? 1 : 0);
  s.offset = rank * base + std::min<int64_t>(rank, extra);
  return s;
}

}  // namespace duat
