// The parts common to all tokenizers: UTF-8 repair, whole-sequence and streaming decode, and load_tokenizer with
// its tokenizer_config.json / special_tokens_map.json / generation_config.json handling.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer_internal.h"

namespace oar {
namespace tok {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// How many bytes starting at p[0] form a well-formed sequence, following Unicode Table 3-7. Returns the full
// length when complete, or -k when only the first k bytes are a valid prefix (k >= 1); *truncated tells whether
// that was because the input ended (the sequence might still complete) rather than a bad byte.
int utf8_check(const unsigned char* p, size_t n, bool* truncated = nullptr) {
  if (truncated) *truncated = false;
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return -1;  // continuation byte or never-valid lead
  }
  for (int i = 1; i < need; ++i) {
    if (size_t(i) >= n) {
      if (truncated) *truncated = true;
      return -i;
    }
    unsigned char b = p[i];
    bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -i;
  }
  return need;
}
}  // namespace

size_t utf8_append_valid(std::string& out, std::string_view bytes, bool final) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    size_t run = i;  // copy runs of ASCII / valid sequences in one go
    int r;
    while (run < n && (r = utf8_check(p + run, n - run)) > 0) run += size_t(r);
    out.append(bytes.data() + i, run - i);
    i = run;
    if (i >= n) break;
    bool truncated;
    r = utf8_check(p + i, n - i, &truncated);
    if (truncated && !final) return i;  // a valid prefix cut off by the end: it may still complete
    size_t k = size_t(-r);
    out.append(kReplacement);
    i += k;
  }
  return i;
}

std::string utf8_sanitize(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  utf8_append_valid(out, bytes, true);
  return out;
}

bool utf8_is_valid(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    int r = utf8_check(p + i, bytes.size() - i);
    if (r < 0) return false;
    i += size_t(r);
  }
  return true;
}

void utf8_append_codepoint(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

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
  return tok::utf8_sanitize(bytes);
}

std::string StreamDecoder::push(int32_t id) {
  if (tok_.is_special(id)) return "";
  std::string piece = tok_.token_bytes(id);
  if (first_ && tok_.strips_leading_space() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  first_ = false;
  pending_ += piece;
  std::string out;
  size_t used = tok::utf8_append_valid(out, pending_, false);
  pending_.erase(0, used);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  tok::utf8_append_valid(out, pending_, true);
  pending_.clear();
  return out;
}

namespace {

using nlohmann::json;

json read_json_file(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(path, std::string("invalid JSON: ") + e.what());
  }
}

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
