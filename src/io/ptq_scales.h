// PaddleNLP's PTQ output that a8w8 reads: act_scales.json, the calibrated absolute maximum of each projection's
// input (the observer's average over the calibration batches), one number per key. Its keys end in
// "layers.<i>.self_attn.q_proj.activation_quanter" (the input of q, k and v), "...self_attn.o_proj...",
// "...mlp.gate_proj..." (gate and up) and "...mlp.down_proj..." (any prefix, e.g. "llama."); other keys are
// ignored.
#pragma once
#include <map>
#include <string>

#include "core/model_config.h"

namespace oar {

// Each projection's static activation step (absmax / 127), by its Hugging Face weight name
// ("model.layers.<i>.self_attn.q_proj.weight", ...): every projection of every layer. Throws oar::Error naming
// the file for a missing layer, a scale that is not a positive finite number, or a layer the model lacks.
std::map<std::string, float> load_act_scales(const std::string& path, const LlamaConfig& cfg);

}  // namespace oar
