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

}  // namespace oar
