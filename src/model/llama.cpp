#include "model/llama.h"

#include <algorithm>

#include "core/error.h"
#include "core/fs.h"
#include "io/model_source.h"
#include "io/safetensors.h"

namespace oar {
namespace {

bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// Checks a fetched tensor (in host memory) against the shape the config implies, and converts it to `want`.
Tensor checked(Tensor t, const WeightSource& src, const std::string& name, const Shape& shape, DType want) {
  std::string where = src.where();
  if (auto* ws = dynamic_cast<const WeightStoreSource*>(&src)) where = ws->file_of(name);
  if (!is_float_dtype(t.dtype()))
    fail(where, "tensor '" + name + "' has dtype " + dtype_name(t.dtype()) + ", expected float32, bfloat16 or float16");
  if (t.shape() != shape)
    fail(where, "tensor '" + name + "' has shape " + shape_str(t.shape()) + " but the config implies " + shape_str(shape));
  if (t.dtype() == want) return t;  // zero-copy view of the mapped file
  return t.to(want);
}

Tensor fetch(const WeightSource& src, const std::string& name, const Shape& shape, DType want) {
  return checked(src.get(name), src, name, shape, want);
}

// A projection its file stores in one of oar's formats, used as it is; every part is checked against the shape the
// config implies (a lying file is named in the error).
Weight stored_weight(StoredWeight st, const std::string& name, const Shape& shape, const std::string& where,
                     Backend& backend) {
  WeightFormat format;
  if (!weight_format_of(st.format, format))
    fail(where, "tensor '" + name + "' is stored as '" + st.format + "', which is not a weight format oar knows");
  try {
    return backend.upload_weight(Weight::assemble(format, shape[0], shape[1], std::move(st.data), std::move(st.scales),
                                                  std::move(st.row_sums), st.group_size, st.act_step));
  } catch (const Error& e) {
    fail(where, "tensor '" + name + "': " + e.what());
  }
}

// Whether a stored weight is what --quant_type asks for (none: anything stored is used as it is); int4 groups of
// -1 are one group of the config's whole input width.
bool stored_matches(const StoredWeight& st, const std::optional<QuantSpec>& quant, const Shape& shape) {
  if (!quant) return true;
  WeightFormat f;
  if (!weight_format_of(st.format, f) || f != quant->format) return false;
  return f != WeightFormat::Int4 || st.group_size == (quant->group_size == -1 ? shape[1] : quant->group_size);
}

// An attention or MLP projection in the load's format: bits its file stores in an oar format as they are, when no
// --quant_type is given or it names that format (GGUF's Q4_0 is weight_only_int4 in groups of 32; oar export's
// file holds the export's format); else `quant` when given; else dtype's dense
// format (other GGUF quantizations dequantized exactly, then rounded to dtype: quantizing them again per channel
// moved the fixtures' logits by 1-3%). A weight the format cannot hold (int4 groups) is named in the error.
Weight pack_projection(const WeightSource& src, const std::string& name, const Shape& shape, DType dtype,
                       const std::optional<QuantSpec>& quant, Backend& backend) {
  if (std::optional<StoredWeight> st = src.stored_weight(name); st && stored_matches(*st, quant, shape))
    return stored_weight(std::move(*st), name, shape, src.where(), backend);
  const Tensor host = fetch(src, name, shape, dtype);
  QuantSpec spec = quant.value_or(QuantSpec{dense_format(dtype), -1});
  if (spec.act_steps) {
    const auto it = spec.act_steps->find(name);
    if (it == spec.act_steps->end()) fail(src.where(), name + ": no static activation scale for this projection");
    spec.act_step = it->second;
  }
  try {
    return backend.pack_weight(host, spec);
  } catch (const Error& e) {
    fail(src.where(), name + ": " + e.what());
  }
}

}  // namespace

int64_t StepBatch::add_sequence(const int32_t* toks, int64_t n, int64_t pos0, const std::vector<int32_t>& table) {
  SeqSlice s;
  s.row0 = int64_t(tokens.size());
  s.n = n;
  s.pos0 = pos0;
  s.block_table = table.data();
  s.num_table_blocks = int64_t(table.size());
  for (int64_t i = 0; i < n; i++) {
    tokens.push_back(toks[i]);
    positions.push_back(int32_t(pos0 + i));
  }
  seqs.push_back(s);
  return s.row0;
}

std::unique_ptr<LlamaModel> LlamaModel::load(const std::string& path, DType dtype, Backend& backend,
                                             std::optional<QuantSpec> quant) {
  const ModelSource ms = open_model_source(path);
  return from_weights(ms.config, *ms.weights, dtype, backend, quant);
}

std::unique_ptr<LlamaModel> LlamaModel::from_weights(const LlamaConfig& cfg, const WeightSource& src, DType dtype,
                                                     Backend& backend, std::optional<QuantSpec> quant) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw Error(std::string("--dtype ") + dtype_name(dtype) + " is not supported (float32, bfloat16 or float16)");
  cfg.validate(src.where());
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->cfg_ = cfg;
  m->dtype_ = dtype;
  m->be_ = &backend;
  const WeightFormat dense = dense_format(dtype);
  m->proj_ = quant.value_or(QuantSpec{dense, -1});
  bool first = true;
  // A tensor converted as it loaded no longer needs its file's pages in memory (views of the file keep them).
  auto done_with = [&](const std::string& name, const Tensor& loaded) {
    if (loaded.storage() && loaded.storage()->owned()) src.release(name);
  };
  auto proj = [&](const std::string& name, const Shape& shape) -> Weight {
    Weight w = pack_projection(src, name, shape, dtype, quant, backend);
    done_with(name, w.data);
    if (first && !quant) m->proj_ = QuantSpec{w.format, w.format == WeightFormat::Int4 ? w.group_size : -1};
    first = false;
    return w;
  };
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size, F = cfg.intermediate_size;
  const int64_t QD = cfg.q_dim(), KVD = cfg.kv_dim();
  LlamaWeights& w = m->w_;
  {
    // Kept as stored when that is float32 or bfloat16 (zero-copy); float16 and quantized storage become dtype.
    const std::string name = "model.embed_tokens.weight";
    Tensor e = src.get(name);
    const bool keep = e.dtype() != DType::F16 && src.quantized_bits(name) == 0;
    const DType want = keep ? e.dtype() : dtype;
    w.embed_tokens = checked(std::move(e), src, name, {V, C}, want);
  }
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LlamaLayerWeights L;
    L.input_norm = fetch(src, p + "input_layernorm.weight", {C}, DType::F32);
    L.post_attn_norm = fetch(src, p + "post_attention_layernorm.weight", {C}, DType::F32);
    L.q_proj = proj(p + "self_attn.q_proj.weight", {QD, C});
    L.k_proj = proj(p + "self_attn.k_proj.weight", {KVD, C});
    L.v_proj = proj(p + "self_attn.v_proj.weight", {KVD, C});
    L.o_proj = proj(p + "self_attn.o_proj.weight", {C, QD});
    if (cfg.attention_bias) {
      L.q_bias = fetch(src, p + "self_attn.q_proj.bias", {QD}, DType::F32);
      L.k_bias = fetch(src, p + "self_attn.k_proj.bias", {KVD}, DType::F32);
      L.v_bias = fetch(src, p + "self_attn.v_proj.bias", {KVD}, DType::F32);
    }
    // Llama's attention_bias also puts a bias on o_proj; Qwen2 has none there (config.o_proj_bias says which).
    if (cfg.o_proj_bias) L.o_bias = fetch(src, p + "self_attn.o_proj.bias", {C}, DType::F32);
    L.gate_proj = proj(p + "mlp.gate_proj.weight", {F, C});
    L.up_proj = proj(p + "mlp.up_proj.weight", {F, C});
    L.down_proj = proj(p + "mlp.down_proj.weight", {C, F});
    w.layers.push_back(std::move(L));
  }
  w.final_norm = fetch(src, "model.norm.weight", {C}, DType::F32);
  for (Tensor* t : m->vector_tensors()) *t = backend.upload(*t);
  if (cfg.tie_word_embeddings) {
    // The embedding already on the device serves as the LM head when it has the compute dtype (one copy).
    w.lm_head = w.embed_tokens.dtype() == dtype ? Weight::dense(w.embed_tokens)
                                                : backend.pack_weight(fetch(src, "model.embed_tokens.weight", {V, C}, dtype), dense);
  } else {
    w.lm_head = backend.pack_weight(fetch(src, "lm_head.weight", {V, C}, dtype), dense);
    done_with("lm_head.weight", w.lm_head.data);
  }
  done_with("model.embed_tokens.weight", w.embed_tokens);
  m->rope_ = make_rope_table(cfg, cfg.max_position_embeddings);
  return m;
}

