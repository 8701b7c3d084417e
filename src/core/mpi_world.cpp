#include "core/mpi_world.h"

// The C API only: OpenMPI's and MPICH's deprecated C++ bindings would need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace oar {
namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string("MPI ") + what + ": " + std::string(msg, size_t(len)));
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }

// MPI counts are int: larger buffers go in chunks.
constexpr int64_t kChunk = INT_MAX / 8;

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm) : comm_(comm) {
    check(MPI_Comm_rank(comm_, &rank_), "Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce(float* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, MPI_FLOAT, op); }
  void all_reduce(double* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, MPI_DOUBLE, op); }
  void reduce_scatter(const float* in, float* out, int64_t n, ReduceOp op) override {
    if (n > kChunk) throw Error("MPI reduce_scatter: blocks over 2^28 elements are not supported");
    check(MPI_Reduce_scatter_block(in, out, int(n), MPI_FLOAT, mpi_op(op), comm_), "Reduce_scatter_block");
  }
  void all_gather(const float* in, float* out, int64_t n) override {
    if (n > kChunk) throw Error("MPI all_gather: blocks over 2^28 elements are not supported");
    check(MPI_Allgather(in, int(n), MPI_FLOAT, out, int(n), MPI_FLOAT, comm_), "Allgather");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    for (int64_t off = 0; off < bytes; off += kChunk)
      check(MPI_Bcast(static_cast<char*>(data) + off, int(std::min(kChunk, bytes - off)), MPI_BYTE, root, comm_), "Bcast");
  }
  void send(const void* data, int64_t bytes, int peer) override {
    for (int64_t off = 0; off < bytes; off += kChunk)
      check(MPI_Send(static_cast<const char*>(data) + off, int(std::min(kChunk, bytes - off)), MPI_BYTE, peer, 0, comm_), "Send");
  }
  void recv(void* data, int64_t bytes, int peer) override {
    for (int64_t off = 0; off < bytes; off += kChunk)
      check(MPI_Recv(static_cast<char*>(data) + off, int(std::min(kChunk, bytes - off)), MPI_BYTE, peer, 0, comm_,
                     MPI_STATUS_IGNORE), "Recv");
  }
  void barrier() override { check(MPI_Barrier(comm_), "Barrier"); }

 private:
  template <class T>
  void all_reduce_t(T* data, int64_t n, MPI_Datatype type, ReduceOp op) {
    for (int64_t off = 0; off < n; off += kChunk)
      check(MPI_Allreduce(MPI_IN_PLACE, data + off, int(std::min(kChunk, n - off)), type, mpi_op(op), comm_), "Allreduce");
  }
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

bool launched_by_mpi() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

MpiWorld::MpiWorld() {
  int provided = 0;
  // Only the main thread calls MPI; OpenMP threads compute between the calls.
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "Init_thread");
  std::atexit(finalize_at_exit);
  if (provided < MPI_THREAD_FUNNELED) throw Error("MPI: this MPI library does not support threads (MPI_THREAD_FUNNELED)");
  // Errors come back as codes, so that check() reports them as oar errors naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
  rank_ = world_->rank();
  size_ = world_->size();
  local_rank_ = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("MPI_LOCALRANKID", 0));
  local_size_ = std::max(1, env_int("OMPI_COMM_WORLD_LOCAL_SIZE", env_int("MPI_LOCALNRANKS", 1)));
}

MpiWorld& MpiWorld::get() {
  static MpiWorld w;
  return w;
}

void MpiWorld::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace oar
