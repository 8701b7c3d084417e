// llama2.c (legacy v0) checkpoints: a 7 x int32 header, then float32 arrays in a fixed order (see llama2c.h).
// The file is mapped once and every weight is a zero-copy view under its Hugging Face name.
//
// Layouts, from llama2.c's run.c: matmul(xout, x, w, n, d) computes xout[i] = sum_j w[i*n + j] * x[j], so each
// matrix is [d_out, n_in] row-major, the same as nn.Linear's [out, in] weight: wq/wk/wv/wo map onto
// q/k/v/o_proj unchanged, w1 -> gate_proj, w3 -> up_proj (hb = silu(w1 x) * w3 x), w2 -> down_proj.
// RoPE rotates pairs (2i, 2i+1) inside each head; q/k are NOT permuted here: the config says Interleaved.
#include "io/llama2c.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "core/mmap_file.h"

namespace oar {
namespace {

constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

Header read_header(const uint8_t* p) {
  int32_t v[7];
  std::memcpy(v, p, sizeof v);  // little-endian host, as llama2.c itself assumes
  return Header{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
}

std::string describe(const Header& h) {
  return "dim " + std::to_string(h.dim) + ", hidden_dim " + std::to_string(h.hidden_dim) + ", n_layers " +
         std::to_string(h.n_layers) + ", n_heads " + std::to_string(h.n_heads) + ", n_kv_heads " +
         std::to_string(h.n_kv_heads) + ", vocab_size " + std::to_string(h.vocab_size) + ", seq_len " +
         std::to_string(h.seq_len);
}

// Sizes (in floats) of the arrays, in file order, derived from a header that has been checked.
struct Layout {
  int64_t dim, hidden, layers, heads, kv_heads, vocab, seq_len, head_size, kv_dim;
  bool shared;  // classifier == token embedding (positive vocab_size)
  uint64_t total_bytes;
};

// Checks the header and computes the exact file size it implies. Returns "" or the problem.
std::string plan(const Header& h, Layout& l) {
  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 || h.seq_len <= 0)
    return "impossible llama2.c header (" + describe(h) + "): sizes must be positive";
  if (h.vocab_size == 0 || h.vocab_size == INT32_MIN)
    return "impossible llama2.c header (" + describe(h) + "): bad vocab_size";
  if (h.dim % h.n_heads != 0)
    return "impossible llama2.c header (" + describe(h) + "): n_heads does not divide dim";
  if (h.n_heads % h.n_kv_heads != 0)
    return "impossible llama2.c header (" + describe(h) + "): n_kv_heads does not divide n_heads";
  if ((h.dim / h.n_heads) % 2 != 0)
    return "impossible llama2.c header (" + describe(h) + "): the head size must be even";
  l.dim = h.dim;
  l.hidden = h.hidden_dim;
  l.layers = h.n_layers;
  l.heads = h.n_heads;
  l.kv_heads = h.n_kv_heads;
  l.shared = h.vocab_size > 0;
  l.vocab = l.shared ? h.vocab_size : -int64_t(h.vocab_size);
  l.seq_len = h.seq_len;
  l.head_size = l.dim / l.heads;
  l.kv_dim = l.dim * l.kv_heads / l.heads;

  // Every operand is below 2^31, but products of three are not: add up with overflow checks.
  uint64_t floats = 0;
  bool overflow = false;
  auto add = [&](uint64_t a, uint64_t b, uint64_t c = 1) {
    uint64_t p;
    overflow |= __builtin_mul_overflow(a, b, &p) || __builtin_mul_overflow(p, c, &p) ||
                __builtin_add_overflow(floats, p, &floats);
  };
  const uint64_t L = uint64_t(l.layers), D = uint64_t(l.dim), H = uint64_t(l.hidden), KV = uint64_t(l.kv_dim);
  add(uint64_t(l.vocab), D);            // token embedding
  add(L, D);                            // rms_att
  add(L, D, D);                         // wq
  add(L, KV, D);                        // wk
  add(L, KV, D);                        // wv
  add(L, D, D);                         // wo
  add(L, D);                            // rms_ffn
  add(L, H, D);                         // w1
  add(L, D, H);                         // w2
  add(L, H, D);                         // w3
  add(D, 1);                            // rms_final
  add(2, uint64_t(l.seq_len) * uint64_t(l.head_size) / 2);  // freq_cis real + imag (unused)
  if (!l.shared) add(uint64_t(l.vocab), D);  // wcls
  if (overflow || __builtin_mul_overflow(floats, uint64_t(4), &l.total_bytes) ||
      __builtin_add_overflow(l.total_bytes, uint64_t(kHeaderBytes), &l.total_bytes))
    return "impossible llama2.c header (" + describe(h) + "): sizes overflow";
  return "";
}

}  // namespace

Llama2cCheckpoint load_llama2c_checkpoint(const std::string& path) {
  std::shared_ptr<MappedFile> file = MappedFile::open(path);
  if (file->size() < kHeaderBytes)
    fail(path, "file is too short (" + std::to_string(file->size()) + " bytes) for a llama2.c header");
  const Header h = read_header(file->data());
  Layout l{};
  if (std::string problem = plan(h, l); !problem.empty()) fail(path, problem);
  if (file->size() != l.total_bytes)
    fail(path, "file size " + std::to_string(file->size()) + " does not match the " + std::to_string(l.total_bytes) +
                   " bytes its llama2.c header implies (" + describe(h) + ")");

  LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.vocab_size = l.vocab;
  c.hidden_size = l.dim;
  c.intermediate_size = l.hidden;
  c.num_hidden_layers = l.layers;
  c.num_attention_heads = l.heads;
  c.num_key_value_heads = l.kv_heads;
  c.head_dim = l.head_size;
  c.max_position_embeddings = l.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.rope_layout = RopeLayout::Interleaved;
  c.tie_word_embeddings = l.shared;
  c.torch_dtype = "float32";
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.pad_token_id = -1;
  c.validate(path);

  // One storage over the whole file; each weight is a contiguous f32 view at its offset.
  std::shared_ptr<Storage> storage = Storage::view(file, 0, file->size());
  std::map<std::string, Tensor> t;
  size_t offset = kHeaderBytes;
  auto take = [&](const Shape& shape) {
    Tensor v = Tensor::from_storage(storage, shape, DType::F32, offset);
    offset += v.nbytes();
    return v;
  };
  // Per-layer arrays are stored [L, ...]: slice them into one tensor per layer.
  auto per_layer = [&](const char* hf_suffix, const Shape& shape) {
    for (int64_t i = 0; i < l.layers; i++) t["model.layers." + std::to_string(i) + "." + hf_suffix] = take(shape);
  };
  t["model.embed_tokens.weight"] = take({l.vocab, l.dim});
  per_layer("input_layernorm.weight", {l.dim});
  per_layer("self_attn.q_proj.weight", {l.dim, l.dim});
  per_layer("self_attn.k_proj.weight", {l.kv_dim, l.dim});
  per_layer("self_attn.v_proj.weight", {l.kv_dim, l.dim});
  per_layer("self_attn.o_proj.weight", {l.dim, l.dim});
  per_layer("post_attention_layernorm.weight", {l.dim});
  per_layer("mlp.gate_proj.weight", {l.hidden, l.dim});
  per_layer("mlp.down_proj.weight", {l.dim, l.hidden});
  per_layer("mlp.up_proj.weight", {l.hidden, l.dim});
  t["model.norm.weight"] = take({l.dim});
  offset += 2 * size_t(l.seq_len * l.head_size / 2) * sizeof(float);  // freq_cis, recomputed by the model
  if (!l.shared) t["lm_head.weight"] = take({l.vocab, l.dim});
  if (offset != file->size()) fail(path, "internal error: llama2.c layout does not cover the file");

  Llama2cCheckpoint ck;
  ck.config = c;
  ck.weights = std::make_unique<TensorMapSource>(path, std::move(t));
  return ck;
}

bool looks_like_llama2c_checkpoint(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || size_t(st.st_size) < kHeaderBytes) return false;
  std::ifstream f(path, std::ios::binary);
  uint8_t buf[kHeaderBytes];
  if (!f.read(reinterpret_cast<char*>(buf), sizeof buf)) return false;
  Layout l{};
  return plan(read_header(buf), l).empty() && uint64_t(st.st_size) == l.total_bytes;
}

}  // namespace oar
