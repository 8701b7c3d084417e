#include "io/paddle_layout.h"

#include <cstring>
#include <map>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "io/pdparams.h"
#include "io/safetensors.h"

namespace oar {
namespace {

constexpr const char* kLinearSuffixes[] = {"q_proj.weight",    "k_proj.weight",  "v_proj.weight", "o_proj.weight",
                                           "gate_proj.weight", "up_proj.weight", "down_proj.weight"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_linear(const std::string& hf_name) {
  if (hf_name == "lm_head.weight") return true;
  for (const char* s : kLinearSuffixes)
    if (ends_with(hf_name, std::string(".") + s)) return true;
  return false;
}

// "model.layers.3.mlp.up_proj.weight" -> "llama.layers.3.mlp.up_proj.weight"; lm_head keeps its name.
std::string paddle_name(const std::string& hf_name) {
  if (hf_name.rfind("model.", 0) == 0) return "llama." + hf_name.substr(6);
  return hf_name;
}

template <typename T>
void transpose_columns(const T* src, int64_t rows, int64_t cols, const std::vector<int64_t>& starts, int64_t width, T* dst) {
  constexpr int64_t kTile = 32;  // cache-friendly for both the strided reads and the writes
  for (size_t b = 0; b < starts.size(); ++b)
    for (int64_t r0 = 0; r0 < rows; r0 += kTile)
      for (int64_t c0 = 0; c0 < width; c0 += kTile)
        for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r)
          for (int64_t c = c0; c < std::min(width, c0 + kTile); ++c)
            dst[(int64_t(b) * width + c) * rows + r] = src[r * cols + starts[b] + c];
}

class PaddleLayoutSource : public WeightSource {
 public:
  PaddleLayoutSource(std::unique_ptr<WeightSource> p, const LlamaConfig& c) : p_(std::move(p)), cfg_(c) {}
  bool has(const std::string& name) const override {
    if (p_->has(paddle_name(name))) return true;
    return !fused_of(name).empty() && p_->has(fused_of(name));
  }
  Tensor get(const std::string& name) const override;
  std::string where() const override { return p_->where(); }

 private:
  Tensor get_stored(const std::string& name) const;  // HF orientation, the dtype as stored
  // The fused tensor that holds `hf_name`, or "" when it is not a fusable projection.
  static std::string fused_of(const std::string& hf_name);
  Tensor split_fused(const std::string& hf_name, const Tensor& fused) const;
  Tensor checked_2d(const std::string& pname) const {
    Tensor t = p_->get(pname);
    if (t.shape().size() != 2) fail(p_->where(), "tensor " + in_quotes(pname) + " is " + shape_str(t.shape()) + ", expected 2-D");
    return t;
  }

