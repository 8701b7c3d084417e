// SmoothQuant for PaddleNLP's PTQ ("smooth": true): a per-channel scale s moves the outliers of a projection's
// input into its weights, x W^T = (x / s)(W s)^T, so that both quantize to int8 with less error. Each smoothed
// input is divided by s where it is made, so that the model stays the same in exact arithmetic:
//   q/k/v (input_layernorm's output): input_layernorm.weight / s, q, k and v columns * s;
//   gate/up (post_attention_layernorm's output): post_attention_layernorm.weight / s, gate and up columns * s;
//   with all_linears also o_proj (the attention output: v_proj rows / s, o columns * s; with grouped KV heads the
//   heads of a group share one s per channel) and down_proj (silu(gate) * up: up rows / s, down columns * s).
// s[c] = act_max[c]^alpha / w_max[c]^(1 - alpha) (act_max: the input's per-channel absolute maximum over the
// smoothing batches; w_max: the largest |w| of the channel's column in the smoothed weights). Without the search,
// alpha is 0.5 (SmoothQuant's). piecewise_search (oar's reading of PaddleNLP's smooth_piecewise_search, whose
// exact procedure is not documented): the channels, ranked by act_max, are split into k_piece pieces of equal
// size, and each piece in turn takes the alpha in [alpha_min, alpha_max] (steps of 0.1) and the factor in
// [scale_min, scale_max] (steps of 1) multiplying its s that give the smallest squared error of the group's a8w8
// outputs against float over the sampled rows (per-channel weights; the smoothed input rounded with the static
// step PTQ's observer `act` would take of it, from each smoothing batch's per-channel maxima: PTQ's own step
// when smooth_step and ptq_step cover the same batches); search_piece also tries
// every piece count from 1 to k_piece. No s is kept that does worse than no smoothing (never_worse).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "core/model_config.h"
#include "core/tensor.h"
#include "infer/calibration.h"
#include "io/weight_source.h"

namespace oar {

struct SmoothOptions {
  bool all_linears = false;
  bool o_proj = true;        // with all_linears: false leaves o_proj's input (and so V, as an int8 cache holds it) as is
  bool never_worse = true;   // false: keep the chosen s even where no smoothing scores better (for tests)
  ObserverReduce act = ObserverReduce::Average;  // PTQ's act_quant_method, whose step the search scores with
  bool piecewise_search = false;
  int64_t k_piece = 3;
  bool search_piece = false;
  double alpha_min = 0.2, alpha_max = 0.8, scale_min = 1.0, scale_max = 5.0;
};

// What smoothing did to one input: its group's name (e.g. "model.layers.0.self_attn.q_proj"), the error of its
// a8w8 outputs on the sampled rows before and after (sums of squares), and s's range.
struct SmoothReport {
  std::string group;
  double error_before = 0, error_after = 0;
  float s_min = 0, s_max = 0;
};

// The smoothed tensors, by Hugging Face name, in the dtypes `weights` stores them in: every norm, weight and bias
// that changed (host memory: one layer at a time is held in float32). `stats` from observe_channels on `weights`.
// `report` (may be empty) is called for each group. Throws oar::Error for a smoothed value its dtype cannot hold.
std::map<std::string, Tensor> smooth_weights(const LlamaConfig& cfg, const WeightSource& weights,
                                             const ChannelStats& stats, const SmoothOptions& opt,
                                             const std::function<void(const SmoothReport&)>& report = {});

}  // namespace oar
