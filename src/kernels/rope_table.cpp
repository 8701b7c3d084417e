// Rotary embedding tables. Frequencies and angles are computed in float32, as both Hugging Face
// (inv_freq in float32, positions x inv_freq in float32) and llama2.c (powf, cosf) do, so results agree closely.
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"

namespace oar {

std::vector<double> rope_inv_freq(const LlamaConfig& cfg) {
  const int64_t D = cfg.head_dim;
  std::vector<double> inv(size_t(D / 2));
  for (int64_t i = 0; i < D / 2; i++)
    inv[size_t(i)] = 1.0f / std::pow(float(cfg.rope_theta), float(2 * i) / float(D));
  const RopeScaling& rs = cfg.rope_scaling;
  if (rs.type == "linear") {
    for (auto& f : inv) f = float(f) / float(rs.factor);
  } else if (rs.type == "llama3") {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    const double old_ctx = double(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (auto& f : inv) {
      const float ff = float(f);
      const float wavelen = float(2 * M_PI) / ff;
      float out = wavelen > float(low_wavelen) ? ff / float(rs.factor) : ff;
      if (!(wavelen < float(high_wavelen)) && !(wavelen > float(low_wavelen))) {
        float smooth = (float(old_ctx) / wavelen - float(rs.low_freq_factor)) / float(rs.high_freq_factor - rs.low_freq_factor);
        out = (1 - smooth) * out / float(rs.factor) + smooth * out;
      }
      f = out;
    }
  } else if (!rs.type.empty()) {
    throw Error("rope_scaling type '" + rs.type + "' is not supported");
  }
  return inv;
}

RopeTable make_rope_table(const LlamaConfig& cfg, int64_t max_positions) {
  RopeTable t;
  t.max_positions = max_positions;
  t.half_dim = cfg.head_dim / 2;
  t.layout = cfg.rope_layout;
  std::vector<double> inv = rope_inv_freq(cfg);
  t.cos.resize(size_t(max_positions * t.half_dim));
  t.sin.resize(t.cos.size());
  for (int64_t p = 0; p < max_positions; p++)
    for (int64_t i = 0; i < t.half_dim; i++) {
      float angle = float(p) * float(inv[size_t(i)]);
      t.cos[size_t(p * t.half_dim + i)] = std::cos(angle);
      t.sin[size_t(p * t.half_dim + i)] = std::sin(angle);
    }
  return t;
}

}  // namespace oar
