#include "core/communicator.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/host_memory.h"

namespace oar {
namespace {

void check_rank(int r, int size) {
  if (r < 0 || r >= size)
    throw Error("communicator: rank " + std::to_string(r) + " does not exist in a group of " + std::to_string(size));
}

template <class T>
void reduce_into(T* acc, const T* x, int64_t n, ReduceOp op) {
  if (op == ReduceOp::Sum) {
    for (int64_t i = 0; i < n; i++) acc[i] += x[i];
  } else {
    for (int64_t i = 0; i < n; i++) acc[i] = std::max(acc[i], x[i]);
  }
}

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(float*, int64_t, ReduceOp) override {}
  void all_reduce(double*, int64_t, ReduceOp) override {}
  void reduce(float*, int64_t, int root, ReduceOp) override { check_rank(root, 1); }
  void reduce_scatter(const float* in, float* out, int64_t n, ReduceOp) override { copy(in, out, n); }
  void all_gather(const float* in, float* out, int64_t n) override { copy(in, out, n); }
  void broadcast(void*, int64_t, int root) override { check_rank(root, 1); }
  void send(const void*, int64_t, int peer) override { no_peer(peer); }
  void recv(void*, int64_t, int peer) override { no_peer(peer); }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleProcess>(); }

 private:
  static void copy(const float* in, float* out, int64_t n) {
    if (in != out) std::memmove(out, in, size_t(n) * sizeof(float));
  }
  [[noreturn]] static void no_peer(int peer) {
    throw Error("communicator: rank " + std::to_string(peer) + " does not exist in a single-process run");
  }
};

// The state the threads of one group share. A collective is two barriers: every rank posts its buffer, then each
// computes its own result from all posted buffers; the second barrier keeps the buffers alive until all have read.
struct Shared {
  explicit Shared(int n) : size(n), posted(size_t(n)) {}
  const int size;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<const void*> posted;
  std::map<std::pair<int, int>, std::vector<std::vector<uint8_t>>> mailboxes;  // (from, to) -> messages in order

  void wait_all() {
    std::unique_lock lock(mu);
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      generation++;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }
};

class ThreadRank final : public Communicator {
 public:
  ThreadRank(std::shared_ptr<Shared> s, int rank) : s_(std::move(s)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return s_->size; }

  void all_reduce(float* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, op); }
  void all_reduce(double* data, int64_t n, ReduceOp op) override { all_reduce_t(data, n, op); }

  void reduce(float* data, int64_t n, int root, ReduceOp op) override {
    check_rank(root, s_->size);
    s_->posted[size_t(rank_)] = data;
    s_->wait_all();
    std::vector<float> acc;
    if (rank_ == root) {
      acc.assign(static_cast<const float*>(s_->posted[0]), static_cast<const float*>(s_->posted[0]) + n);
      for (int r = 1; r < s_->size; r++) reduce_into(acc.data(), static_cast<const float*>(s_->posted[size_t(r)]), n, op);
    }
    s_->wait_all();
    if (rank_ == root) std::memcpy(data, acc.data(), size_t(n) * sizeof(float));
  }

  void reduce_scatter(const float* in, float* out, int64_t n, ReduceOp op) override {
    exchange(in, [&] {
      std::vector<float> acc(static_cast<const float*>(s_->posted[0]) + rank_ * n,
                             static_cast<const float*>(s_->posted[0]) + (rank_ + 1) * n);
      for (int r = 1; r < s_->size; r++) reduce_into(acc.data(), static_cast<const float*>(s_->posted[size_t(r)]) + rank_ * n, n, op);
      return acc;
    }, out, n);
  }

  void all_gather(const float* in, float* out, int64_t n) override {
    exchange(in, [&] {
      std::vector<float> all(size_t(s_->size * n));
      for (int r = 0; r < s_->size; r++)
        std::memcpy(all.data() + r * n, s_->posted[size_t(r)], size_t(n) * sizeof(float));
      return all;
    }, out, s_->size * n);
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    check_rank(root, s_->size);
    s_->posted[size_t(rank_)] = data;
    s_->wait_all();
    if (rank_ != root) std::memcpy(data, s_->posted[size_t(root)], size_t(bytes));
    s_->wait_all();
  }

  void send(const void* data, int64_t bytes, int peer) override {
    check_rank(peer, s_->size);
    const auto* p = static_cast<const uint8_t*>(data);
    std::lock_guard lock(s_->mu);
    s_->mailboxes[{rank_, peer}].emplace_back(p, p + bytes);
    s_->cv.notify_all();
  }

  void recv(void* data, int64_t bytes, int peer) override {
    check_rank(peer, s_->size);
    std::unique_lock lock(s_->mu);
    auto& box = s_->mailboxes[{peer, rank_}];
    s_->cv.wait(lock, [&] { return !box.empty(); });
    if (int64_t(box.front().size()) != bytes)
      throw Error("communicator: rank " + std::to_string(rank_) + " expected " + std::to_string(bytes) +
                  " bytes from rank " + std::to_string(peer) + ", got " + std::to_string(box.front().size()));
    if (bytes > 0) std::memcpy(data, box.front().data(), size_t(bytes));  // an empty message's data() may be null
    box.erase(box.begin());
  }

  void barrier() override { s_->wait_all(); }
  std::unique_ptr<Communicator> split(int, int) override {
    throw Error("communicator: an in-process thread group cannot be split");
  }

 private:
  template <class T>
  void all_reduce_t(T* data, int64_t n, ReduceOp op) {
    s_->posted[size_t(rank_)] = data;
    s_->wait_all();
    std::vector<T> acc(static_cast<const T*>(s_->posted[0]), static_cast<const T*>(s_->posted[0]) + n);
    for (int r = 1; r < s_->size; r++) reduce_into(acc.data(), static_cast<const T*>(s_->posted[size_t(r)]), n, op);
    s_->wait_all();  // every rank has read every buffer: now each may overwrite its own
    std::memcpy(data, acc.data(), size_t(n) * sizeof(T));
  }

  // Posts `in`, lets `compute` build this rank's result from all posted buffers, then writes it to out[0, n).
  template <class F>
  void exchange(const float* in, F compute, float* out, int64_t n) {
    s_->posted[size_t(rank_)] = in;
    s_->wait_all();
    std::vector<float> result = compute();
    s_->wait_all();
    std::memcpy(out, result.data(), size_t(n) * sizeof(float));
  }

  std::shared_ptr<Shared> s_;
  int rank_;
};

}  // namespace

