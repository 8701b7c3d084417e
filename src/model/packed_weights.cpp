#include "model/packed_weights.h"

#include "core/error.h"

namespace oar {
namespace {

StoredWeight plain(const Tensor& t) { return StoredWeight{"", t, Tensor(), Tensor(), 0, 0}; }

// Dense projections are plain tensors (as a checkpoint's); quantized ones keep their parts and format.
StoredWeight stored(const Weight& w) {
  if (!is_quantized(w.format)) return plain(w.data);
  return StoredWeight{weight_format_name(w.format), w.data, w.scales, w.row_sums, w.group_size, w.act_step};
}

}  // namespace

std::vector<std::pair<std::string, StoredWeight>> packed_weights(const LlamaModel& model) {
  if (model.backend().device() != Device::CPU) throw Error("export: the model must be loaded on the cpu");
  const LlamaWeights& w = model.weights();
  std::vector<std::pair<std::string, StoredWeight>> out;
  out.emplace_back("model.embed_tokens.weight", plain(w.embed_tokens));
  for (size_t l = 0; l < w.layers.size(); l++) {
    const LlamaLayerWeights& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(p + "input_layernorm.weight", plain(L.input_norm));
    const Weight* proj[7] = {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj};
    for (int i = 0; i < 7; i++) {
      out.emplace_back(p + kLayerProjections[i] + ".weight", stored(*proj[i]));
      if (i == 3) out.emplace_back(p + "post_attention_layernorm.weight", plain(L.post_attn_norm));
    }
    const std::pair<const char*, const Tensor*> biases[4] = {
        {"self_attn.q_proj.bias", &L.q_bias}, {"self_attn.k_proj.bias", &L.k_bias},
        {"self_attn.v_proj.bias", &L.v_bias}, {"self_attn.o_proj.bias", &L.o_bias}};
    for (const auto& [name, t] : biases)
      if (t->defined()) out.emplace_back(p + name, plain(*t));
  }
  out.emplace_back("model.norm.weight", plain(w.final_norm));
  // A tied head is the embedding again (the loader makes it so); an untied one is written.
  if (!model.config().tie_word_embeddings) out.emplace_back("lm_head.weight", plain(w.lm_head.data));
  return out;
}

}  // namespace oar
