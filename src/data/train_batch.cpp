#include "data/train_batch.h"

#include <string>
#include <utility>

#include "core/error.h"

namespace oar {

TrainBatch TrainBatch::causal(int64_t B, int64_t L, std::vector<int32_t> ids, std::vector<int32_t> labels) {
  if (B <= 0 || L <= 0 || int64_t(ids.size()) != B * L || int64_t(labels.size()) != B * L)
    throw Error("TrainBatch::causal: " + std::to_string(ids.size()) + " ids and " + std::to_string(labels.size()) +
                " labels for " + std::to_string(B) + " rows of " + std::to_string(L));
  TrainBatch b;
  b.B = B;
  b.L = L;
  b.input_ids = std::move(ids);
  b.labels = std::move(labels);
  b.position_ids.resize(size_t(B * L));
  b.segment_ids.assign(size_t(B * L), 0);
  for (int64_t t = 0; t < B * L; t++) b.position_ids[size_t(t)] = int32_t(t % L);
  return b;
}

TrainBatch rank_rows(const TrainBatch& g, int rank, int ranks) {
  if (ranks <= 0 || rank < 0 || rank >= ranks || g.B <= 0) throw Error("rank_rows: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
  const size_t n = size_t(g.B * g.L);
  if (g.input_ids.size() != n || g.labels.size() != n || g.position_ids.size() != n || g.segment_ids.size() != n)
    throw Error("rank_rows: a batch of " + std::to_string(g.B) + " x " + std::to_string(g.L) + " without ids, labels, positions and segments for each");
  const int64_t per = (g.B + ranks - 1) / ranks;
  TrainBatch b;
  b.B = per;
  b.L = g.L;
  for (int64_t k = 0; k < per; k++) {
    const size_t row = size_t((int64_t(rank) * per + k) % g.B), L = size_t(g.L);
    auto take = [&](const std::vector<int32_t>& from, std::vector<int32_t>& to) {
      to.insert(to.end(), from.begin() + long(row * L), from.begin() + long((row + 1) * L));
    };
    take(g.input_ids, b.input_ids);
    take(g.labels, b.labels);
    take(g.position_ids, b.position_ids);
    take(g.segment_ids, b.segment_ids);
  }
  return b;
}

}  // namespace oar