namespace {

void check_bounds(const Communicator& c, const std::vector<int64_t>& bounds, int64_t piece) {
  bool ok = piece > 0 && bounds.size() == size_t(c.size()) + 1 && bounds[0] == 0;
  for (size_t k = 1; ok && k < bounds.size(); k++) ok = bounds[k] >= bounds[k - 1];
  if (!ok) throw Error("ring collective: " + std::to_string(c.size()) + " ascending blocks from 0 and pieces > 0 expected");
}

// One step of a ring: block `out` goes to the next rank in pieces while block `in` comes from the previous one,
// each piece into `scratch` and then handed to `take` (offset in the data, pointer, count), or with no scratch
// straight into place.
template <class Take>
void ring_step(Communicator& c, float* data, const std::vector<int64_t>& bounds, int out, int in, int64_t piece,
               float* scratch, Take take) {
  const int p = c.size(), next = (c.rank() + 1) % p, prev = (c.rank() + p - 1) % p;
  const int64_t out_n = bounds[size_t(out) + 1] - bounds[size_t(out)], in_n = bounds[size_t(in) + 1] - bounds[size_t(in)];
  // As many messages on every rank (pairs of ranks must agree): the largest block's pieces, some empty.
  int64_t largest = 0;
  for (size_t k = 0; k + 1 < bounds.size(); k++) largest = std::max(largest, bounds[k + 1] - bounds[k]);
  for (int64_t off = 0; off < largest; off += piece) {
    const int64_t so = std::min(piece, std::max<int64_t>(0, out_n - off));
    const int64_t ri = std::min(piece, std::max<int64_t>(0, in_n - off));
    // Past a block's end the count is 0 (the pointer stays inside the data).
    float* to = scratch ? scratch : data + bounds[size_t(in)] + std::min(off, in_n);
    const float* from = data + bounds[size_t(out)] + std::min(off, out_n);
    c.send_recv(from, so * int64_t(sizeof(float)), next, to, ri * int64_t(sizeof(float)), prev);
    take(bounds[size_t(in)] + off, to, ri);
  }
}

}  // namespace

void ring_reduce_scatter(Communicator& c, float* data, const std::vector<int64_t>& bounds, int64_t piece) {
  check_bounds(c, bounds, piece);
  const int p = c.size(), r = c.rank();
  if (p == 1) return;
  std::vector<float> scratch(size_t(std::min(piece, bounds.back())));
  // Step s sends block r-s-1 (partial sums of s+1 ranks) and adds the received block r-s-2 into its own; after
  // p-1 steps block r has every rank's part.
  for (int s = 0; s < p - 1; s++)
    ring_step(c, data, bounds, (r - s - 1 + 2 * p) % p, (r - s - 2 + 2 * p) % p, piece, scratch.data(),
              [&](int64_t at, const float* got, int64_t n) {
                float* d = data + at;
#pragma omp parallel for schedule(static) if (n > 65536)
                for (int64_t j = 0; j < n; j++) d[j] += got[j];
              });
}

