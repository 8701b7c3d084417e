// oar export's weights: one safetensors file whose tensors each start on a page of their own
// (write_safetensors page_aligned), so that loading maps them as they are, already in the kernels' layout.
// Names are Hugging Face's. A projection stored in a quantized format keeps its parts as NAME (the data),
// NAME.scales and NAME.row_sums, and the metadata key NAME holds its format as JSON text:
// {"format": "a8w8", "group_size": 0, "act_step": 0.0123} (kernels/weight.h has the layouts).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/weight_source.h"

namespace oar {

inline constexpr const char* kPackedWeightsFile = "model.packed.safetensors";

// Whether `dir` holds an export's packed weights.
bool has_packed_weights(const std::string& dir);

// The packed file as a model's weights: stored_weight gives its quantized projections, get the rest (and names the
// --quant_type to load a quantized one with). Throws oar::Error naming the file for a bad header or metadata.
std::unique_ptr<WeightSource> open_packed_weights(const std::string& path);

// Writes the packed file atomically, in the given order. An entry whose format is empty is a plain tensor (its
// data); any other is written as its parts and its format.
void write_packed_weights(const std::string& path, const std::vector<std::pair<std::string, StoredWeight>>& entries);

}  // namespace oar
