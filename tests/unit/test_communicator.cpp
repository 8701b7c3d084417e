// The Communicator's collectives: the single-process group, and the in-process thread group (the reference
// semantics for multi-process ones) with 2, 3 and 4 ranks, each rank on its own thread.
#include <gtest/gtest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <functional>

#include "core/communicator.h"
#include "core/error.h"
#include "core/host_memory.h"
#include "core/tensor.h"
#include "test_ranks_util.h"

namespace oar {
namespace {

TEST(Communicator, SingleProcessIsTheIdentityAndHasNoPeers) {
  auto c = make_single_process_communicator();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  std::vector<float> x = {1.5f, -2.0f, 3.25f};
  c->all_reduce(x.data(), 3);
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  std::vector<float> out(3);
  c->all_gather(x.data(), out.data(), 3);
  EXPECT_EQ(out, x);
  c->reduce_scatter(x.data(), out.data(), 3, ReduceOp::Max);
  EXPECT_EQ(out, x);
  c->reduce(x.data(), 3, 0);
  EXPECT_EQ(x, (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_THROW(c->reduce(x.data(), 3, 1), Error);
  EXPECT_EQ(c->split(7, 0)->size(), 1);
  c->broadcast(x.data(), 12, 0);
  EXPECT_THROW(c->broadcast(x.data(), 12, 1), Error);
  EXPECT_THROW(c->send(x.data(), 12, 1), Error);
  EXPECT_THROW(c->recv(x.data(), 12, 0), Error);
  c->barrier();
}

TEST(Communicator, AllReduceGivesEveryRankTheSameSumAndMax) {
  for (int size : {2, 3, 4}) {
    on_ranks(size, [size](Communicator& c) {
      const int r = c.rank();
      std::vector<float> x = {float(r), float(r * r), 0.1f * float(r + 1)};
      c.all_reduce(x.data(), 3);
      float s0 = 0, s1 = 0, s2 = 0;
      for (int k = 0; k < size; k++) s0 += float(k), s1 += float(k * k), s2 += 0.1f * float(k + 1);  // rank order
      EXPECT_EQ(x[0], s0);
      EXPECT_EQ(x[1], s1);
      EXPECT_EQ(x[2], s2);
      double d[2] = {double(r), -double(r)};
      c.all_reduce(d, 2, ReduceOp::Max);
      EXPECT_EQ(d[0], double(size - 1));
      EXPECT_EQ(d[1], 0.0);
    });
  }
}

TEST(Communicator, ReduceSumsIntoTheRootAndLeavesTheOthers) {
  for (int root : {0, 2}) {
    on_ranks(3, [root](Communicator& c) {
      std::vector<float> x = {float(c.rank() + 1), -float(c.rank())};
      c.reduce(x.data(), 2, root);
      if (c.rank() == root) {
        EXPECT_EQ(x, (std::vector<float>{6.0f, -3.0f}));
      } else {
        EXPECT_EQ(x, (std::vector<float>{float(c.rank() + 1), -float(c.rank())}));
      }
    });
  }
  on_ranks(2, [](Communicator& c) { EXPECT_THROW(c.split(0, 0), Error); });
}

// Sums started on the background thread run in order while the caller goes on; wait() returns them done.
TEST(Communicator, BackgroundSumsFinishByWait) {
  on_ranks(3, [](Communicator& c) {
    BackgroundSums bg;
    std::vector<float> a(1000, float(c.rank() + 1)), b = {float(c.rank()), 1.0f};
    bg.start_all_reduce(c, a.data(), int64_t(a.size()));
    bg.start_reduce(c, b.data(), 2, 1);
    bg.start_all_reduce(c, a.data(), 10);  // after the first: 6 x 3 ranks
    bg.wait();
    EXPECT_EQ(a[0], 18.0f);
    EXPECT_EQ(a[999], 6.0f);
    if (c.rank() == 1) EXPECT_EQ(b, (std::vector<float>{3.0f, 3.0f}));
    else EXPECT_EQ(b, (std::vector<float>{float(c.rank()), 1.0f}));
    EXPECT_THROW(bg.start_reduce(c, b.data(), 2, 3), Error);  // no rank 3
  });
}

// Pages of [data, data + bytes) resident in memory (mincore), of those wholly inside it.
int64_t resident_pages(const void* data, size_t bytes) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t first = (uintptr_t(data) + page - 1) / page * page, last = (uintptr_t(data) + bytes) / page * page;
  if (first >= last) return 0;
  std::vector<unsigned char> in(size_t((last - first) / page));
  EXPECT_EQ(mincore(reinterpret_cast<void*>(first), last - first, in.data()), 0);
  int64_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

TEST(HostMemory, ZeroAndReleaseZeroesAndGivesWholePagesBack) {
  const int64_t n = 1 << 20;  // 4 MiB of floats
  Tensor t = Tensor::empty({n}, DType::F32);
  float* x = t.data<float>();
  for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
  const size_t bytes = size_t(n) * sizeof(float);
  ASSERT_GT(resident_pages(x, bytes), 1000);
  // An unaligned range: its whole pages go back, its ends are zeroed in place, its neighbours are kept.
  zero_and_release(x + 3, bytes - 7 * sizeof(float));
  EXPECT_LE(resident_pages(x, bytes), 2);
  EXPECT_EQ(x[0] + x[1] + x[2], 3.0f);
  EXPECT_EQ(x[n - 4] + x[n - 3] + x[n - 2] + x[n - 1], 4.0f);
  double sum = 0;
  for (int64_t i = 3; i < n - 4; i++) sum += x[i];
  EXPECT_EQ(sum, 0.0);
  // Less than a page: zeroed in place.
  std::vector<float> small(5, 2.0f);
  zero_and_release(small.data() + 1, 3 * sizeof(float));
  EXPECT_EQ(small, (std::vector<float>{2.0f, 0.0f, 0.0f, 0.0f, 2.0f}));
}

TEST(Communicator, BackgroundReduceCanReleaseTheOtherRanksBuffers) {
  on_ranks(3, [](Communicator& c) {
    const int64_t n = 1 << 18;
    Tensor t = Tensor::empty({n}, DType::F32);
    float* x = t.data<float>();
    for (int64_t i = 0; i < n; i++) x[i] = float(c.rank() + 1);
    BackgroundSums bg;
    bg.start_reduce(c, x, n, 2, /*release_off_root=*/true);
    bg.wait();
    // (before reading it: a read maps the zero page in)
    if (c.rank() != 2) EXPECT_LE(resident_pages(x, size_t(n) * sizeof(float)), 2);
    const float want = c.rank() == 2 ? 6.0f : 0.0f;  // the root keeps the sum, the others zeros
    EXPECT_EQ(x[0], want);
    EXPECT_EQ(x[n / 2], want);
    EXPECT_EQ(x[n - 1], want);
  });
}

TEST(Communicator, ReduceScatterAndAllGatherAreInverseHalvesOfAnAllReduce) {
  const int size = 3;
  const int64_t n = 2;
  on_ranks(size, [&](Communicator& c) {
    const int r = c.rank();
    std::vector<float> in(size_t(size * n));
    for (int64_t i = 0; i < size * n; i++) in[size_t(i)] = float(100 * r + i);
    std::vector<float> mine(static_cast<size_t>(n));
    c.reduce_scatter(in.data(), mine.data(), n);
    for (int64_t i = 0; i < n; i++) {
      float want = 0;
      for (int k = 0; k < size; k++) want += float(100 * k + r * n + i);
      EXPECT_EQ(mine[size_t(i)], want) << "rank " << r << " element " << i;
    }
    std::vector<float> all(size_t(size * n));
    c.all_gather(mine.data(), all.data(), n);
    std::vector<float> reduced = in;
    c.all_reduce(reduced.data(), size * n);
    EXPECT_EQ(all, reduced);
  });
}

TEST(Communicator, RingReduceScatterThenAllGatherIsAnAllReduce) {
  // Blocks of unequal sizes, one empty, sent in pieces smaller than some blocks and larger than others.
  for (int size : {2, 3, 4}) {
    for (int64_t piece : {int64_t(3), int64_t(1) << 22}) {
      on_ranks(size, [&](Communicator& c) {
        const int r = c.rank();
        std::vector<int64_t> bounds = {0};
        for (int k = 0; k < size; k++) bounds.push_back(bounds.back() + (k == 1 ? 0 : 7 + 3 * k));
        const int64_t n = bounds.back();
        std::vector<float> data(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; i++) data[size_t(i)] = float(1000 * r + i);
        std::vector<float> want = data;
        c.all_reduce(want.data(), n);
        ring_reduce_scatter(c, data.data(), bounds, piece);
        for (int64_t i = bounds[size_t(r)]; i < bounds[size_t(r) + 1]; i++)
          EXPECT_EQ(data[size_t(i)], want[size_t(i)]) << size << " ranks, rank " << r << " element " << i;
        ring_all_gather(c, data.data(), bounds, piece);
        EXPECT_EQ(data, want) << size << " ranks, rank " << r << ", pieces of " << piece;
      });
    }
  }
  on_ranks(2, [](Communicator& c) {
    std::vector<float> x(4);
    EXPECT_THROW(ring_reduce_scatter(c, x.data(), {0, 4}), Error);  // 2 ranks need 3 bounds
    EXPECT_THROW(ring_all_gather(c, x.data(), {0, 3, 2}), Error);
  });
}

TEST(Communicator, BroadcastAndPointToPoint) {
  on_ranks(4, [](Communicator& c) {
    const int r = c.rank();
    int64_t v[2] = {r == 2 ? 42 : -1, r == 2 ? 7 : -1};
    c.broadcast(v, sizeof v, 2);
    EXPECT_EQ(v[0], 42);
    EXPECT_EQ(v[1], 7);
    // A ring, as pipeline stages pass activations: each rank sends to the next and receives from the previous.
    const int next = (r + 1) % c.size(), prev = (r + c.size() - 1) % c.size();
    float out[2] = {float(r), float(r) + 0.5f}, got[2] = {0, 0};
    c.send(out, sizeof out, next);
    c.recv(got, sizeof got, prev);
    EXPECT_EQ(got[0], float(prev));
    EXPECT_EQ(got[1], float(prev) + 0.5f);
    EXPECT_THROW(c.recv(got, 4, 9), Error);
    c.barrier();
  });
}

TEST(Communicator, AMismatchedMessageIsAnError) {
  on_ranks(2, [](Communicator& c) {
    float x[2] = {1, 2};
    if (c.rank() == 0) c.send(x, sizeof x, 1);
    else EXPECT_THROW(c.recv(x, 4, 0), Error);
  });
  EXPECT_THROW(make_thread_group(0), Error);
}

// Setup agreement: every rank learns the lowest failing rank's message; with none failing, all go on.
TEST(Communicator, AllRanksOkReportsTheLowestFailingRank) {
  on_ranks(3, [](Communicator& c) {
    std::string first;
    EXPECT_TRUE(all_ranks_ok(c, "", &first));
    const std::string mine = c.rank() == 0 ? "" : "boom on " + std::to_string(c.rank());
    EXPECT_FALSE(all_ranks_ok(c, mine, &first));
    EXPECT_EQ(first, "rank 1: boom on 1");
    EXPECT_FALSE(all_ranks_ok(c, c.rank() == 0 ? "rank 0 broke" : "", &first));
    EXPECT_EQ(first, "rank 0 broke");
  });
}

}  // namespace
}  // namespace oar
