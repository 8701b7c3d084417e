#include "train/lora_io.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "io/model_source.h"
#include "io/paddle_layout.h"
#include "io/pdparams.h"
#include "io/safetensors.h"
#include "model/llama.h"

namespace oar {
namespace {

using nlohmann::json;

const char* kPeftConfig = "adapter_config.json";
const char* kPeftWeights = "adapter_model.safetensors";
const char* kPaddleConfig = "lora_config.json";
const char* kPaddleWeights = "peft_model.safetensors";  // PaddleNLP's unified checkpoint
const char* kPaddlePickle = "lora_model_state.pdparams";
const char* kPaddleIndex = "peft_model.safetensors.index.json";  // a unified checkpoint in shards

bool is_projection(const std::string& p) {
  const auto& names = lora_projection_names();
  return std::find(names.begin(), names.end(), p) != names.end();
}

std::string group_of(const std::string& proj) {
  return proj == "gate_proj" || proj == "up_proj" || proj == "down_proj" ? "mlp" : "self_attn";
}

// "model.layers.3.self_attn.q_proj.weight": the key of LoraAdapter::modules.
std::string weight_name(int64_t layer, const std::string& proj) {
  return "model.layers." + std::to_string(layer) + "." + group_of(proj) + "." + proj + ".weight";
}

struct ModuleRef {
  int64_t layer = -1;
  std::string proj;
};

// Parses "layers.N.<self_attn|mlp>.<proj>" at the start of s; returns the length consumed, 0 if it does not match.
size_t parse_module(const std::string& s, ModuleRef* m) {
  static const std::regex re(R"(^layers\.(\d{1,9})\.(self_attn|mlp)\.([a-z_]+))");
  std::smatch mt;
  if (!std::regex_search(s, mt, re)) return 0;
  if (!is_projection(mt[3].str()) || group_of(mt[3].str()) != mt[2].str()) return 0;
  m->layer = std::stoll(mt[1].str());
  m->proj = mt[3].str();
  return size_t(mt[0].length());
}

bool strip_prefix(std::string& s, const std::string& p) {
  if (s.compare(0, p.size(), p) != 0) return false;
  s.erase(0, p.size());
  return true;
}

// A tensor key of one of the supported layouts -> module and which matrix. PEFT:
// "base_model.model.model.layers.N.<grp>.<proj>.lora_A.weight" (also with the adapter name, ".lora_A.default.weight",
// as in a raw PeftModel state dict). PaddleNLP: "llama.layers.N.<grp>.<proj>.lora_A".
bool parse_key(std::string key, bool paddle, ModuleRef* m, char* which) {
  if (paddle) {
    if (!strip_prefix(key, "llama.")) return false;
  } else {
    if (!strip_prefix(key, "base_model.model.")) return false;
    strip_prefix(key, "model.");  // a PeftModel over LlamaForCausalLM; absent over a bare LlamaModel
  }
  size_t n = parse_module(key, m);
  if (n == 0) return false;
  key.erase(0, n);
  if (paddle) {
    if (key == ".lora_A") *which = 'A';
    else if (key == ".lora_B") *which = 'B';
    else return false;
    return true;
  }
  if (key == ".lora_A.weight" || key == ".lora_A.default.weight") *which = 'A';
  else if (key == ".lora_B.weight" || key == ".lora_B.default.weight") *which = 'B';
  else return false;
  return true;
}

std::string peft_key(const std::string& weight, char which) {
  // "model.layers.0.self_attn.q_proj.weight" -> "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
  std::string module = weight.substr(0, weight.size() - std::strlen(".weight"));
  return "base_model.model." + module + ".lora_" + which + ".weight";
}

// Which modules target_modules selects. PEFT: a list of names, each matching a module whose name equals it or ends
// with "." + it, or one string that is a regex matched against whole module names ("all-linear": every linear but
// the head). PaddleNLP: a list of regexes, each matched against whole module names.
class TargetMatcher {
 public:
  TargetMatcher(const json& tm, bool paddle, const std::string& where) : paddle_(paddle), where_(where) {
    if (tm.is_string()) {
      std::string s = tm.get<std::string>();
      if (!paddle && s == "all-linear") {
        all_ = true;
      } else {
        add_regex(s);
      }
    } else if (tm.is_array() && !tm.empty()) {
      for (const auto& e : tm) {
        if (!e.is_string()) fail(where, "target_modules must be a string or a list of strings");
        std::string s = e.get<std::string>();
        if (paddle) {
          add_regex(s);
        } else {
          // PEFT matches module names by suffix, so the last component must be one of the seven projections.
          std::string last = s.substr(s.find_last_of('.') == std::string::npos ? 0 : s.find_last_of('.') + 1);
          if (!is_projection(last))
            fail(where, "target_modules: '" + s + "' is not supported (oar adapts " + joined_projections() + ")");
          names_.push_back(s);
        }
      }
    } else {
      fail(where, "target_modules must be a non-empty string or list");
    }
  }

