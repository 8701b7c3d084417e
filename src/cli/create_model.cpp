// `oar create-model`: a random-weight Llama in Hugging Face layout (config.json, model.safetensors,
// tokenizer.json) for tests and benchmarks, with no download. The tokenizer is a synthetic byte-level BPE whose
// merges are generated (not learned), so every id of the vocabulary is reachable and decodable.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/commands.h"
#include "cli/flags.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "io/safetensors.h"

namespace oar::cli {
namespace {

// GPT-2's byte <-> printable-unicode mapping, as UTF-8 strings.
std::vector<std::string> byte_symbols() {
  std::vector<int> cps(256, -1);
  int next = 256;
  for (int b = 0; b < 256; b++) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cps[size_t(b)] = printable ? b : next++;
  }
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) s += char(cp);
    else if (cp < 0x800) { s += char(0xC0 | (cp >> 6)); s += char(0x80 | (cp & 0x3F)); }
    else { s += char(0xE0 | (cp >> 12)); s += char(0x80 | ((cp >> 6) & 0x3F)); s += char(0x80 | (cp & 0x3F)); }
    out.push_back(s);
  }
  return out;
}

std::string synthetic_tokenizer_json(int64_t vocab_size) {
  using nlohmann::json;
  const std::vector<std::string> sym = byte_symbols();
  json vocab = json::object();
  json added = json::array();
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; i++) {
    vocab[specials[i]] = i;
    added.push_back({{"id", i}, {"content", specials[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; b++) {
    vocab[sym[size_t(b)]] = 3 + b;
    tokens.push_back(sym[size_t(b)]);
  }
  // Merges: common letters (with and without the space marker) combined, level by level, until the vocabulary
  // is full. Every merge joins two tokens that already exist, so the BPE is consistent.
  std::string letters = "etaoinshrdlcumwfgypbvkjxqz";
  std::vector<std::string> base;
  for (char ch : letters) base.push_back(std::string(1, ch));
  for (char ch : letters) base.push_back(sym[' '] + std::string(1, ch));
  json merges = json::array();
  std::set<std::string> have(tokens.begin(), tokens.end());
  int64_t id = 3 + 256;
  auto add = [&](const std::string& a, const std::string& b) {
    if (id >= vocab_size) return;
    std::string t = a + b;
    if (have.count(t) || !have.count(a) || !have.count(b)) return;
    have.insert(t);
    vocab[t] = id++;
    merges.push_back(a + " " + b);
  };
  for (char ch : letters) add(sym[' '], std::string(1, ch));
  std::vector<std::string> level = base;
  while (id < vocab_size && !level.empty()) {
    std::vector<std::string> next;
    for (const auto& a : level) {
      for (char ch : letters) {
        if (id >= vocab_size) break;
        int64_t before = id;
        add(a, std::string(1, ch));
        if (id > before) next.push_back(a + ch);
      }
    }
    level = std::move(next);
  }
  if (id < vocab_size) throw Error("create-model: could not fill a vocabulary of " + std::to_string(vocab_size));
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               json::array({{{"type", "Split"},
                             {"pattern", {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                             {"behavior", "Isolated"},
                             {"invert", false}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  json post = {{"type", "TemplateProcessing"},
               {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
               {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                     {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
               {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", json::array({1})}, {"tokens", json::array({"<s>"})}}}}}};
  json tok = {{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", pre},
              {"post_processor", post},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model",
               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                {"vocab", vocab}, {"merges", merges}}}};
  return tok.dump(1);
}

// Normal values from a counter-based hash (splitmix64) and Box-Muller: element i of tensor `stream` depends on
// (seed, stream, i) only, so the weights are the same whatever the thread count, and generation runs in parallel.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Rng {
  uint64_t seed;
  uint64_t stream = 0;
  explicit Rng(uint64_t s) : seed(s) {}
};

Tensor random_matrix(const Shape& shape, DType dt, float stddev, Rng& rng) {
  Tensor t = Tensor::empty(shape, dt);
  const int64_t n = t.numel();
  const uint64_t base = mix64(rng.seed * 0x9E3779B97F4A7C15ull + (++rng.stream));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += 2) {
    uint64_t a = mix64(base + uint64_t(i)), b = mix64(base + uint64_t(i) + 1);
    double u1 = (double(a >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = double(b >> 11) * (1.0 / 9007199254740992.0);
    double r = std::sqrt(-2.0 * std::log(u1));
    float v[2] = {float(r * std::cos(2 * M_PI * u2)) * stddev, float(r * std::sin(2 * M_PI * u2)) * stddev};
    for (int64_t k = 0; k < 2 && i + k < n; k++) {
      if (dt == DType::BF16) t.data<uint16_t>()[i + k] = f32_to_bf16(v[k]);
      else t.data<float>()[i + k] = v[k];
    }
  }
  return t;
}

Tensor ones(int64_t n, DType dt) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; i++) {
    if (dt == DType::BF16) t.data<uint16_t>()[i] = f32_to_bf16(1.0f);
    else t.data<float>()[i] = 1.0f;
  }
  return t;
}

// One part of the model's weights, made when its shard is written: the embedding, a layer, or the final norm and
// LM head. Made in this order from one generator, so the weights do not depend on how they are sharded.
using Tensors = std::vector<std::pair<std::string, Tensor>>;
void make_part(int64_t part, const LlamaConfig& c, DType dt, Rng& rng, Tensors& ts) {
  const float sd = float(c.initializer_range);
  const int64_t C = c.hidden_size, F = c.intermediate_size;
  if (part == 0) {
    ts.emplace_back("model.embed_tokens.weight", random_matrix({c.vocab_size, C}, dt, sd, rng));
  } else if (part <= c.num_hidden_layers) {
    std::string p = "model.layers." + std::to_string(part - 1) + ".";
    ts.emplace_back(p + "input_layernorm.weight", ones(C, dt));
    ts.emplace_back(p + "post_attention_layernorm.weight", ones(C, dt));
    ts.emplace_back(p + "self_attn.q_proj.weight", random_matrix({c.q_dim(), C}, dt, sd, rng));
    ts.emplace_back(p + "self_attn.k_proj.weight", random_matrix({c.kv_dim(), C}, dt, sd, rng));
    ts.emplace_back(p + "self_attn.v_proj.weight", random_matrix({c.kv_dim(), C}, dt, sd, rng));
    ts.emplace_back(p + "self_attn.o_proj.weight", random_matrix({C, c.q_dim()}, dt, sd, rng));
    ts.emplace_back(p + "mlp.gate_proj.weight", random_matrix({F, C}, dt, sd, rng));
    ts.emplace_back(p + "mlp.up_proj.weight", random_matrix({F, C}, dt, sd, rng));
    ts.emplace_back(p + "mlp.down_proj.weight", random_matrix({C, F}, dt, sd, rng));
  } else {
    ts.emplace_back("model.norm.weight", ones(C, dt));
    ts.emplace_back("lm_head.weight", random_matrix({c.vocab_size, C}, dt, sd, rng));
  }
}

// Bytes of each part, to plan the shards before any weight is made.
std::vector<int64_t> part_bytes(const LlamaConfig& c, DType dt) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, e = int64_t(dtype_size(dt));
  std::vector<int64_t> b = {c.vocab_size * C * e};
  for (int64_t l = 0; l < c.num_hidden_layers; l++)
    b.push_back((2 * C + 2 * c.q_dim() * C + 2 * c.kv_dim() * C + 3 * F * C) * e);
  b.push_back((C + c.vocab_size * C) * e);
  return b;
}

// Random weights into `tmp`: model.safetensors up to 5 GB (Hugging Face's default shard size), else shards of at
// most that (and whole parts) with model.safetensors.index.json. Only one shard is in memory at a time, so a
// Llama-2-13B (26 GB in bfloat16) is made on a 24 GiB machine.
void write_weights(const std::string& tmp, const LlamaConfig& c, DType dt, uint64_t seed) {
  constexpr int64_t kShardBytes = 5'000'000'000;
  const std::vector<int64_t> bytes = part_bytes(c, dt);
  std::vector<std::vector<int64_t>> shards(1);
  int64_t in_shard = 0, total = 0;
  for (int64_t p = 0; p < int64_t(bytes.size()); p++) {
    if (in_shard > 0 && in_shard + bytes[size_t(p)] > kShardBytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(p);
    in_shard += bytes[size_t(p)];
    total += bytes[size_t(p)];
  }
  Rng rng(seed);
  nlohmann::json map = nlohmann::json::object();
  for (size_t k = 0; k < shards.size(); k++) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    const std::string file = shards.size() == 1 ? "model.safetensors" : name;
    Tensors ts;
    for (int64_t p : shards[k]) make_part(p, c, dt, rng, ts);
    for (const auto& t : ts) map[t.first] = file;
    write_safetensors(join_path(tmp, file), ts, {{"format", "pt"}});
  }
  if (shards.size() > 1)
    write_file_atomic(join_path(tmp, "model.safetensors.index.json"),
                      nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", map}}.dump(1) + "\n");
}

// The model's files into `dir`: random weights, config.json, the synthetic tokenizer.
void write_model_dir(const std::string& tmp, const LlamaConfig& c, DType dt, uint64_t seed) {
  write_weights(tmp, c, dt, seed);
  write_file_atomic(join_path(tmp, "config.json"), to_hf_config_json(c));
  write_file_atomic(join_path(tmp, "tokenizer.json"), synthetic_tokenizer_json(c.vocab_size));
  write_file_atomic(join_path(tmp, "tokenizer_config.json"),
                    R"({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true, "model_max_length": )" +
                        std::to_string(c.max_position_embeddings) + "}\n");
}

// 4.6K, 110.1M, 1.10B: a parameter count in sensible units.
std::string count_text(int64_t n) {
  char b[32];
  if (n >= 1000000000) std::snprintf(b, sizeof b, "%.2fB", double(n) / 1e9);
  else if (n >= 1000000) std::snprintf(b, sizeof b, "%.1fM", double(n) / 1e6);
  else if (n >= 1000) std::snprintf(b, sizeof b, "%.1fK", double(n) / 1e3);
  else std::snprintf(b, sizeof b, "%lld", (long long)n);
  return b;
}

}  // namespace

Action add_create_model(CLI::App& app) {
  struct Args {
    std::string preset = "tinyllama-1.1b", output_dir, dtype = "bfloat16";
    uint64_t seed = 1;
    int64_t max_position_embeddings = 0, vocab_size = 0;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--preset", a->preset, "tinyllama-1.1b, llama2-13b, llama-110m or tiny");
  app.add_option("--output_dir", a->output_dir)->required();
  app.add_option("--dtype", a->dtype, "storage dtype: bfloat16 or float32");
  app.add_option("--seed", a->seed)->check(non_negative_int());
  app.add_option("--max_position_embeddings", a->max_position_embeddings, "context length (default: the preset's)")
      ->check(positive_int());
  app.add_option("--vocab_size", a->vocab_size, "vocabulary size (default: the preset's), e.g. to match a tokenizer")
      ->check(ints(259, int64_t(1) << 24));
  app.add_flag("--force", a->force, "replace an existing output directory");
  return [a]() -> int {
    LlamaConfig c = llama_preset(a->preset);
    if (a->max_position_embeddings > 0) c.max_position_embeddings = a->max_position_embeddings;
    if (a->vocab_size > 0) c.vocab_size = a->vocab_size;  // at least the 3 specials + 256 byte tokens
    DType dt = parse_dtype(a->dtype);
    if (dt != DType::BF16 && dt != DType::F32) throw Error("--dtype: create-model writes bfloat16 or float32");
    c.torch_dtype = dtype_name(dt);
    // Built in a temporary directory and renamed into place, so a killed run leaves nothing half-written.
    write_directory_atomically(a->output_dir, a->force, {},
                               [&](const std::string& tmp) { write_model_dir(tmp, c, dt, a->seed); });
    std::printf("created %s: %s, %s parameters, %s\n", a->output_dir.c_str(), a->preset.c_str(),
                count_text(c.num_parameters()).c_str(), dtype_name(dt));
    return 0;
  };
}

}  // namespace oar::cli
