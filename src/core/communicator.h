// Collective communication between the ranks of one job: the data-parallel gradient sum today; the tensor-,
// pipeline- and sharding-parallel groups of the distributed-training issue build on the same calls.
//
// A Communicator is one rank's handle on one group of `size()` ranks. Every rank of the group must make the same
// calls in the same order with the same counts (as with MPI and NCCL); a call returns when this rank's part is
// done. Buffers are host memory. Two implementations live here: the single-process group (size 1, what every run
// uses until MPI arrives) and an in-process group of threads, which gives tests and the distributed work a
// reference with the same semantics as a multi-process one.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

namespace oar {

enum class ReduceOp { Sum, Max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether every rank of the group runs on one machine (its collectives are copies through shared memory, on
  // the same cores as the computation).
  virtual bool on_one_machine() const { return true; }
  // Whether one thread may call this group while another thread of the process calls another group of the same
  // job (MPI_THREAD_MULTIPLE): a background thread summing data-parallel gradients during a backward that sums in
  // its tensor-parallel group. Never two threads on the same group at once.
  virtual bool concurrent_with_other_groups() const { return false; }

  // In place: every rank's data[0, n) becomes the elementwise reduction over the ranks.
  virtual void all_reduce(float* data, int64_t n, ReduceOp op = ReduceOp::Sum) = 0;
  virtual void all_reduce(double* data, int64_t n, ReduceOp op = ReduceOp::Sum) = 0;
  // all_reduce and reduce (sums) for a background thread overlapping computation: the MPI ones wait in short sleeps
  // instead of spinning, so they leave the cores to the computation.
  virtual void all_reduce_overlapped(float* data, int64_t n) { all_reduce(data, n); }
  virtual void reduce_overlapped(float* data, int64_t n, int root) { reduce(data, n, root); }
  // In place on `root`: its data[0, n) becomes the reduction over the ranks; the other ranks' data is unchanged.
  virtual void reduce(float* data, int64_t n, int root, ReduceOp op = ReduceOp::Sum) = 0;
  // in[0, size() * n): rank r receives in out[0, n) the reduction over the ranks of block r (in[r*n, (r+1)*n)).
  virtual void reduce_scatter(const float* in, float* out, int64_t n, ReduceOp op = ReduceOp::Sum) = 0;
  // Each rank gives in[0, n); every rank receives out[0, size() * n), the ranks' blocks in rank order.
  virtual void all_gather(const float* in, float* out, int64_t n) = 0;
  // data[0, bytes) of rank `root` is copied to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Point to point (pipeline stages): a send to `peer` is matched by that peer's recv from this rank.
  virtual void send(const void* data, int64_t bytes, int peer) = 0;
  virtual void recv(void* data, int64_t bytes, int peer) = 0;
  // A send and a receive at once (MPI_Sendrecv): two pipeline stages exchanging activations and gradients, which
  // would deadlock as blocking sends on both sides. The default sends first (the thread group's sends do not block).
  virtual void send_recv(const void* send_data, int64_t send_bytes, int send_peer, void* recv_data, int64_t recv_bytes,
                         int recv_peer) {
    send(send_data, send_bytes, send_peer);
    recv(recv_data, recv_bytes, recv_peer);
  }
  virtual void barrier() = 0;
  // The sub-group of the ranks that pass the same `color`, ranked by `key` (MPI_Comm_split): the hybrid-parallel
  // groups (data, sharding, ...) of one job. Every rank must call it.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// Sums started in order on one background thread while the caller computes (the gradient buckets of a backward):
// start_*() return at once, wait() returns when every started sum is done and rethrows the first failure (the
// sums queued behind a failed one are dropped, as are those pending when the object is destroyed). Every
// rank of a group must start the same sums on it in the same order. Between the first start and wait(), the caller
// uses no communicator itself, or only other groups where concurrent_with_other_groups() says so.
class BackgroundSums {
 public:
  BackgroundSums();
  ~BackgroundSums();
  void start_all_reduce(Communicator& c, float* data, int64_t n);
  // With `release_off_root`, the ranks other than root are left zeros afterwards, and their whole pages go back to
  // the OS (zero_and_release: sharding stage2, where only a gradient's owner keeps it).
  void start_reduce(Communicator& c, float* data, int64_t n, int root, bool release_off_root = false);
  void wait();
  // Seconds the thread spent in the sums since the last call, and of them the time wait() waited (the part the
  // computation did not hide).
  double busy_seconds();
  double exposed_seconds();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Setup-time agreement, so that one rank failing alone cannot leave the others waiting in another collective: every
// rank says whether it failed, at the same points (each collective of a setup phase is preceded by one). True when
// none did; otherwise `first_error` gets the lowest failing rank's message, prefixed "rank N: " unless N is 0.
bool all_ranks_ok(Communicator& c, const std::string& my_error, std::string* first_error);

// Thrown on a rank that learned from all_ranks_ok that another rank failed; what() is that rank's message. A rank
// catching it must not call all_ranks_ok again for the same failure.
struct OtherRankFailed : Error {
  using Error::Error;
};

// Ring collectives over the blocks [bounds[k], bounds[k+1]) of data (bounds: size() + 1 offsets, ascending, from 0),
// through send_recv: each rank sends and receives (size() - 1) / size() of the data, as a ring all-reduce does in
// each half, in pieces (one scratch piece of memory).
//  ring_reduce_scatter: rank r's block r becomes the sum over the ranks; its other blocks hold partial sums.
//  ring_all_gather: every rank's block k becomes rank k's block k.
// (Open MPI 4.1's MPI_Reduce_scatter_block took 0.42 s for 2 ranks x 512 MB on one machine, a ring 0.11 s.)
// `piece`: floats per message (tests use small ones).
void ring_reduce_scatter(Communicator& c, float* data, const std::vector<int64_t>& bounds, int64_t piece = 1 << 22);
void ring_all_gather(Communicator& c, float* data, const std::vector<int64_t>& bounds, int64_t piece = 1 << 22);

// The group of one: collectives copy or return at once; send and recv have no peer and throw.
std::unique_ptr<Communicator> make_single_process_communicator();

// `size` communicators over shared memory, one per rank; rank i is element i. Each rank's must be used by one
// thread at a time (each rank on its own thread); they cannot be split. Reductions add in rank order, so every rank gets the same bits. The ranks share the process: models
// that run on the CPU kernels (which keep scratch buffers in one instance per process) must not run on two
// ranks at once until scratch belongs to a backend instance; nothing broadcasts initial weights either.
std::vector<std::unique_ptr<Communicator>> make_thread_group(int size);

}  // namespace oar
