#include "core/mpi_world.h"

// The C API only: OpenMPI's and MPICH's deprecated C++ bindings would need their own library.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <string>
#include <thread>

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
// Non-blocking collectives go in chunks of 4 MB: OpenMPI 4.1's libnbc runs each round that completes at once (its
// data already arrived) by recursing into the next, and a reduce of ~100 MB over TCP, thousands of pipelined rounds,
// overflowed the thread's stack (a SIGSEGV in opal_convertor_unpack under NBC_Progress, found by
// bench/dp_scaling.sh).
constexpr int64_t kNonBlockingChunk = int64_t(1) << 20;

class MpiCommunicator final : public Communicator {
 public:
  // `owned`: a communicator split from another, freed with this object (unless MPI has already finalised).
  // `concurrent`: MPI runs with MPI_THREAD_MULTIPLE (split groups inherit it).
  MpiCommunicator(MPI_Comm comm, bool owned, bool concurrent) : comm_(comm), owned_(owned), concurrent_(concurrent) {
    check(MPI_Comm_rank(comm_, &rank_), "Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "Comm_size");
    MPI_Comm node;  // the ranks of this group that share this rank's memory (collective, as the constructor is)
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node), "Comm_split_type");
    int here = 0;
    const int rc = MPI_Comm_size(node, &here);
    MPI_Comm_free(&node);
    check(rc, "Comm_size");
    int all_here = here == size_ ? 1 : 0;  // every rank must agree
    check(MPI_Allreduce(MPI_IN_PLACE, &all_here, 1, MPI_INT, MPI_MIN, comm_), "Allreduce");
    one_machine_ = all_here == 1;
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool on_one_machine() const override { return one_machine_; }
  bool concurrent_with_other_groups() const override { return concurrent_; }

  void all_reduce(float* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, MPI_FLOAT, op); }
  void all_reduce(double* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, MPI_DOUBLE, op); }
  void all_reduce_overlapped(float* data, int64_t n) override {
    for (int64_t off = 0; off < n; off += kNonBlockingChunk) {
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, data + off, int(std::min(kNonBlockingChunk, n - off)), MPI_FLOAT, MPI_SUM,
                           comm_, &req), "Iallreduce");
      wait_sleeping(req);
    }
  }
  void reduce_overlapped(float* data, int64_t n, int root) override {
    for (int64_t off = 0; off < n; off += kNonBlockingChunk) {
      MPI_Request req;
      float* p = data + off;
      check(MPI_Ireduce(rank_ == root ? MPI_IN_PLACE : p, rank_ == root ? p : nullptr,
                        int(std::min(kNonBlockingChunk, n - off)), MPI_FLOAT, MPI_SUM, root, comm_, &req), "Ireduce");
      wait_sleeping(req);
    }
  }
  void reduce(float* data, int64_t n, int root, ReduceOp op) override {
    for (int64_t off = 0; off < n; off += kChunk) {
      const int count = int(std::min(kChunk, n - off));
      float* p = data + off;
      // The root reduces into its own buffer; the others only send theirs.
      check(MPI_Reduce(rank_ == root ? MPI_IN_PLACE : p, rank_ == root ? p : nullptr, count, MPI_FLOAT, mpi_op(op), root,
                       comm_), "Reduce");
    }
  }
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
  void send_recv(const void* send_data, int64_t send_bytes, int send_peer, void* recv_data, int64_t recv_bytes,
                 int recv_peer) override {
    // In the chunks of send and recv, so that either side may be a plain send or recv; a side with no chunk left
    // talks to MPI_PROC_NULL.
    const char* out = static_cast<const char*>(send_data);
    char* in = static_cast<char*>(recv_data);
    for (int64_t off = 0; off < std::max(send_bytes, recv_bytes); off += kChunk) {
      const int64_t sn = std::clamp<int64_t>(send_bytes - off, 0, kChunk), rn = std::clamp<int64_t>(recv_bytes - off, 0, kChunk);
      check(MPI_Sendrecv(out + off, int(sn), MPI_BYTE, sn > 0 ? send_peer : MPI_PROC_NULL, 0, in + off, int(rn), MPI_BYTE,
                         rn > 0 ? recv_peer : MPI_PROC_NULL, 0, comm_, MPI_STATUS_IGNORE), "Sendrecv");
    }
  }
  void barrier() override { check(MPI_Barrier(comm_), "Barrier"); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "Comm_split");
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    return std::make_unique<MpiCommunicator>(sub, true, concurrent_);
  }

 private:
  template <class T>
  void all_reduce_t(T* data, int64_t n, MPI_Datatype type, ReduceOp op) {
    for (int64_t off = 0; off < n; off += kChunk)
      check(MPI_Allreduce(MPI_IN_PLACE, data + off, int(std::min(kChunk, n - off)), type, mpi_op(op), comm_), "Allreduce");
  }
  // MPI progresses a non-blocking operation inside MPI_Test; between tests this thread sleeps instead of spinning.
  static void wait_sleeping(MPI_Request& req) {
    for (int done = 0;;) {
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "Test");
      if (done) return;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  bool one_machine_ = true;
  bool concurrent_ = false;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

bool ask_for_multiple = false;  // MpiWorld::ask_for_concurrent_calls

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

bool launched_by_mpi() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

void MpiWorld::ask_for_concurrent_calls() { ask_for_multiple = true; }

MpiWorld::MpiWorld() {
  int provided = 0;
  // Open MPI's non-blocking reduce (libnbc) pipelines a large message over 2 to 4 ranks in 8 KB segments, one
  // round per MPI_Test, and the sharding stage2 reduces run on a thread that tests every 50 us: 9.2 s of sums a
  // step against 0.64 s with the binomial tree, which sends a chunk in one round (110M model, 2 ranks, 2 cores;
  // BENCHMARKS.md). A value set in the environment or by mpirun --mca wins (one in mca-params.conf does not).
  setenv("OMPI_MCA_coll_libnbc_ireduce_algorithm", "binomial", 0);
  // The main thread calls MPI, and a background thread sums gradients while the main one computes the backward
  // (BackgroundSums); OpenMP threads compute between the calls. With MPI_THREAD_MULTIPLE the two may call at once
  // on different groups (a tensor-parallel backward beside the data-parallel sums); with SERIALIZED they take
  // turns, and tensor parallelism sums after the backward.
  check(MPI_Init_thread(nullptr, nullptr, ask_for_multiple ? MPI_THREAD_MULTIPLE : MPI_THREAD_SERIALIZED, &provided),
        "Init_thread");
  std::atexit(finalize_at_exit);
  if (provided < MPI_THREAD_SERIALIZED)
    throw Error("MPI: this MPI library does not support calls from several threads (MPI_THREAD_SERIALIZED)");
  // Errors come back as codes, so that check() reports them as oar errors naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  // Every rank takes the same path: concurrent calls only where every rank was granted them.
  int multiple = provided >= MPI_THREAD_MULTIPLE ? 1 : 0;
  check(MPI_Allreduce(MPI_IN_PLACE, &multiple, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "Allreduce");
  world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false, multiple == 1);
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