void ring_all_gather(Communicator& c, float* data, const std::vector<int64_t>& bounds, int64_t piece) {
  check_bounds(c, bounds, piece);
  const int p = c.size(), r = c.rank();
  if (p == 1) return;
  // Step s passes on block r-s (this rank's own at s = 0, then the one received at step s-1), received in place.
  for (int s = 0; s < p - 1; s++)
    ring_step(c, data, bounds, (r - s + p) % p, (r - s - 1 + 2 * p) % p, piece, nullptr, [](int64_t, const float*, int64_t) {});
}

std::unique_ptr<Communicator> make_single_process_communicator() { return std::make_unique<SingleProcess>(); }

std::vector<std::unique_ptr<Communicator>> make_thread_group(int size) {
  if (size < 1) throw Error("communicator: a group needs at least one rank, got " + std::to_string(size));
  auto shared = std::make_shared<Shared>(size);
  std::vector<std::unique_ptr<Communicator>> group;
  for (int r = 0; r < size; r++) group.push_back(std::make_unique<ThreadRank>(shared, r));
  return group;
}

struct BackgroundSums::State {
  struct Sum {
    Communicator* comm;
    float* data;
    int64_t n;
    int root;  // -1: all-reduce
    bool release_off_root = false;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Sum> queue;
  bool running = false, quit = false;
  std::string error;
  double busy = 0, exposed = 0;
  std::thread thread;

  State() : thread([this] { loop(); }) {}

  void push(const Sum& sum) {
    std::lock_guard lock(mu);
    queue.push_back(sum);
    cv.notify_all();
  }

  void loop() {
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return quit || !queue.empty(); });
      // After a failure, or when the owner goes away mid-step (an exception), the queued sums are dropped: the
      // peers may never make them, and the job is ending anyway.
      if (quit || !error.empty()) queue.clear();
      if (queue.empty()) {
        cv.notify_all();
        if (quit) return;
        continue;
      }
      const Sum sum = queue.front();
      queue.pop_front();
      running = true;
      lock.unlock();
      const auto t0 = std::chrono::steady_clock::now();
      std::string failure;
      try {
        if (sum.root < 0) sum.comm->all_reduce_overlapped(sum.data, sum.n);
        else sum.comm->reduce_overlapped(sum.data, sum.n, sum.root);
        if (sum.release_off_root && sum.root >= 0 && sum.comm->rank() != sum.root)
          zero_and_release(sum.data, size_t(sum.n) * sizeof(float));
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "background sum: unknown failure";
      }
      lock.lock();
      busy += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (error.empty()) error = failure;
      running = false;
      cv.notify_all();
    }
  }
};

BackgroundSums::BackgroundSums() : s_(std::make_unique<State>()) {}

BackgroundSums::~BackgroundSums() {
  {
    std::lock_guard lock(s_->mu);
    s_->quit = true;
  }
  s_->cv.notify_all();
  s_->thread.join();
}

void BackgroundSums::start_all_reduce(Communicator& c, float* data, int64_t n) { s_->push({&c, data, n, -1}); }

void BackgroundSums::start_reduce(Communicator& c, float* data, int64_t n, int root, bool release_off_root) {
  check_rank(root, c.size());
  s_->push({&c, data, n, root, release_off_root});
}

void BackgroundSums::wait() {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock lock(s_->mu);
  s_->cv.wait(lock, [&] { return s_->queue.empty() && !s_->running; });
  s_->exposed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!s_->error.empty()) throw Error(std::exchange(s_->error, ""));
}

double BackgroundSums::busy_seconds() {
  std::lock_guard lock(s_->mu);
  return std::exchange(s_->busy, 0.0);
}

double BackgroundSums::exposed_seconds() {
  std::lock_guard lock(s_->mu);
  return std::exchange(s_->exposed, 0.0);
}

bool all_ranks_ok(Communicator& c, const std::string& my_error, std::string* first_error) {
  double failed = my_error.empty() ? 0 : double(c.size() - c.rank());  // the max picks the lowest failing rank
  c.all_reduce(&failed, 1, ReduceOp::Max);
  if (failed == 0) return true;
  const int who = c.size() - int(failed);
  int64_t len = c.rank() == who ? int64_t(my_error.size()) : 0;
  c.broadcast(&len, sizeof len, who);
  std::string msg = c.rank() == who ? my_error : std::string(size_t(len), ' ');
  c.broadcast(msg.data(), len, who);
  if (first_error) *first_error = (who == 0 ? "" : "rank " + std::to_string(who) + ": ") + msg;
  return false;
}

}  // namespace oar
