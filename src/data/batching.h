// From examples to oar::TrainBatch: PaddleNLP's zero padding (packing several examples into one row, alias
// intokens), its greedy variant, padded batches, and the pretraining batch.
#pragma once
#include <cstdint>
#include <vector>

#include "data/sft_dataset.h"
#include "data/train_batch.h"

namespace oar {

// One row of a batch: one example, or several packed. segment_ids number the examples 0, 1, ... and
// position_ids restart at 0 in each, so attention never crosses examples and each sees its own positions.
struct PackedRow {
  std::vector<int32_t> input_ids, labels, position_ids, segment_ids;
  std::vector<int64_t> examples;  // which input examples, in order (indices into the list given)
  int64_t size() const { return int64_t(input_ids.size()); }
};

// An example on its own row.
PackedRow single_row(const SftExample& ex, int64_t index = 0);

// zero_padding: examples in order, into a row while the total stays <= max_length; an example longer than
// max_length is dropped; a row is closed when the next example does not fit (ZeroPaddingMapDataset).
std::vector<PackedRow> pack_in_order(const std::vector<SftExample>& examples, int64_t max_length);
// greedy_zero_padding: buffers of `buffer_size` examples (after dropping the too-long ones); in each buffer,
// every example goes to the open pack with the most room left (the first such pack on ties), and a new pack
// is opened when it fits nowhere; packs come out in the order they were opened (generate_greedy_packs).
std::vector<PackedRow> pack_greedy(const std::vector<SftExample>& examples, int64_t max_length,
                                   int64_t buffer_size = 500);

// The rows a fine-tuning run trains on: packed when zero_padding (greedily when greedy_zero_padding), else one
// example per row (PaddleNLP then keeps every example; none is longer than max_length - 1 anyway).
std::vector<PackedRow> sft_rows(const std::vector<SftExample>& examples, int64_t max_length, bool zero_padding,
                                bool greedy_zero_padding);

struct PadOptions {
  int32_t pad_id = 0;              // input id on padding (PaddleNLP's Llama pads with 0); never learned
  int64_t pad_to = 0;              // at least this long (pad_to_max_length: max_length)
  int64_t pad_to_multiple_of = 0;  // then rounded up to a multiple of this (0: no rounding)
};
// Rows padded on the right to the longest (see PadOptions): padding has label -100, segment -1, position 0.
TrainBatch make_batch(const std::vector<const PackedRow*>& rows, const PadOptions& pad = {});
TrainBatch make_batch(const std::vector<PackedRow>& rows, const PadOptions& pad = {});

// Pretraining (run_pretrain.py's collate): each text has L + 1 tokens; input = text[:-1], labels = text[1:],
// positions 0..L-1, one segment per row (attention runs across the documents inside a sample, as PaddleNLP).
TrainBatch make_pretrain_batch(const std::vector<std::vector<int32_t>>& texts);

}  // namespace oar
