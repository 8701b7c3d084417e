#include "io/packed_model.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "io/safetensors.h"

namespace oar {
namespace {

constexpr const char* kVersionKey = "oar_packed_version";
constexpr const char* kVersion = "1";

class PackedSource : public WeightSource {
 public:
  explicit PackedSource(WeightStore s) : s_(std::move(s)) {
    auto v = s_.metadata().find(kVersionKey);
    if (v == s_.metadata().end())
      fail(s_.where(), std::string("is not an oar export's packed file (no ") + kVersionKey + " in its metadata)");
    if (v->second != kVersion)
      fail(s_.where(), "packed by a newer oar (version " + in_quotes(v->second) + "; this one reads " + kVersion + ")");
  }
  bool has(const std::string& n) const override { return s_.has(n); }
  Tensor get(const std::string& n) const override {
    if (s_.metadata().count(n)) {
      const std::string f = meta(n).format;
      fail(s_.where(), "tensor " + in_quotes(n) + " is stored as " + in_quotes(f) + ", not as a float tensor" +
                           (f.rfind("weight_only_", 0) == 0 || f == "a8w8" ? ": load the export with --quant_type " + f : ""));
    }
    return s_.get(n);
  }
  std::string where() const override { return s_.where(); }
  int quantized_bits(const std::string& n) const override {
    if (!s_.metadata().count(n)) return 0;
    return meta(n).format == "weight_only_int4" ? 4 : 8;
  }
  std::optional<StoredWeight> stored_weight(const std::string& n) const override {
    if (!s_.metadata().count(n)) return std::nullopt;
    StoredWeight st = meta(n);
    st.data = s_.get(n);
    if (s_.has(n + ".scales")) st.scales = s_.get(n + ".scales");
    if (s_.has(n + ".row_sums")) st.row_sums = s_.get(n + ".row_sums");
    return st;
  }

 private:
  // NAME's metadata, checked: an object with a short string format, a group size in [0, 2^31] and a finite step
  // (the parts are the loader's to check against the format).
  StoredWeight meta(const std::string& n) const {
    const std::string where = s_.where() + ": metadata of " + in_quotes(n);
    const nlohmann::json j = parse_json(s_.metadata().at(n), where);
    auto bad = [&](const char* what) { throw Error(where + ": " + what); };
    if (!j.is_object()) bad("expected a JSON object");
    if (!j.contains("format") || !j["format"].is_string() || j["format"].get_ref<const std::string&>().size() > 64)
      bad("\"format\" must be a short string");
    if (!j.contains("group_size") || !j["group_size"].is_number_integer() || j["group_size"].get<int64_t>() < 0 ||
        j["group_size"].get<int64_t>() > (int64_t(1) << 31))
      bad("\"group_size\" must be an integer in [0, 2^31]");
    if (!j.contains("act_step") || !j["act_step"].is_number() || !std::isfinite(j["act_step"].get<double>()))
      bad("\"act_step\" must be a finite number");
    if (!s_.has(n)) bad("names no tensor of the file");
    StoredWeight st;
    st.format = j["format"].get<std::string>();
    st.group_size = j["group_size"].get<int64_t>();
    st.act_step = float(j["act_step"].get<double>());
    return st;
  }

  WeightStore s_;
};

}  // namespace

bool has_packed_weights(const std::string& dir) { return file_exists(join_path(dir, kPackedWeightsFile)); }

std::unique_ptr<WeightSource> open_packed_weights(const std::string& path) {
  return std::make_unique<PackedSource>(WeightStore::open_file(path));
}

void write_packed_weights(const std::string& path, const std::vector<std::pair<std::string, StoredWeight>>& entries) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata{{kVersionKey, kVersion}};
  for (const auto& [name, st] : entries) {
    tensors.emplace_back(name, st.data);
    if (st.format.empty()) continue;
    if (st.scales.defined()) tensors.emplace_back(name + ".scales", st.scales);
    if (st.row_sums.defined()) tensors.emplace_back(name + ".row_sums", st.row_sums);
    char step[32];
    std::snprintf(step, sizeof step, "%.9g", double(st.act_step));  // 9 digits: the float back exactly
    metadata[name] = "{\"format\": \"" + st.format + "\", \"group_size\": " + std::to_string(st.group_size) +
                     ", \"act_step\": " + step + "}";
  }
  write_safetensors(path, tensors, metadata, true);
}

}  // namespace oar