  bool matches(int64_t layer, const std::string& proj) const {
    if (all_) return true;
    const std::string name = module_name(layer, proj);
    for (const auto& n : names_)
      if (name == n || (name.size() > n.size() && name.compare(name.size() - n.size() - 1, n.size() + 1, "." + n) == 0))
        return true;
    for (const auto& r : regexes_)
      if (std::regex_match(name, r.second)) return true;
    return false;
  }

 private:
  std::string module_name(int64_t layer, const std::string& proj) const {
    return (paddle_ ? "llama.layers." : "model.layers.") + std::to_string(layer) + "." + group_of(proj) + "." + proj;
  }

  static std::string joined_projections() {
    std::string s;
    for (const auto& p : lora_projection_names()) s += (s.empty() ? "" : ", ") + p;
    return s;
  }

  void add_regex(const std::string& s) {
    std::regex r;
    try {
      r = std::regex(s, std::regex::ECMAScript);
    } catch (const std::regex_error&) {
      fail(where_, "target_modules: '" + s + "' is not a regular expression oar can read");
    }
    // A regex that also selects the embeddings or the head asks for what oar cannot do. (Fused qkv layers are
    // not checked here: ".*v_proj.*" names them too but is meant for unfused models; their tensors are refused.)
    const std::string pre = paddle_ ? "llama." : "model.";
    for (const std::string& other : {pre + "embed_tokens", std::string("lm_head")})
      if (std::regex_match(other, r))
        fail(where_, "target_modules: '" + s + "' selects " + other + ", which oar cannot adapt (only " +
                         joined_projections() + ")");
    regexes_.emplace_back(s, std::move(r));
  }

