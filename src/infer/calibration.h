// PaddleNLP's PTQ observers for a8w8 and its int8 KV cache (notes/paddlenlp.md §6), run over a model's forward:
// the absolute maximum of each projection input that a8w8 quantizes with one static step (q/k/v share one input,
// gate/up another; o and down one each), and of K and V per kv head, once per calibration batch, then averaged
// over the batches ("avg" and "avg_headwise", PaddleNLP's defaults) or their maximum taken ("abs_max",
// "abs_max_headwise"). The weights are observed as given (SmoothQuant, infer/smoothing.h, changes them first).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/model_config.h"
#include "io/weight_source.h"

namespace oar {

enum class ObserverReduce { Average, Max };  // over the batches' absolute maxima

// The projection inputs a8w8 quantizes, in PaddleNLP's order (qkv_in_scale, out_linear_in_scale, ffn1_in_scale,
// ffn2_in_scale), named by the projection whose activation_quanter PaddleNLP writes.
inline constexpr std::array<const char*, 4> kCalibratedInputs = {"self_attn.q_proj", "self_attn.o_proj",
                                                                  "mlp.gate_proj", "mlp.down_proj"};

struct CalibrationStats {
  std::vector<std::array<double, 4>> act;  // per layer, per kCalibratedInputs entry
  std::vector<std::vector<double>> k, v;   // per layer, per kv head
  int64_t batches = 0;
};

// Runs the model of (cfg, weights), its products in `dtype` (float32, or bfloat16 as PaddleNLP's PTQ runs with
// "bf16": true; activations stay float32), over each batch and reduces what the observers saw. A batch's maximum
// is the maximum over its sequences, each prefilled on its own (as PaddleNLP's observers see one padded batch,
// without the memory of a whole batch's KV cache). `progress` (may be empty) is called after each batch with
// (done, total). Throws oar::Error for an input that is not finite.
CalibrationStats calibrate(const LlamaConfig& cfg, const WeightSource& weights, DType dtype,
                           const std::vector<std::vector<std::vector<int32_t>>>& batches, ObserverReduce act,
                           ObserverReduce kv, const std::function<void(int64_t, int64_t)>& progress = {});

// What SmoothQuant needs of each kCalibratedInputs input: the absolute maximum of every channel over all the
// batches (PaddleNLP's smooth_sampler "none") and in each batch (from which the static step that PTQ's observer
// would take of a smoothed input follows), and up to `rows` of its rows, a uniform sample of every token row seen
// (reservoir sampling with a fixed seed: the same data gives the same rows).
struct ChannelStats {
  std::vector<std::array<std::vector<float>, 4>> absmax;  // per layer, per input: [width]
  std::vector<std::array<std::vector<std::vector<float>>, 4>> batch_absmax;  // per layer, input, batch: [width]
  std::vector<std::array<Tensor, 4>> samples;             // per layer, per input: [rows kept, width] float32
};
ChannelStats observe_channels(const LlamaConfig& cfg, const WeightSource& weights, DType dtype,
                              const std::vector<std::vector<std::vector<int32_t>>>& batches, int64_t rows,
                              const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace oar