std::vector<Tensor*> LlamaModel::vector_tensors() {
  std::vector<Tensor*> ts{&w_.embed_tokens, &w_.final_norm};
  for (auto& L : w_.layers)
    for (Tensor* t : {&L.input_norm, &L.post_attn_norm, &L.q_bias, &L.k_bias, &L.v_bias, &L.o_bias})
      if (t->defined()) ts.push_back(t);
  return ts;
}

size_t LlamaModel::decode_weight_bytes() const {
  size_t b = 0;
  for (const auto& L : w_.layers) {
    for (const Weight* m : {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj})
      b += m->bytes();
    b += L.input_norm.nbytes() + L.post_attn_norm.nbytes();
  }
  b += w_.lm_head.bytes() + w_.final_norm.nbytes();
  b += size_t(cfg_.hidden_size) * dtype_size(w_.embed_tokens.dtype());
  return b;
}

void LlamaModel::forward(const StepBatch& batch, KVCache& cache, Tensor& logits) {
  Backend& be = *be_;
  Kernels& K = be.ops();
  const int64_t T = int64_t(batch.tokens.size());
  const int64_t C = cfg_.hidden_size, H = cfg_.num_attention_heads, G = cfg_.num_key_value_heads, D = cfg_.head_dim;
  const int64_t F = cfg_.intermediate_size, V = cfg_.vocab_size;
  if (T == 0) throw Error("forward: empty batch");
  if (cache.backend().device() != be.device())
    throw Error(std::string("forward: the KV cache is on ") + device_name(cache.backend().device()) +
                ", the model on " + device_name(be.device()));
  for (const SeqSlice& s : batch.seqs)
    if (s.pos0 + s.n > rope_.max_positions)
      throw Error("sequence of " + std::to_string(s.pos0 + s.n) + " tokens exceeds the model's context (" +
                  std::to_string(rope_.max_positions) + ", max_position_embeddings)");

  Tensor x = be.empty({T, C}, DType::F32);
  Tensor h = be.empty({T, C}, DType::F32);
  Tensor q = be.empty({T, H, D}, DType::F32);
  Tensor k = be.empty({T, G, D}, DType::F32);
  Tensor v = be.empty({T, G, D}, DType::F32);
  Tensor att = be.empty({T, H, D}, DType::F32);
  Tensor gate = be.empty({T, F}, DType::F32);
  Tensor up = be.empty({T, F}, DType::F32);

  K.embedding(w_.embed_tokens, batch.tokens.data(), T, x);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; l++) {
    const LlamaLayerWeights& L = w_.layers[size_t(l)];
    // attention block
    K.rmsnorm(x, L.input_norm, float(cfg_.rms_norm_eps), h);
    Tensor q2 = q.view({T, H * D}), k2 = k.view({T, G * D}), v2 = v.view({T, G * D});
    K.linear_multi(h, {&L.q_proj, &L.k_proj, &L.v_proj},
                   {L.q_bias.defined() ? &L.q_bias : nullptr, L.k_bias.defined() ? &L.k_bias : nullptr,
                    L.v_bias.defined() ? &L.v_bias : nullptr},
                   {&q2, &k2, &v2});
    K.rope(q, batch.positions.data(), rope_);
    K.rope(k, batch.positions.data(), rope_);
    KVLayerView kv = cache.layer(l);
    K.kv_write(kv, k, v, batch.seqs);
    K.attention(q, kv, batch.seqs, att);
    K.linear(att.view({T, H * D}), L.o_proj, L.o_bias.defined() ? &L.o_bias : nullptr, h);
    K.add_inplace(x, h);
    // MLP block
    K.rmsnorm(x, L.post_attn_norm, float(cfg_.rms_norm_eps), h);
    K.linear_swiglu(h, L.gate_proj, L.up_proj, gate, up);
    K.linear(gate, L.down_proj, nullptr, h);
    K.add_inplace(x, h);
  }
  // Only the rows whose logits are wanted go through the final norm and the (large) LM head.
  const int64_t R = int64_t(batch.logit_rows.size());
  std::vector<int32_t> rows(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; r++) {
    const int64_t row = batch.logit_rows[size_t(r)];
    if (row < 0 || row >= T) throw Error("forward: logit row out of range");
    rows[size_t(r)] = int32_t(row);
  }
  Tensor sel = be.empty({R, C}, DType::F32);
  K.embedding(x, rows.data(), R, sel);  // a row gather: x is a [T, C] table
  K.rmsnorm(sel, w_.final_norm, float(cfg_.rms_norm_eps), sel);
  if (!logits.defined() || logits.numel() != R * V || logits.dtype() != DType::F32 || logits.device() != be.device())
    logits = be.empty({R, V}, DType::F32);
  else logits = logits.view({R, V});
  K.linear(sel, w_.lm_head, nullptr, logits);
}

}  // namespace oar