  bool paddle_;
  std::string where_;
  bool all_ = false;
  std::vector<std::string> names_;
  std::vector<std::pair<std::string, std::regex>> regexes_;
};

json read_json(const std::string& path) {
  json j = parse_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object");
  return j;
}

// Fields whose non-default value changes the math in a way oar does not implement.
void refuse_if(bool cond, const std::string& where, const std::string& what) {
  if (cond) fail(where, what + " is not supported");
}
bool truthy(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return false;
  if (j[key].is_boolean()) return j[key].get<bool>();
  if (j[key].is_string()) return !j[key].get<std::string>().empty();
  if (j[key].is_number()) return j[key].get<double>() != 0;
  return !j[key].empty();
}

struct ParsedConfig {
  LoraAdapter a;  // everything but the tensors
  std::unique_ptr<TargetMatcher> matcher;
  bool paddle = false;
};

ParsedConfig parse_peft_config(const std::string& path) {
  json j = read_json(path);
  ParsedConfig pc;
  try {
    std::string type = j.value("peft_type", std::string());
    if (type != "LORA") fail(path, "peft_type is '" + type + "', oar reads LORA adapters only");
    pc.a.rank = j.value("r", int64_t(8));
    pc.a.alpha = j.value("lora_alpha", 8.0);
    pc.a.rslora = j.value("use_rslora", false);
    refuse_if(j.value("fan_in_fan_out", false), path, "fan_in_fan_out true");
    std::string bias = j.contains("bias") && j["bias"].is_string() ? j["bias"].get<std::string>() : "none";
    refuse_if(bias != "none", path, "bias '" + bias + "' (trained biases)");
    refuse_if(truthy(j, "use_dora"), path, "use_dora (DoRA)");
    refuse_if(truthy(j, "lora_bias"), path, "lora_bias");
    refuse_if(truthy(j, "modules_to_save"), path, "modules_to_save (fully trained extra modules)");
    refuse_if(truthy(j, "rank_pattern"), path, "rank_pattern (per-module ranks)");
    refuse_if(truthy(j, "alpha_pattern"), path, "alpha_pattern (per-module alphas)");
    refuse_if(truthy(j, "layer_replication"), path, "layer_replication");
    if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
      const json& l = j["layers_to_transform"];
      if (l.is_number_integer()) pc.a.layers.push_back(l.get<int64_t>());
      else for (const auto& x : l) pc.a.layers.push_back(x.get<int64_t>());
      std::sort(pc.a.layers.begin(), pc.a.layers.end());
    }
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
      pc.a.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
    if (!j.contains("target_modules") || j["target_modules"].is_null()) fail(path, "target_modules is missing");
    pc.matcher = std::make_unique<TargetMatcher>(j["target_modules"], false, path);
  } catch (const json::exception& e) {
    fail(path, std::string("unexpected value: ") + e.what());
  }
  return pc;
}

ParsedConfig parse_paddle_config(const std::string& path) {
  json j = read_json(path);
  ParsedConfig pc;
  pc.paddle = true;
  try {
    pc.a.rank = j.value("r", int64_t(8));
    pc.a.alpha = j.value("lora_alpha", 8.0);
    pc.a.rslora = j.value("rslora", false);
    refuse_if(j.value("pissa", false), path, "pissa (the base weights are changed too)");
    refuse_if(j.value("use_mora", false), path, "use_mora (MoRA)");
    refuse_if(j.value("lora_use_mixer", false), path, "lora_use_mixer");
    refuse_if(truthy(j, "trainable_bias"), path, "trainable_bias");
    refuse_if(truthy(j, "enable_lora_list"), path, "enable_lora_list (fused qkv/ffn layers)");
    refuse_if(j.value("tensor_parallel_degree", int64_t(-1)) > 1, path,
              "an adapter split for tensor_parallel_degree > 1 (merge the ranks with PaddleNLP first)");
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
      pc.a.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
    if (!j.contains("target_modules") || j["target_modules"].is_null()) fail(path, "target_modules is missing");
    pc.matcher = std::make_unique<TargetMatcher>(j["target_modules"], true, path);
  } catch (const json::exception& e) {
    fail(path, std::string("unexpected value: ") + e.what());
  }
  return pc;
}

Tensor to_f32(const Tensor& t, const std::string& where, const std::string& name) {
  if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
    fail(where, "tensor '" + name + "' has dtype " + dtype_name(t.dtype()) + ", expected float32, bfloat16 or float16");
  if (t.ndim() != 2) fail(where, "tensor '" + name + "' has shape " + shape_str(t.shape()) + ", expected 2 dimensions");
  return t.to(DType::F32);  // always a fresh, owned copy: never a view into a file that may change
}

bool layer_selected(const LoraAdapter& a, int64_t layer) {
  return a.layers.empty() || std::binary_search(a.layers.begin(), a.layers.end(), layer);
}

}  // namespace

const std::vector<std::string>& lora_projection_names() {
  static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return names;
}

double LoraAdapter::scaling() const {
  return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank);
}

