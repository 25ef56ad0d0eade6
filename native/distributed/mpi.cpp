// mpi.cpp: the MPI communicator, with libmpi loaded at run time (dlopen), so that the package
// needs no MPI to build, install or load and asks for one only when parallel training is asked
// for. It calls MPI through Open MPI's binary interface (handles are the addresses of its
// predefined objects: ompi_mpi_comm_world, ompi_mpi_float, ...), the MPI Debian and most clusters
// ship; a library without those symbols (MPICH and its derivatives) is refused by name.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../core/errors.h"
#include "comm.h"

namespace duat {

namespace {

using Handle = void*;  // MPI_Comm, MPI_Datatype, MPI_Op in Open MPI: pointers to its objects
constexpr int kThreadSerialized = 2;  // MPI_THREAD_SERIALIZED, the same in every MPI
void* const kInPlace = reinterpret_cast<void*>(1);  // Open MPI's MPI_IN_PLACE
constexpr int64_t kChunk = INT_MAX / 2;  // MPI counts are int

const char* kInstall =
    "install Open MPI (Debian and Ubuntu: apt-get install openmpi-bin libopenmpi-dev), start the processes with "
    "mpirun, or set DUAT_MPI_LIBRARY to the path of its libmpi.so";

struct MpiApi {
  int (*Initialized)(int*);
  int (*Finalized)(int*);
  int (*Init_thread)(int*, char***, int, int*);
  int (*Finalize)();
  int (*Comm_rank)(Handle, int*);
  int (*Comm_size)(Handle, int*);
  int (*Allreduce)(const void*, void*, int, Handle, Handle, Handle);
  int (*Bcast)(void*, int, Handle, int, Handle);
  int (*Barrier)(Handle);
  int (*Abort)(Handle, int);
  int (*Get_library_version)(char*, int*);
  Handle comm_world, f32, f64, byte, sum;
};

class MpiCommunicator final : public Communicator {
 public:
  // The library stays loaded for the life of the process (MPI cannot be initialised twice).
  MpiCommunicator(const MpiApi& api, bool owns_init) : api_(api), owns_init_(owns_init) {
    call(api_.Comm_rank(api_.comm_world, &rank_), "MPI_Comm_rank");
    call(api_.Comm_size(api_.comm_world, &size_), "MPI_Comm_size");
    std::vector<char> v(8192, '\0');
    int len = 0;
    if (api_.Get_library_version(v.data(), &len) == 0) version_.assign(v.data(), static_cast<size_t>(std::max(0, len)));
    const size_t line = version_.find_first_of(",\n");
    if (line != std::string::npos) version_.resize(line);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string description() const override { return version_.empty() ? "MPI" : version_; }

  void allreduce_sum(float* data, int64_t n) override { reduce(data, n, api_.f32, sizeof(float)); }
  void allreduce_sum(double* data, int64_t n) override { reduce(data, n, api_.f64, sizeof(double)); }

  void broadcast(void* data, int64_t bytes, int root) override {
    Timed timed(*this, bytes);
    char* p = static_cast<char*>(data);
    for (int64_t at = 0; at < bytes; at += kChunk)
      call(api_.Bcast(p + at, static_cast<int>(std::min(kChunk, bytes - at)), api_.byte, root, api_.comm_world), "MPI_Bcast");
  }
  void barrier() override {
    Timed timed(*this, 0);
    call(api_.Barrier(api_.comm_world), "MPI_Barrier");
  }
  CommStats stats() const override {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    return stats_;
  }
  [[noreturn]] void abort(int code) override {
    api_.Abort(api_.comm_world, code);
    std::_Exit(code);  // MPI_Abort does not return; in case an implementation does
  }
  void finalize() override {
    int done = 0;
    api_.Finalized(&done);
    if (owns_init_ && !done) api_.Finalize();
  }

 private:
  // Counts one collective call into stats_, from construction to destruction.
  class Timed {
   public:
    Timed(MpiCommunicator& c, int64_t bytes) : c_(c), bytes_(bytes), t0_(std::chrono::steady_clock::now()) {}
    ~Timed() {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
      std::lock_guard<std::mutex> lock(c_.stats_mutex_);
      c_.stats_.calls++;
      c_.stats_.bytes += bytes_;
      c_.stats_.seconds += s;
    }

   private:
    MpiCommunicator& c_;
    int64_t bytes_;
    std::chrono::steady_clock::time_point t0_;
  };

  void reduce(void* data, int64_t n, Handle type, size_t elem) {
    Timed timed(*this, n * static_cast<int64_t>(elem));
    char* p = static_cast<char*>(data);
    for (int64_t at = 0; at < n; at += kChunk)
      call(api_.Allreduce(kInPlace, p + at * static_cast<int64_t>(elem), static_cast<int>(std::min(kChunk, n - at)), type,
                          api_.sum, api_.comm_world),
           "MPI_Allreduce");
  }
  // MPI's default error handler ends the job on a failed call; this is for one that returns.
  static void call(int rc, const char* what) {
    DUAT_CHECK(rc == 0, ERROR_DISTRIBUTED, std::string("distributed: ") + what + " failed with MPI error " + std::to_string(rc));
  }

  MpiApi api_;
  bool owns_init_;
  int rank_ = 0, size_ = 1;
  std::string version_;
  mutable std::mutex stats_mutex_;
  CommStats stats_;
};

template <typename F>
void bind(void* lib, const char* name, F& fn, const std::string& path) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  DUAT_CHECK(fn != nullptr, ERROR_DISTRIBUTED, "distributed: " + path + " has no " + name + "; it is not a usable MPI library");
}

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const std::string& library) {
  std::vector<std::string> tried;
  const char* env = std::getenv("DUAT_MPI_LIBRARY");
  std::vector<std::string> candidates;
  if (!library.empty()) candidates.push_back(library);
  else if (env && *env) candidates.push_back(env);
  else candidates = {"libmpi.so.40", "libmpi.so"};
  void* lib = nullptr;
  std::string path;
  for (const std::string& c : candidates) {
    // RTLD_GLOBAL: Open MPI loads its own components with dlopen, and they resolve libmpi's
    // symbols from the global scope.
    lib = dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (lib) {
      path = c;
      break;
    }
    const char* why = dlerror();
    tried.push_back(why ? why : c + ": not found");
  }
  if (!lib) {
    std::string msg = "distributed training needs MPI, and none could be loaded (";
    for (size_t i = 0; i < tried.size(); i++) msg += (i ? "; " : "") + tried[i];
    fail(ERROR_DISTRIBUTED, msg + "): " + kInstall);
  }
  if (!dlsym(lib, "ompi_mpi_comm_world")) {
    fail(ERROR_DISTRIBUTED, "distributed: " + path +
                                " is not Open MPI (it has no ompi_mpi_comm_world); duat speaks Open MPI's interface only: " +
                                kInstall);
  }
  MpiApi api{};
  bind(lib, "MPI_Initialized", api.Initialized, path);
  bind(lib, "MPI_Finalized", api.Finalized, path);
  bind(lib, "MPI_Init_thread", api.Init_thread, path);
  bind(lib, "MPI_Finalize", api.Finalize, path);
  bind(lib, "MPI_Comm_rank", api.Comm_rank, path);
  bind(lib, "MPI_Comm_size", api.Comm_size, path);
  bind(lib, "MPI_Allreduce", api.Allreduce, path);
  bind(lib, "MPI_Bcast", api.Bcast, path);
  bind(lib, "MPI_Barrier", api.Barrier, path);
  bind(lib, "MPI_Abort", api.Abort, path);
  bind(lib, "MPI_Get_library_version", api.Get_library_version, path);
  api.comm_world = dlsym(lib, "ompi_mpi_comm_world");
  api.f32 = dlsym(lib, "ompi_mpi_float");
  api.f64 = dlsym(lib, "ompi_mpi_double");
  api.byte = dlsym(lib, "ompi_mpi_byte");
  api.sum = dlsym(lib, "ompi_mpi_op_sum");
  DUAT_CHECK(api.f32 && api.f64 && api.byte && api.sum, ERROR_DISTRIBUTED,
             "distributed: " + path + " lacks Open MPI's predefined types or operations");
  int done = 0, finalized = 0;
  api.Initialized(&done);
  api.Finalized(&finalized);
  DUAT_CHECK(!finalized, ERROR_DISTRIBUTED, "distributed: MPI was already finalized in this process");
  bool owns = false;
  if (!done) {
    int provided = 0;
    // The step's collectives run on a worker thread, one at a time: SERIALIZED is what it needs.
    DUAT_CHECK(api.Init_thread(nullptr, nullptr, kThreadSerialized, &provided) == 0, ERROR_DISTRIBUTED,
               "distributed: MPI_Init_thread failed (" + path + ")");
    owns = true;
    DUAT_CHECK(provided >= kThreadSerialized, ERROR_DISTRIBUTED,
               "distributed: " + path + " provides thread level " + std::to_string(provided) +
                   "; duat needs MPI_THREAD_SERIALIZED (2) because collectives run on worker threads");
  }
  return std::make_unique<MpiCommunicator>(api, owns);
}

}  // namespace duat
