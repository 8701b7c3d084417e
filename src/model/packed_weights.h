// A loaded model's weights as oar export writes them (io/packed_model.h): each tensor in its load format, in
// layer order, so that loading the export maps them back as they were.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "io/weight_source.h"
#include "model/llama.h"

namespace oar {

// The model must be on the host (CPU backend). The entries share the model's memory.
std::vector<std::pair<std::string, StoredWeight>> packed_weights(const LlamaModel& model);

}  // namespace oar