namespace {

// An adapter's tensors by name and the file they come from: PEFT's adapter_model.safetensors, or PaddleNLP's
// unified checkpoint (peft_model.safetensors, or shards listed by peft_model.safetensors.index.json, which
// PaddleNLP prefers) or its pickle lora_model_state.pdparams.
struct LoraTensors {
  std::string where;
  std::map<std::string, Tensor> tensors;
};

// PaddleNLP stores bfloat16 as U16 (numpy's uint16).
std::map<std::string, Tensor> with_paddle_bf16(std::map<std::string, Tensor> ts) {
  for (auto& [name, t] : ts) t = as_dtype_bits(t, DType::U16, DType::BF16);
  return ts;
}

LoraTensors read_paddle_lora_tensors(const std::string& dir) {
  const std::string index = join_path(dir, kPaddleIndex);
  if (file_exists(index)) return {index, with_paddle_bf16(read_indexed_tensors(dir, index, read_safetensors_file))};
  for (const char* f : {kPaddleWeights, kPeftWeights})
    if (file_exists(join_path(dir, f))) return {join_path(dir, f), with_paddle_bf16(read_safetensors_file(join_path(dir, f)))};
  if (file_exists(join_path(dir, kPaddlePickle))) return {join_path(dir, kPaddlePickle), load_pdparams(join_path(dir, kPaddlePickle))};
  fail(join_path(dir, kPaddlePickle), std::string("missing (lora_config.json is here but not its weights: this, ") +
                                          kPaddleWeights + " or " + kPaddleIndex + ")");
}

}  // namespace

LoraAdapter load_lora_adapter(const std::string& dir) {
  if (!dir_exists(dir)) fail(dir, "no such LoRA adapter directory");
  const std::string peft_cfg = join_path(dir, kPeftConfig), paddle_cfg = join_path(dir, kPaddleConfig);
  ParsedConfig pc;
  LoraTensors lt;
  if (file_exists(peft_cfg)) {
    pc = parse_peft_config(peft_cfg);
    const std::string weights = join_path(dir, kPeftWeights);
    if (!file_exists(weights)) {
      if (file_exists(join_path(dir, "adapter_model.bin")))
        fail(join_path(dir, "adapter_model.bin"), "pickled PyTorch weights are not read; save with safe_serialization=True");
      fail(weights, "missing (adapter_config.json is here but not its weights)");
    }
    lt = {weights, read_safetensors_file(weights)};
  } else if (file_exists(paddle_cfg)) {
    pc = parse_paddle_config(paddle_cfg);
    lt = read_paddle_lora_tensors(dir);
  } else {
    fail(dir, std::string("no ") + kPeftConfig + " (PEFT) or " + kPaddleConfig + " (PaddleNLP) in this directory");
  }
  const std::string& weights = lt.where;
  LoraAdapter a = std::move(pc.a);
  a.where = weights;
  if (a.rank <= 0) fail(join_path(dir, pc.paddle ? kPaddleConfig : kPeftConfig), "r must be positive");

  int64_t max_layer = 0;
  for (const auto& [key, stored] : lt.tensors) {
    ModuleRef m;
    char which = 0;
    if (!parse_key(key, pc.paddle, &m, &which))
      fail(weights, "tensor '" + key + "' is not a LoRA A/B matrix of a Llama projection that oar can apply");
    if (!pc.matcher->matches(m.layer, m.proj) || !layer_selected(a, m.layer))
      fail(weights, "tensor '" + key + "' adapts a module that target_modules does not select");
    Tensor t = to_f32(stored, weights, key);
    if (pc.paddle) t = t.transpose(0, 1).contiguous();  // Paddle keeps [in, out]: A [in, r], B [r, out]
    const int64_t r = which == 'A' ? t.dim(0) : t.dim(1);
    if (r != a.rank)
      fail(weights, "tensor '" + key + "' has rank " + std::to_string(r) + " (shape " + shape_str(stored.shape()) +
                        ") but the config says r " + std::to_string(a.rank));
    LoraPair& p = a.modules[weight_name(m.layer, m.proj)];
    (which == 'A' ? p.A : p.B) = std::move(t);
    max_layer = std::max(max_layer, m.layer);
  }
  if (a.modules.empty()) fail(weights, "holds no LoRA tensors");
  for (const auto& [name, p] : a.modules)
    if (!p.A.defined() || !p.B.defined())
      fail(weights, "'" + name.substr(0, name.size() - 7) + "' has lora_" + (p.A.defined() ? "A" : "B") +
                        " but no lora_" + (p.A.defined() ? "B" : "A"));
  // Every module the config selects must be here (up to the last layer the file adapts): PEFT would run a
  // missing one at its initial value, so a gap means a damaged file.
  std::set<std::string> targets;
  for (int64_t l = 0; l <= max_layer; l++)
    for (const auto& proj : lora_projection_names()) {
      if (!layer_selected(a, l) || !pc.matcher->matches(l, proj)) continue;
      if (!a.modules.count(weight_name(l, proj)))
        fail(weights, "has no tensors for layer " + std::to_string(l) + " " + proj + ", which the config targets");
      targets.insert(proj);
    }
  for (const auto& p : lora_projection_names())
    if (targets.count(p)) a.targets.push_back(p);
  // A target_modules regex naming particular layers: record them, so that the check against the base model
  // does not ask for the others.
  if (a.layers.empty())
    for (const auto& p : a.targets)
      if (!pc.matcher->matches(999999, p)) {
        for (const auto& kv : a.modules) a.layers.push_back(std::stoll(kv.first.substr(13)));  // "model.layers.N"
        std::sort(a.layers.begin(), a.layers.end());
        a.layers.erase(std::unique(a.layers.begin(), a.layers.end()), a.layers.end());
        break;
      }
  return a;
}

