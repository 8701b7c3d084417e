#include "io/ptq_scales.h"

#include <cfloat>
#include <cmath>
#include <regex>
#include <vector>

#include "core/error.h"
#include "core/json_io.h"

namespace oar {

namespace {

// The projections that share each calibrated input, as PaddleNLP's qkv_in_scale, out_linear_in_scale,
// ffn1_in_scale and ffn2_in_scale.
const std::map<std::string, std::vector<std::string>> kSharedInputs = {
    {"self_attn.q_proj", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
    {"self_attn.o_proj", {"self_attn.o_proj"}},
    {"mlp.gate_proj", {"mlp.gate_proj", "mlp.up_proj"}},
    {"mlp.down_proj", {"mlp.down_proj"}},
};

}  // namespace

std::map<std::string, float> load_act_scales(const std::string& path, const LlamaConfig& cfg) {
  const nlohmann::json j = parse_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object of activation scales");
  const int64_t L = cfg.num_hidden_layers;
  const std::regex key_re(
      R"((?:^|\.)layers\.(\d+)\.(self_attn\.[qo]_proj|mlp\.gate_proj|mlp\.down_proj)\.activation_quanter$)");
  std::map<std::string, float> steps;
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::smatch m;
    const std::string& key = it.key();
    // (a longer key is none of ours, and libstdc++'s regex recurses per character: a hostile key could overflow
    // the stack)
    if (key.size() > 256 || !std::regex_search(key, m, key_re)) continue;
    if (m[1].length() > 6 || std::stoll(m[1].str()) >= L)
      fail(path, "'" + key + "': the model has " + std::to_string(L) + " layers");
    const nlohmann::json& v = it.value().is_array() && it.value().size() == 1 ? it.value()[0] : it.value();
    const double absmax = v.is_number() ? v.get<double>() : -1.0;
    // The step must be a normal float: one that rounds to 0 would silently mean "dynamic".
    if (!(absmax / 127 >= FLT_MIN && absmax / 127 <= FLT_MAX))  // (false for NaN too)
      fail(path, "'" + key + "' must be one positive finite number (the input's calibrated absmax)");
    const float step = float(absmax / 127);
    const std::string layer = "model.layers." + m[1].str() + ".";
    for (const std::string& proj : kSharedInputs.at(m[2].str()))
      steps[layer + proj + ".weight"] = step;
  }
  for (int64_t l = 0; l < L; l++)
    for (const auto& [input, projs] : kSharedInputs)
      if (!steps.count("model.layers." + std::to_string(l) + "." + projs[0] + ".weight"))
        fail(path, "no activation scale for layer " + std::to_string(l) + "'s " + input +
                       " (a key like 'llama.layers." + std::to_string(l) + "." + input + ".activation_quanter')");
  return steps;
}

}  // namespace oar