  std::unique_ptr<WeightSource> p_;
  LlamaConfig cfg_;
};

std::string PaddleLayoutSource::fused_of(const std::string& hf_name) {
  const std::string p = paddle_name(hf_name);
  for (const char* s : {"q_proj.weight", "k_proj.weight", "v_proj.weight"})
    if (ends_with(p, std::string("self_attn.") + s)) return p.substr(0, p.size() - std::strlen(s)) + "qkv_proj.weight";
  for (const char* s : {"gate_proj.weight", "up_proj.weight"})
    if (ends_with(p, std::string("mlp.") + s)) return p.substr(0, p.size() - std::strlen(s)) + "gate_up_fused_proj.weight";
  return "";
}

Tensor PaddleLayoutSource::get(const std::string& name) const {
  return as_dtype_bits(get_stored(name), DType::U16, DType::BF16);  // Paddle's bfloat16 is numpy's uint16
}

Tensor PaddleLayoutSource::get_stored(const std::string& name) const {
  const std::string pname = paddle_name(name);
  if (!is_linear(name)) return p_->get(pname);
  if (p_->has(pname) || fused_of(name).empty()) {
    Tensor w = checked_2d(pname);
    return gather_transposed(w, {0}, w.shape()[1]);
  }
  return split_fused(name, checked_2d(fused_of(name)));
}

// Column starts of one projection inside the fused [in, out] matrix (the layout in paddle_layout.h).
Tensor PaddleLayoutSource::split_fused(const std::string& name, const Tensor& fused) const {
  const int64_t D = cfg_.head_dim, H = cfg_.num_attention_heads, KV = cfg_.num_key_value_heads;
  const int64_t cols = fused.shape()[1];
  std::vector<int64_t> starts;
  int64_t width = D;
  if (ends_with(name, "gate_proj.weight") || ends_with(name, "up_proj.weight")) {
    if (cols != 2 * cfg_.intermediate_size)
      fail(p_->where(), "tensor " + in_quotes(fused_of(name)) + " has " + std::to_string(cols) + " columns, expected 2 x intermediate_size = " +
                            std::to_string(2 * cfg_.intermediate_size));
    width = cfg_.intermediate_size;
    starts = {ends_with(name, "gate_proj.weight") ? 0 : width};
    return gather_transposed(fused, starts, width);
  }
  if (cols != (H + 2 * KV) * D || H % KV)
    fail(p_->where(), "tensor " + in_quotes(fused_of(name)) + " has " + std::to_string(cols) + " columns, expected (heads + 2 x kv heads) x head_dim = " +
                          std::to_string((H + 2 * KV) * D));
  const int64_t g = H / KV, group = (g + 2) * D;
  for (int64_t i = 0; i < KV; ++i) {
    if (ends_with(name, "q_proj.weight"))
      for (int64_t j = 0; j < g; ++j) starts.push_back(i * group + j * D);
    else
      starts.push_back(i * group + (ends_with(name, "k_proj.weight") ? g : g + 1) * D);
  }
  return gather_transposed(fused, starts, width);
}

}  // namespace

PaddleTensorName paddle_name_of(const std::string& hf_name) {
  auto ends_with = [&](const std::string& suffix) {
    return hf_name.size() >= suffix.size() && hf_name.compare(hf_name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  PaddleTensorName out{hf_name.rfind("model.", 0) == 0 ? "llama." + hf_name.substr(6) : hf_name, false};
  if (ends_with(".lora_A.weight") || ends_with(".lora_B.weight")) {
    out.name.resize(out.name.size() - 7);  // PaddleNLP names the LoRA matrices after the module: no ".weight"
    out.transposed = true;
  } else {
    out.transposed = ends_with("_proj.weight") || hf_name == "lm_head.weight";
  }
  return out;
}

Tensor as_dtype_bits(const Tensor& t, DType from, DType to) {
  if (t.dtype() != from) return t;
  const Tensor c = t.contiguous();
  const size_t offset = size_t(static_cast<const uint8_t*>(c.raw()) - static_cast<const uint8_t*>(c.storage()->data()));
  return Tensor::from_storage(c.storage(), c.shape(), to, offset);
}

Tensor gather_transposed(const Tensor& w_in, const std::vector<int64_t>& starts, int64_t width) {
  const Tensor w = w_in.contiguous();
  const int64_t rows = w.shape()[0], cols = w.shape()[1];
  for (int64_t s : starts)
    if (s < 0 || width < 0 || s + width > cols) fail("", "column range outside the matrix");  // a caller bug
  Tensor out = Tensor::empty({int64_t(starts.size()) * width, rows}, w.dtype());
  switch (dtype_size(w.dtype())) {
    case 2: transpose_columns(static_cast<const uint16_t*>(w.raw()), rows, cols, starts, width, static_cast<uint16_t*>(out.raw())); break;
    case 4: transpose_columns(static_cast<const uint32_t*>(w.raw()), rows, cols, starts, width, static_cast<uint32_t*>(out.raw())); break;
    case 8: transpose_columns(static_cast<const uint64_t*>(w.raw()), rows, cols, starts, width, static_cast<uint64_t*>(out.raw())); break;
    default: fail("", std::string("cannot transpose a ") + dtype_name(w.dtype()) + " matrix");
  }
  return out;
}

bool is_paddle_layout(const WeightSource& s) { return s.has("llama.embed_tokens.weight"); }

std::unique_ptr<WeightSource> paddle_layout_as_hf(std::unique_ptr<WeightSource> paddle, const LlamaConfig& cfg) {
  return std::make_unique<PaddleLayoutSource>(std::move(paddle), cfg);
}

bool has_pdparams(const std::string& dir) {
  return file_exists(join_path(dir, "model_state.pdparams")) || file_exists(join_path(dir, "model_state.pdparams.index.json"));
}

std::unique_ptr<WeightSource> open_pdparams_dir(const std::string& dir, const std::string& stem) {
  const std::string index = join_path(dir, stem + ".pdparams.index.json");
  if (!file_exists(index)) {
    const std::string single = join_path(dir, stem + ".pdparams");
    return std::make_unique<TensorMapSource>(single, load_pdparams(single));
  }
  return std::make_unique<TensorMapSource>(index, read_indexed_tensors(dir, index, load_pdparams));
}

}  // namespace oar