void check_lora_against_config(const LoraAdapter& a, const LlamaConfig& cfg, const std::string& base_where) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size, QD = cfg.q_dim(), KVD = cfg.kv_dim();
  auto in_out = [&](const std::string& proj) -> std::pair<int64_t, int64_t> {
    if (proj == "q_proj") return {C, QD};
    if (proj == "k_proj" || proj == "v_proj") return {C, KVD};
    if (proj == "o_proj") return {QD, C};
    if (proj == "gate_proj" || proj == "up_proj") return {C, F};
    return {F, C};  // down_proj
  };
  const std::string where = a.where.empty() ? "LoRA adapter" : a.where;
  for (const auto& [name, p] : a.modules) {
    ModuleRef m;
    std::string rest = name.substr(std::strlen("model."));
    if (parse_module(rest, &m) == 0) fail(where, "'" + name + "' is not a Llama projection");
    if (m.layer >= cfg.num_hidden_layers)
      fail(where, "adapts layer " + std::to_string(m.layer) + " but " + base_where + " has " +
                      std::to_string(cfg.num_hidden_layers) + " layers");
    auto [in, out] = in_out(m.proj);
    const Shape wantA = {a.rank, in}, wantB = {out, a.rank};
    if (p.A.shape() != wantA || p.B.shape() != wantB)
      fail(where, "'" + name.substr(0, name.size() - 7) + "' has lora_A " + shape_str(p.A.shape()) + " and lora_B " +
                      shape_str(p.B.shape()) + " but " + base_where + " needs " + shape_str(wantA) + " and " +
                      shape_str(wantB) + " (an adapter for another model?)");
  }
  for (int64_t l = 0; l < cfg.num_hidden_layers; l++) {
    if (!layer_selected(a, l)) continue;
    for (const auto& proj : a.targets)
      if (!a.modules.count(weight_name(l, proj)))
        fail(where, "has no tensors for layer " + std::to_string(l) + " " + proj + " but " + base_where + " has " +
                        std::to_string(cfg.num_hidden_layers) + " layers (an adapter for another model?)");
  }
}

