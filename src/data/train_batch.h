// The batch a training step consumes. It lives in data/ (below train/) because data/ builds it and train/
// consumes it: the batching code needs the type, not the model.
#pragma once
#include <cstdint>
#include <vector>

namespace oar {

// One micro-batch: B rows of L tokens. Packing (zero_padding) puts several examples in a row: attention never
// crosses segment boundaries and positions restart per example. Padding positions have segment -1 and label -100.
struct TrainBatch {
  int64_t B = 0, L = 0;
  std::vector<int32_t> input_ids;     // [B*L]
  std::vector<int32_t> labels;        // [B*L], -100 = not counted (already shifted: label[t] is the next token)
  std::vector<int32_t> position_ids;  // [B*L]
  std::vector<int32_t> segment_ids;   // [B*L]; tokens attend to earlier tokens of the same segment only
  // A plain causal batch (one example per row, no padding).
  static TrainBatch causal(int64_t B, int64_t L, std::vector<int32_t> ids, std::vector<int32_t> labels);
};

// Data parallelism's share of a global batch, as paddle.io.DistributedBatchSampler deals it: rank r of n takes
// the r-th contiguous block of ceil(B / n) rows. A batch that does not divide (an epoch's last, smaller one)
// gives its short ranks rows again from its own start (the sampler pads with the epoch's first samples instead).
TrainBatch rank_rows(const TrainBatch& global, int rank, int ranks);

}  // namespace oar
