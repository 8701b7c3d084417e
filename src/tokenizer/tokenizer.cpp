// The parts common to all tokenizers: UTF-8 repair, whole-sequence and streaming decode, and load_tokenizer with
// its tokenizer_config.json / special_tokens_map.json / generation_config.json handling.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "tokenizer/tokenizer_internal.h"

namespace oar {
namespace tok {

}  // namespace tok

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (is_special(id)) continue;
    std::string piece = token_bytes(id);
    if (first && strips_leading_space() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    first = false;
    bytes += piece;
  }
  return utf8_sanitize(bytes);
}

std::string StreamDecoder::push(int32_t id) {
  if (tok_.is_special(id)) return "";
  std::string piece = tok_.token_bytes(id);
  if (first_ && tok_.strips_leading_space() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  first_ = false;
  pending_ += piece;
  std::string out;
  size_t used = utf8_append_valid(out, pending_, false);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  utf8_append_valid(out, pending_, true);
  pending_.clear();
  return out;
}

namespace {

using nlohmann::json;

json read_json_file(const std::string& path) { return parse_json_file(path); }

// tokenizer_config.json writes a token either as a string or as {"content": "...", ...} (AddedToken).
std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

std::string dir_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

struct Overrides {
  std::string bos, eos, pad;
};

void read_special_names(const std::string& path, Overrides& o, std::string* chat_template) {
  if (!file_exists(path)) return;
  json j = read_json_file(path);
  if (!j.is_object()) fail(path, "expected a JSON object");
  auto take = [&](const char* key, std::string& dst) {
    if (j.contains(key)) {
      std::string t = token_text(j[key]);
      if (!t.empty()) dst = t;
    }
  };
  take("bos_token", o.bos);
  take("eos_token", o.eos);
  take("pad_token", o.pad);
  if (chat_template && j.contains("chat_template")) {
    const json& ct = j["chat_template"];
    if (ct.is_string()) {
      *chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {
      // Newer files hold several named templates: [{"name": "default", "template": "..."}, ...].
      for (const json& e : ct) {
        if (!e.is_object() || !e.contains("template") || !e["template"].is_string()) continue;
        bool is_default = e.contains("name") && e["name"] == "default";
        if (chat_template->empty() || is_default) *chat_template = e["template"].get<std::string>();
        if (is_default) break;
      }
    }
  }
}

void apply_configs(tok::TokenizerBase& t, const std::string& dir) {
  Overrides o;
  std::string chat;
  std::string cfg = join_path(dir, "tokenizer_config.json");
  read_special_names(cfg, o, &chat);
  read_special_names(join_path(dir, "special_tokens_map.json"), o, nullptr);
  if (chat.empty() && file_exists(join_path(dir, "chat_template.jinja")))
    chat = read_file(join_path(dir, "chat_template.jinja"));
  t.chat_template_ = chat;

  // A name that is not in the vocabulary is ignored: the model's own ids stay.
  if (!o.bos.empty()) {
    int32_t id = t.token_to_id(o.bos);
    if (id >= 0) t.bos_ = id;
  }
  if (!o.pad.empty()) {
    int32_t id = t.token_to_id(o.pad);
    if (id >= 0) t.pad_ = id;
  }
  std::vector<int32_t> eos;
  auto add_eos = [&](int32_t id) {
    if (id >= 0 && id < t.vocab_size() && std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  };
  if (!o.eos.empty()) add_eos(t.token_to_id(o.eos));
  for (int32_t id : t.eos_) add_eos(id);  // the model's own (kept after the configured one)
  std::string gen = join_path(dir, "generation_config.json");
  if (file_exists(gen)) {
    json g = read_json_file(gen);
    if (g.is_object() && g.contains("eos_token_id")) {
      const json& e = g["eos_token_id"];
      if (e.is_number_integer()) add_eos(e.get<int32_t>());
      if (e.is_array())
        for (const json& x : e)
          if (x.is_number_integer()) add_eos(x.get<int32_t>());
    }
  }
  t.eos_ = eos;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::unique_ptr<Tokenizer> t;
  std::string dir;
  if (dir_exists(path)) {
    dir = path;
    std::string json_path = join_path(dir, "tokenizer.json");
    std::string model_path = join_path(dir, "tokenizer.model");
    std::string bin_path = join_path(dir, "tokenizer.bin");
    if (file_exists(json_path)) {
      try {
        t = load_bpe_json(json_path);
      } catch (const tok::UnsupportedError&) {
        if (!file_exists(model_path)) throw;
        t = load_sentencepiece(model_path);
      }
    } else if (file_exists(model_path)) {
      t = load_sentencepiece(model_path);
    } else if (file_exists(bin_path)) {
      t = load_llama2c_tokenizer(bin_path, 0);
    } else {
      fail(path, "no tokenizer.json, tokenizer.model or tokenizer.bin in this directory");
    }
  } else if (file_exists(path)) {
    dir = dir_of(path);
    if (ends_with(path, ".json")) {
      t = load_bpe_json(path);
    } else if (ends_with(path, ".model")) {
      t = load_sentencepiece(path);
    } else if (ends_with(path, ".bin")) {
      t = load_llama2c_tokenizer(path, 0);
    } else {
      fail(path, "unknown tokenizer file type (expected tokenizer.json, tokenizer.model or tokenizer.bin)");
    }
  } else {
    fail(path, "no such file or directory");
  }
  auto* base = dynamic_cast<tok::TokenizerBase*>(t.get());
  if (base) apply_configs(*base, dir);
  return t;
}

}  // namespace oar