void save_lora_adapter(const std::string& dir, const LoraAdapter& a) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!dir_exists(dir)) fail(dir, "cannot create directory: " + ec.message());
  if (a.rank <= 0) throw Error("save_lora_adapter: rank must be positive");
  std::vector<std::pair<std::string, Tensor>> ts;
  for (const auto& [name, p] : a.modules) {
    ModuleRef m;
    if (name.rfind("model.", 0) != 0 || parse_module(name.substr(6), &m) == 0 ||
        std::find(a.targets.begin(), a.targets.end(), m.proj) == a.targets.end())
      throw Error("save_lora_adapter: '" + name + "' is not a weight of the adapter's targets");
    if (p.A.ndim() != 2 || p.B.ndim() != 2 || p.A.dim(0) != a.rank || p.B.dim(1) != a.rank)
      throw Error("save_lora_adapter: '" + name + "' has lora_A " + shape_str(p.A.shape()) + " and lora_B " +
                  shape_str(p.B.shape()) + ", rank " + std::to_string(a.rank) + " expected");
    ts.emplace_back(peft_key(name, 'A'), p.A.to(DType::F32));
    ts.emplace_back(peft_key(name, 'B'), p.B.to(DType::F32));
  }
  write_safetensors(join_path(dir, kPeftWeights), ts, {{"format", "pt"}});

  // The classic LoraConfig fields with their defaults, so that any peft 0.x reads the file; newer fields
  // (use_dora, rank_pattern, ...) take their defaults on load. use_rslora is written only when set: an older
  // peft then fails loudly instead of scaling differently.
  json c = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"r", a.rank},
            {"lora_alpha", a.alpha},
            {"target_modules", a.targets},
            {"lora_dropout", 0.0},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"modules_to_save", nullptr},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"layers_pattern", nullptr},
            {"layers_to_transform", nullptr},
            {"revision", nullptr},
            {"base_model_name_or_path", a.base_model_name_or_path.empty() ? json(nullptr) : json(a.base_model_name_or_path)}};
  if (std::floor(a.alpha) == a.alpha) c["lora_alpha"] = int64_t(a.alpha);  // PEFT writes integers
  if (!a.layers.empty()) c["layers_to_transform"] = a.layers;
  if (a.rslora) c["use_rslora"] = true;
  write_file_atomic(join_path(dir, kPeftConfig), c.dump(2) + "\n");
}

bool is_lora_adapter_dir(const std::string& dir) {
  return file_exists(join_path(dir, kPeftConfig)) || file_exists(join_path(dir, kPaddleConfig));
}

void save_lora_adapter_paddle(const std::string& dir, const LoraAdapter& a) {
  namespace fs = std::filesystem;
  if (!a.layers.empty()) fail(dir, "an adapter of some layers only is not written in PaddleNLP's layout");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!dir_exists(dir)) fail(dir, "cannot create directory: " + ec.message());
  // Paddle's [in, out]: A [in, r], B [r, out], named after the module (no ".weight").
  std::vector<std::pair<std::string, Tensor>> ts;
  json weight_map = json::object();
  int64_t total = 0;
  const std::string shard = "peft_model-00001-of-00001.safetensors";
  for (const auto& [name, p] : a.modules) {
    const std::string module = name.substr(0, name.size() - 7);  // model.X.weight -> model.X
    for (const auto& [suffix, t] : {std::pair{".lora_A", &p.A}, std::pair{".lora_B", &p.B}}) {
      const std::string key = paddle_name_of(module + suffix + ".weight").name;  // llama.X.lora_A, [in, r]
      ts.emplace_back(key, t->to(DType::F32).transpose(0, 1).contiguous());
      weight_map[key] = shard;
      total += int64_t(ts.back().second.nbytes());
    }
  }
  write_safetensors(join_path(dir, shard), ts, {{"format", "np"}});
  // What PaddleNLP's single-card unified checkpoint writes, which LoRAModel.from_pretrained reads first.
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}, {"type", "lora"}};
  write_file_atomic(join_path(dir, kPaddleIndex), index.dump(4));
  json targets = json::array();
  for (const std::string& t : a.targets) targets.push_back(".*" + t + ".*");
  json c = {{"base_model_name_or_path", a.base_model_name_or_path.empty() ? json(nullptr) : json(a.base_model_name_or_path)},
            {"dtype", "float32"}, {"lora_alpha", a.alpha}, {"lora_dropout", 0.0}, {"merge_weights", false},
            {"r", a.rank}, {"rslora", a.rslora}, {"scaling", a.scaling()}, {"target_modules", targets},
            {"tensor_parallel_degree", -1}};
  if (std::floor(a.alpha) == a.alpha) c["lora_alpha"] = int64_t(a.alpha);
  write_file_atomic(join_path(dir, kPaddleConfig), c.dump(2) + "\n");
}

