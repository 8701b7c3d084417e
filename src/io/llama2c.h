// llama2.c checkpoints (the public "stories" models) and llama2.c's tokenizer.bin.
// Checkpoint (legacy v0): 7 x int32 header {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len}
// (vocab_size < 0 means an unshared classifier follows), then float32 arrays: token_embedding [vocab, dim],
// rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim],
// w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], rms_final [dim], freq_cis_real/imag
// [seq_len, head_size/2] each (unused), then wcls [vocab, dim] when unshared.
#pragma once
#include <memory>
#include <string>

#include "core/model_config.h"
#include "io/weight_source.h"

namespace oar {

struct Llama2cCheckpoint {
  LlamaConfig config;  // rope_layout Interleaved, rms_norm_eps 1e-5, rope_theta 10000, tie per the sign of vocab
  std::unique_ptr<WeightSource> weights;  // HF names, zero-copy views of the mapped file
};

// Throws oar::Error naming the file for a short file, impossible header, or size mismatch.
Llama2cCheckpoint load_llama2c_checkpoint(const std::string& path);
// True when the file looks like a llama2.c checkpoint (by size consistency with its header).
bool looks_like_llama2c_checkpoint(const std::string& path);

}  // namespace oar
