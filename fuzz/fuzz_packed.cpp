// libFuzzer target: an oar export's packed file (io/packed_model.h) must either load as the fuzzer's one-layer
// model or be refused with oar::Error (one line, naming the file). What loads runs a forward step, so a part
// whose size the loader did not check against its format faults under ASan. The input goes through a file, as
// the loader maps it. Its last byte picks the --quant_type it is loaded with (none, or each format: an export
// runs with its own), since a given one takes other paths through the loader.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "core/error.h"
#include "io/packed_model.h"
#include "kernels/backend.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace {

oar::LlamaConfig fuzz_config() {
  oar::LlamaConfig c;
  c.vocab_size = 8;
  c.hidden_size = 32;
  c.intermediate_size = 32;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.max_position_embeddings = 16;
  c.tie_word_embeddings = false;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/oar_fuzz_packed_" + std::to_string(::getpid()) + ".safetensors";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);
  const oar::LlamaConfig cfg = fuzz_config();
  std::unique_ptr<oar::LlamaModel> m;
  try {
    const std::unique_ptr<oar::WeightSource> src = oar::open_packed_weights(path);
    std::optional<oar::QuantSpec> quant;
    const uint8_t pick = size > 0 ? data[size - 1] % 5 : 0;
    if (pick == 1) quant = oar::QuantSpec(oar::WeightFormat::Int8);
    if (pick == 2) quant = oar::QuantSpec(oar::WeightFormat::Int4, -1);
    if (pick == 3) quant = oar::QuantSpec(oar::WeightFormat::Int4, 64);
    if (pick == 4) quant = oar::QuantSpec(oar::WeightFormat::A8W8);
    m = oar::LlamaModel::from_weights(cfg, *src, oar::DType::F32, oar::cpu_backend(), quant);
  } catch (const oar::Error& e) {
    const char* msg = e.what();
    if (std::strncmp(msg, path.c_str(), path.size()) != 0 || std::strchr(msg, '\n') != nullptr) __builtin_trap();
    return 0;
  }
  oar::KVCache cache(cfg, 1, 16, oar::KVCacheDType::F32);
  std::vector<int32_t> table{0};
  oar::StepBatch b;
  const int32_t ids[3] = {1, 5, 7};
  b.add_sequence(ids, 3, 0, table);
  b.logit_rows = {2};
  oar::Tensor logits;
  m->forward(b, cache, logits);
  return 0;
}