LoraAdapter lora_adapter_from_named(const std::vector<std::pair<std::string, Tensor>>& named, const LoraOptions& opt,
                                    const std::string& base_model_name_or_path) {
  LoraAdapter a;
  a.rank = opt.rank;
  a.alpha = opt.alpha;
  a.base_model_name_or_path = base_model_name_or_path;
  for (const auto& p : lora_projection_names())
    if (std::find(opt.targets.begin(), opt.targets.end(), p) != opt.targets.end()) a.targets.push_back(p);
  for (const auto& t : opt.targets)
    if (!is_projection(t)) throw Error("LoRA target '" + t + "' is not one of the seven Llama projections");
  for (const auto& [key, t] : named) {
    std::string rest = key;
    if (!strip_prefix(rest, "model.")) continue;
    ModuleRef m;
    size_t n = parse_module(rest, &m);
    if (n == 0) continue;
    rest.erase(0, n);
    char which = rest == ".lora_A.weight" ? 'A' : rest == ".lora_B.weight" ? 'B' : 0;
    if (!which) continue;
    LoraPair& p = a.modules[weight_name(m.layer, m.proj)];
    (which == 'A' ? p.A : p.B) = to_f32(t, "LoRA parameters", key);
  }
  std::set<int64_t> layers;
  for (const auto& [name, p] : a.modules) {
    if (!p.A.defined() || !p.B.defined()) throw Error("LoRA parameters: '" + name + "' lacks lora_A or lora_B");
    if (p.A.dim(0) != a.rank || p.B.dim(1) != a.rank)
      throw Error("LoRA parameters: '" + name + "' has rank " + std::to_string(p.A.dim(0)) + ", lora_rank is " +
                  std::to_string(a.rank));
    layers.insert(std::stoll(name.substr(13)));  // "model.layers.N"
  }
  if (a.modules.empty()) throw Error("LoRA parameters: none among the model's weights");
  for (int64_t l : layers)
    for (const auto& t : a.targets)
      if (!a.modules.count(weight_name(l, t)))
        throw Error("LoRA parameters: layer " + std::to_string(l) + " has no " + t + " adapter");
  return a;
}

std::vector<std::pair<std::string, Tensor>> lora_named_tensors(const LoraAdapter& a) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [name, p] : a.modules) {
    std::string module = name.substr(0, name.size() - std::strlen(".weight"));
    out.emplace_back(module + ".lora_A.weight", p.A.to(DType::F32));
    out.emplace_back(module + ".lora_B.weight", p.B.to(DType::F32));
  }
  return out;
}

LoraOptions lora_options_of(const LoraAdapter& a) {
  if (a.rslora) fail(a.where, "rsLoRA adapters cannot be trained further here (use_rslora)");
  if (!a.layers.empty()) fail(a.where, "adapters restricted to some layers (layers_to_transform) cannot be trained further here");
  LoraOptions o;
  o.rank = a.rank;
  o.alpha = a.alpha;
  o.targets = a.targets;
  return o;
}

Tensor merge_lora_weight(const Tensor& W, const LoraPair& p, double scaling, DType out) {
  const int64_t O = W.dim(0), I = W.dim(1), R = p.A.dim(0);
  if (W.ndim() != 2 || p.B.dim(0) != O || p.A.dim(1) != I || p.B.dim(1) != R)
    throw Error("merge_lora_weight: W " + shape_str(W.shape()) + " does not match B " + shape_str(p.B.shape()) +
                " @ A " + shape_str(p.A.shape()));
  Tensor w = W.to(DType::F32);  // an owned copy to update
  const Tensor A = p.A.dtype() == DType::F32 && p.A.is_contiguous() ? p.A : p.A.to(DType::F32);
  const Tensor B = p.B.dtype() == DType::F32 && p.B.is_contiguous() ? p.B : p.B.to(DType::F32);
  const float* a = A.data<float>();
  const float* b = B.data<float>();
  float* wd = w.data<float>();
  const float s = float(scaling);
  // As PEFT: delta = (B @ A) * scaling in float32, then W + delta; one row of B @ A at a time.
#pragma omp parallel
  {
    std::vector<float> row(static_cast<size_t>(I));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < O; o++) {
      std::fill(row.begin(), row.end(), 0.0f);
      for (int64_t k = 0; k < R; k++) {
        const float bk = b[o * R + k];
        const float* ak = a + k * I;
        for (int64_t i = 0; i < I; i++) row[size_t(i)] += bk * ak[i];
      }
      float* wr = wd + o * I;
      for (int64_t i = 0; i < I; i++) wr[i] += row[size_t(i)] * s;
    }
  }
  return out == DType::F32 ? w : w.to(out);
}

