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

StreamDecoder::StreamDecoder(const Tokenizer& tok, const std::vector<int32_t>& context) : tok_(tok) {
  for (int32_t id : context) {
    std::string ignored = push(id);
    (void)ignored;
  }
  held_ = pending_.size();  // an incomplete character at the end of the context
}

std::string StreamDecoder::push(int32_t id) {
  if (tok_.is_special(id)) return "";
  std::string piece = tok_.token_bytes(id);
  if (first_ && tok_.strips_leading_space() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  first_ = false;
  pending_ += piece;
  return take(false);
}

std::string StreamDecoder::flush() { return take(true); }

std::string StreamDecoder::take(bool final) {
  std::string out;
  // Whether the context's incomplete character got completed (checked before the bytes are consumed).
  bool context_tail_completed = false;
  if (held_ > 0) {
    const size_t len = utf8_seq_len(static_cast<unsigned char>(pending_[0]));
    context_tail_completed = pending_.size() >= len && utf8_is_valid(std::string_view(pending_).substr(0, len));
  }
  const size_t used = utf8_append_valid(out, pending_, final);
  pending_.erase(0, used);
  if (held_ > 0 && used > 0) {
    // Not completed: the U+FFFD it becomes (its maximal invalid subpart is the held bytes alone) is already in
    // the context's own decoding, so it is not part of this continuation.
    if (!context_tail_completed) out.erase(0, 3);
    held_ = 0;
  }
  return out;
}

std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context,
                                const std::vector<int32_t>& ids) {
  StreamDecoder d(tok, context);
  std::string out;
  for (int32_t id : ids) out += d.push(id);
  return out + d.flush();
}

std::string openai_token_text(const Tokenizer& tok, int32_t id) {
  const std::string b = tok.token_bytes(id, true);
  if (utf8_is_valid(b)) return b;
  static const char* hex = "0123456789abcdef";
  std::string out = "bytes:";
  for (unsigned char c : b) {
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

namespace tok {

void TokenizerBase::add_literal_special(std::string text, int32_t id) {
  if (text.empty() || id < 0 || id >= vocab_size()) return;
  for (const auto& s : literal_specials_)
    if (s.first == text) return;  // the first registration wins
  literal_first_[static_cast<unsigned char>(text[0])] = true;
  literal_specials_.emplace_back(std::move(text), id);
  std::stable_sort(literal_specials_.begin(), literal_specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::vector<int32_t> TokenizerBase::encode_split(
    std::string_view text, bool add_bos,
    const std::function<void(std::string_view, std::vector<int32_t>&)>& encode_part, bool trim_specials) const {
  std::vector<int32_t> out;
  if (add_bos && bos_ >= 0) out.push_back(bos_);
  // A part between specials: as is, or (trim_specials) stripped on the sides that touch a special and skipped
  // when nothing is left.
  auto part = [&](size_t b, size_t e, bool after_special, bool before_special) {
    std::string_view p = text.substr(b, e - b);
    if (trim_specials) {
      if (after_special) p = python_lstrip(p);
      if (before_special) p = python_rstrip(p);
      if (p.empty()) return;
    }
    encode_part(p, out);
  };
  size_t start = 0;
  // Leftmost match, the longest special at a position first (what HF's added-vocabulary matching does).
  for (size_t pos = 0; pos < text.size();) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    if (literal_first_[static_cast<unsigned char>(text[pos])])  // cheap pre-check before comparing strings
      for (const auto& s : literal_specials_)
        if (text.compare(pos, s.first.size(), s.first) == 0) {
          hit = &s;
          break;
        }
    if (!hit) {
      pos++;
      continue;
    }
    if (pos > start) part(start, pos, start > 0, true);
    out.push_back(hit->second);
    pos += hit->first.size();
    start = pos;
  }
  if (start < text.size() || text.empty()) part(start, text.size(), start > 0, false);
  return out;
}

std::vector<int32_t> TokenizerBase::encode_parts_trimmed(std::string_view text, bool add_bos) const {
  return encode_split(
      text, add_bos,
      [this](std::string_view p, std::vector<int32_t>& out) {
        const std::vector<int32_t> ids = encode(p, false);
        out.insert(out.end(), ids.begin(), ids.end());
      },
      true);
}

}  // namespace tok

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
  // Configured special tokens are added tokens in HF's tokenizer too (tokenizer.json matches its own already).
  if (t.kind() != "bpe")
    for (const std::string* name : {&o.bos, &o.eos, &o.pad})
      if (!name->empty()) t.add_literal_special(*name, t.token_to_id(*name));
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
    // PaddleNLP's LlamaTokenizer saves its SentencePiece model under this name.
    if (!file_exists(model_path) && file_exists(join_path(dir, "sentencepiece.bpe.model")))
      model_path = join_path(dir, "sentencepiece.bpe.model");
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
      fail(path, "no tokenizer.json, tokenizer.model (or PaddleNLP's sentencepiece.bpe.model) or tokenizer.bin in this directory");
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