Tensor LoraMergedSource::get(const std::string& name) const {
  auto it = adapter_.modules.find(name);
  if (it == adapter_.modules.end()) return base_.get(name);
  Tensor W = base_.get(name);
  const LoraPair& p = it->second;
  if (W.ndim() != 2 || W.dim(0) != p.B.dim(0) || W.dim(1) != p.A.dim(1))
    fail(adapter_.where, "'" + name + "' is " + shape_str(W.shape()) + " in " + base_.where() + " but the adapter's B @ A is " +
                             shape_str({p.B.dim(0), p.A.dim(1)}));
  return merge_lora_weight(W, p, adapter_.scaling(), keep_stored_dtype_ ? W.dtype() : DType::F32);
}

std::unique_ptr<LlamaModel> load_llama_with_lora(const std::string& model_path, const std::string& lora_dir, DType dtype,
                                                 std::optional<QuantSpec> quant) {
  LoraAdapter a = load_lora_adapter(lora_dir);
  const ModelSource ms = open_model_source(model_path);
  check_lora_against_config(a, ms.config, model_path);
  return LlamaModel::from_weights(ms.config, LoraMergedSource(*ms.weights, a), dtype, cpu_backend(), quant);
}

namespace {

// Same files, same tensors, same dtypes as the base; only the adapted weights change.
void write_merged_files(const std::string& base_dir, const LoraAdapter& a, const std::string& tmp) {
  WeightStore store = WeightStore::open_dir(base_dir);
  WeightStoreSource base(store);
  LoraMergedSource merged(base, a, /*keep_stored_dtype=*/true);
  std::map<std::string, std::vector<std::string>> by_file;
  for (const std::string& n : store.names()) by_file[store.file_of(n)].push_back(n);
  for (const auto& [file, names] : by_file) {
    std::vector<std::pair<std::string, Tensor>> ts;
    for (const std::string& n : names) ts.emplace_back(n, merged.get(n));
    write_safetensors(join_path(tmp, std::filesystem::path(file).filename().string()), ts, {{"format", "pt"}});
  }
  // config, index, generation settings and tokenizer files as they are (PaddleNLP's merge saves the tokenizer too).
  for (const std::string& f : {std::string("config.json"), std::string("model.safetensors.index.json")})
    if (file_exists(join_path(base_dir, f))) write_file_atomic(join_path(tmp, f), read_file(join_path(base_dir, f)));
  copy_model_side_files(base_dir, tmp);
}

}  // namespace

LoraAdapter merge_lora_checkpoint(const std::string& base_dir, const std::string& lora_dir, const std::string& out_path,
                                  bool force) {
  if (out_path.empty()) throw Error("--output_path is required");
  if (!dir_exists(base_dir)) {
    if (file_exists(base_dir)) fail(base_dir, "merge-lora needs a Hugging Face model directory (config.json + safetensors)");
    fail(base_dir, "no such directory");
  }
  const std::string cfg_path = join_path(base_dir, "config.json");
  if (!file_exists(cfg_path)) fail(base_dir, "no config.json in this directory");
  LlamaConfig cfg = load_hf_config(cfg_path);
  // The merged files keep the base's own layout, written as Hugging Face's; PaddleNLP's would go out unmerged.
  if (has_pdparams(base_dir) || is_paddle_layout(WeightStoreSource(WeightStore::open_dir(base_dir))))
    fail(base_dir, "merge-lora writes Hugging Face checkpoints and this base is in PaddleNLP's layout; run oar "
                   "convert --to hf on it first, or apply the adapter with --lora_path (predict, serve, perplexity)");
  LoraAdapter a = load_lora_adapter(lora_dir);
  check_lora_against_config(a, cfg, base_dir);
  write_directory_atomically(out_path, force, {base_dir, lora_dir}, [&](const std::string& tmp) {
    write_merged_files(base_dir, a, tmp);
  });
  return a;
}

}  // namespace oar
