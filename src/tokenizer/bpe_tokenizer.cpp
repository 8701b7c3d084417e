// Byte-level BPE from a Hugging Face tokenizer.json (GPT-2 / Llama-3 style), following the pipeline of the
// `tokenizers` library step by step so that ids match it exactly:
//   1. added tokens are cut out of the raw text (leftmost-longest; lstrip/rstrip/single_word honoured);
//   2. each remaining segment goes through the pre-tokenizer steps (Split by regex or string, ByteLevel with its
//      optional prefix space, GPT-2 regex and byte-to-unicode mapping);
//   3. each pre-token is looked up whole when ignore_merges is set, else split into characters and merged pair
//      by pair, lowest merge rank first (leftmost on ties);
//   4. TemplateProcessing's leading special token is the BOS.
// Regexes run on PCRE2 with UTF + UCP (Unicode properties, Unicode \s \d \w), JIT-compiled when possible.
// Anything in the file that would change ids and that we do not implement is an error, never ignored.
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

namespace oar {
namespace {

using nlohmann::json;

[[noreturn]] void unsupported(const std::string& where, const std::string& field, const std::string& what) {
  throw tok::UnsupportedError(where + ": " + field + ": " + what + " is not supported");
}

// ---------------------------------------------------------------------------------------------------------------
// PCRE2

class Regex {
 public:
  // `where`/`field` name the pattern in errors. literal: match the pattern text as is (Split's String pattern).
  Regex(const std::string& pattern, bool literal, const std::string& where, const std::string& field) {
    int err = 0;
    PCRE2_SIZE off = 0;
    // MULTILINE: tokenizers compiles with Oniguruma's Ruby syntax, where ^ and $ match at line breaks.
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail(where, field + ": cannot compile regex at offset " + std::to_string(off) + ": " +
                      reinterpret_cast<const char*>(msg));
    }
    // Without JIT (unsupported CPU, or exotic pattern) pcre2_match falls back to the interpreter.
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Per-call scratch for matches (one per thread at a time).
  struct Scratch {
    explicit Scratch(const Regex& re) : md(pcre2_match_data_create_from_pattern(re.code_, nullptr)) {
      if (!md) throw std::bad_alloc();
    }
    ~Scratch() { pcre2_match_data_free(md); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    pcre2_match_data* md;
  };

  // First match at or after `offset` (a character boundary) in `s`, which must be valid UTF-8.
  bool find(std::string_view s, size_t offset, Scratch& sc, size_t& begin, size_t& end, uint32_t extra = 0) const {
    auto subj = reinterpret_cast<PCRE2_SPTR>(s.data());
    int rc = pcre2_match(code_, subj, s.size(), offset, PCRE2_NO_UTF_CHECK | extra, sc.md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // the interpreter keeps its backtracking on the heap
      rc = pcre2_match(code_, subj, s.size(), offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT | extra, sc.md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw Error(std::string("tokenizer regex match failed: ") + reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(sc.md);
    begin = std::max<size_t>(ov[0], offset);
    end = std::max<size_t>(ov[1], begin);  // \K tricks could report end < begin
    return true;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// tokenizers compiles Split/ByteLevel patterns with Oniguruma (Ruby syntax), where some escapes mean something
// else than in PCRE2: \s is exactly Unicode White_Space (PCRE2 adds U+180E), \w is letters, marks, decimal
// digits and connector punctuation (PCRE2 10.42: letters, numbers, '_'), \h is a hex digit and \v the VT
// character. Those are rewritten into the Unicode properties they stand for; constructs whose meaning we cannot
// carry over faithfully (nested classes, POSIX brackets, \b) are refused rather than run differently. PCRE2
// gets MULTILINE because Ruby's ^ and $ always match at line breaks.
std::string onig_to_pcre2(const std::string& pat, const std::string& where, const std::string& field) {
  auto refuse = [&](const std::string& what) { unsupported(where, field, what + " in the regex"); };
  static const std::string kWord = "\\p{L}\\p{M}\\p{Nd}\\p{Pc}", kSpace = "\\p{White_Space}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pat.size(); ++i) {
    char c = pat[i];
    if (c == '\\' && i + 1 < pat.size()) {
      char e = pat[++i];
      switch (e) {
        case 's': out += kSpace; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'w': out += in_class ? kWord : "[" + kWord + "]"; break;
        case 'W':
          if (in_class) refuse("\\W inside a character class");
          out += "[^" + kWord + "]";
          break;
        case 'h': out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;
        case 'H':
          if (in_class) refuse("\\H inside a character class");
          out += "[^0-9a-fA-F]";
          break;
        case 'v': out += "\\x{0B}"; break;
        case 'b': case 'B':
          if (in_class) {
            out += "\\b";  // backspace in both dialects
            if (e == 'B') refuse("\\B inside a character class");
          } else {
            refuse("a word boundary (\\b, \\B)");
          }
          break;
        default:
          out += c;
          out += e;
      }
      continue;
    }
    if (in_class) {
      if (c == '[') refuse(pat.compare(i, 2, "[:") == 0 ? "a POSIX bracket class" : "a nested character class");
      if (c == '&' && i + 1 < pat.size() && pat[i + 1] == '&') refuse("a class intersection (&&)");
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '(' && pat.compare(i, 2, "(?") == 0) {
      // Inline options: Ruby's (?m) is PCRE2's (?s) (dot matches newline); ^ and $ are always line anchors.
      size_t j = i + 2;
      while (j < pat.size() && (std::isalpha(uint8_t(pat[j])) || pat[j] == '-')) ++j;
      if (j > i + 2 && j < pat.size() && (pat[j] == ':' || pat[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) {
          char o = pat[k];
          if (o == 'm') o = 's';
          else if (o != 'i' && o != 'x' && o != '-') refuse(std::string("the inline option '") + o + "'");
          out += o;
        }
        i = j - 1;
        continue;
      }
    }
    out += c;
    if (c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pat.size() && pat[i + 1] == '^') out += pat[++i];
      if (i + 1 < pat.size() && pat[i + 1] == ']') out += pat[++i];
    }
  }
  return out;
}

// Character classes as Rust's regex crate defines \s and \w (used by tokenizers for added-token options).
const Regex& space_class() {
  static const Regex re("\\p{White_Space}", false, "", "");
  return re;
}
const Regex& word_class() {
  static const Regex re("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]", false, "", "");
  return re;
}
bool char_is(const Regex& re, std::string_view s, size_t at) {
  Regex::Scratch sc(re);
  size_t b, e;
  return re.find(s, at, sc, b, e, PCRE2_ANCHORED);
}
size_t prev_char_start(std::string_view s, size_t at) {
  while (at > 0 && (uint8_t(s[--at]) & 0xC0) == 0x80) {
  }
  return at;
}
size_t char_len_at(std::string_view s, size_t at) { return std::min(utf8_seq_len(uint8_t(s[at])), s.size() - at); }

// ---------------------------------------------------------------------------------------------------------------
// GPT-2's reversible byte <-> printable-character mapping.

struct ByteMap {
  std::array<std::string, 256> to_char;  // UTF-8 of the character standing for each byte
  std::array<int16_t, 324> to_byte;      // code point -> byte, -1 if not a mapped character
  ByteMap() {
    to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
      utf8_append_codepoint(to_char[size_t(b)], cp);
      to_byte[cp] = int16_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// The bytes a byte-level token stands for; a token with any character outside the mapping is taken as its raw
// UTF-8, as tokenizers' ByteLevel decoder does.
std::string unmap_bytes(const std::string& token) {
  const ByteMap& m = byte_map();
  std::string out;
  for (size_t i = 0; i < token.size();) {
    auto c = uint8_t(token[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c >> 5) == 6 && i + 1 < token.size()) {
      cp = (uint32_t(c & 0x1F) << 6) | (uint8_t(token[i + 1]) & 0x3F);
      i += 2;
    } else {
      return token;
    }
    if (cp >= m.to_byte.size() || m.to_byte[cp] < 0) return token;
    out += char(m.to_byte[cp]);
  }
  return out;
}

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------------------------------------------------------
// JSON helpers: every structural surprise is an error naming the field.

// A string from the file as it may appear in a one-line error message: quoted, control characters escaped.
std::string json_quoted(const std::string& s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

const json* get(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}
bool is_null_or_absent(const json& obj, const char* key) {
  const json* v = get(obj, key);
  return v == nullptr || v->is_null();
}
bool get_bool(const json& obj, const char* key, bool dflt, const std::string& where, const std::string& field) {
  const json* v = get(obj, key);
  if (!v || v->is_null()) return dflt;
  if (!v->is_boolean()) fail(where, field + "." + key + ": expected true or false");
  return v->get<bool>();
}
std::string get_string(const json& obj, const char* key, const std::string& where, const std::string& field) {
  const json* v = get(obj, key);
  if (!v || !v->is_string()) fail(where, field + "." + key + ": expected a string");
  return v->get<std::string>();
}
std::string type_of(const json& obj, const std::string& where, const std::string& field) {
  if (!obj.is_object()) fail(where, field + ": expected an object");
  return get_string(obj, "type", where, field);
}

// ---------------------------------------------------------------------------------------------------------------

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreStep {
  bool byte_level = false;
  bool add_prefix_space = false;  // ByteLevel
  std::unique_ptr<Regex> re;      // Split's pattern, or the GPT-2 regex of ByteLevel(use_regex)
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
};

struct AddedToken {
  std::string content;
  int32_t id;
  bool single_word, lstrip, rstrip, normalized, special;
};

// A byte trie over added-token contents for leftmost-longest matching.
class Trie {
 public:
  void add(const std::string& s, int32_t token_index) {
    int32_t node = 0;
    for (unsigned char c : s) {
      uint64_t key = (uint64_t(uint32_t(node)) << 8) | c;
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, int32_t(terminal_.size())).first;
        terminal_.push_back(-1);
      }
      node = it->second;
    }
    if (terminal_[size_t(node)] < 0) terminal_[size_t(node)] = token_index;  // the first of duplicates wins
    first_byte_[uint8_t(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  // Leftmost-longest match at or after `from`: sets begin/end/token and returns true.
  bool find(std::string_view s, size_t from, size_t& begin, size_t& end, int32_t& token) const {
    for (size_t p = from; p < s.size(); ++p) {
      if (!first_byte_[uint8_t(s[p])]) continue;
      int32_t node = 0, best = -1;
      size_t best_end = 0;
      for (size_t q = p; q < s.size(); ++q) {
        auto it = edges_.find((uint64_t(uint32_t(node)) << 8) | uint8_t(s[q]));
        if (it == edges_.end()) break;
        node = it->second;
        if (terminal_[size_t(node)] >= 0) {
          best = terminal_[size_t(node)];
          best_end = q + 1;
        }
      }
      if (best >= 0) {
        begin = p;
        end = best_end;
        token = best;
        return true;
      }
    }
    return false;
  }

 private:
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_{-1};  // node 0 is the root
  std::array<bool, 256> first_byte_{};
  bool empty_ = true;
};

// A segment of input: either text still to tokenize or an added token already recognised.
struct Segment {
  size_t begin, end;
  int32_t added = -1;  // index into added_, or -1
};

class BpeTokenizer final : public tok::TokenizerBase {
 public:
  BpeTokenizer(std::string_view text, const std::string& where) : where_(where) {
    const json j = parse_json(text, where);
    try {
      load(j);
    } catch (const json::exception& e) {  // a type surprise we did not check field by field
      fail(where, std::string("unexpected tokenizer.json structure: ") + e.what());
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    if (add_bos && bos_ >= 0) out.push_back(bos_);
    std::string clean;
    if (!utf8_is_valid(text)) {
      clean = utf8_sanitize(text);
      text = clean;
    }
    std::vector<Segment> segs{{0, text.size(), -1}};
    segs = split_added(text, segs, trie_raw_);
    segs = split_added(text, segs, trie_normalized_);
    std::vector<std::string> pieces, next;
    std::vector<std::unique_ptr<Regex::Scratch>> scratch;
    for (const PreStep& st : steps_) scratch.push_back(st.re ? std::make_unique<Regex::Scratch>(*st.re) : nullptr);
    for (const Segment& sg : segs) {
      if (sg.added >= 0) {
        out.push_back(added_[size_t(sg.added)].id);
        continue;
      }
      if (sg.begin == sg.end) continue;
      pieces.assign(1, std::string(text.substr(sg.begin, sg.end - sg.begin)));
      for (size_t k = 0; k < steps_.size(); ++k) {
        next.clear();
        for (std::string& p : pieces) apply_step(steps_[k], scratch[k].get(), p, next);
        pieces.swap(next);
      }
      for (const std::string& p : pieces) tokenize_word(p, out);
    }
    return out;
  }

  std::string token_bytes(int32_t id, bool include_special) const override {
    if (id < 0 || id >= int32_t(bytes_.size())) return "";
    if (!include_special && is_special(id)) return "";
    return bytes_[size_t(id)];
  }

  int32_t vocab_size() const override { return int32_t(tokens_.size()); }
  std::string id_to_piece(int32_t id) const override {
    return id >= 0 && id < int32_t(tokens_.size()) ? tokens_[size_t(id)] : "";
  }
  bool is_special(int32_t id) const override {
    return id >= 0 && id < int32_t(special_.size()) && special_[size_t(id)];
  }
  std::string kind() const override { return "bpe"; }
  int32_t token_to_id(std::string_view text) const override {
    for (const AddedToken& a : added_)
      if (a.content == text) return a.id;
    auto it = vocab_.find(std::string(text));
    return it == vocab_.end() ? -1 : it->second;
  }

 private:
  // ------------------------------------------------------------------------------------------------ loading
  static constexpr int kMaxNesting = 16;  // Sequences of Sequences: real files use one level

  void load(const json& j) {
    if (!j.is_object()) fail(where_, "expected a JSON object at the top level");
    for (const char* key : {"truncation", "padding"})
      if (!is_null_or_absent(j, key)) unsupported(where_, key, "a non-null value");
    if (!is_null_or_absent(j, "normalizer")) {
      const json& n = j["normalizer"];
      std::string t = type_of(n, where_, "normalizer");
      bool empty_sequence = t == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array() &&
                            n["normalizers"].empty();
      if (!empty_sequence) unsupported(where_, "normalizer", "type " + json_quoted(t));
    }
    load_model(j.contains("model") ? j["model"] : json());
    load_added(j);
    if (is_null_or_absent(j, "pre_tokenizer"))
      unsupported(where_, "pre_tokenizer", "null (only byte-level BPE is implemented)");
    load_pre_tokenizer(j["pre_tokenizer"], "pre_tokenizer");
    if (std::none_of(steps_.begin(), steps_.end(), [](const PreStep& s) { return s.byte_level; }))
      unsupported(where_, "pre_tokenizer", "a pipeline without a ByteLevel step (only byte-level BPE is implemented)");
    if (!is_null_or_absent(j, "post_processor")) load_post_processor(j["post_processor"], "post_processor");
    if (!is_null_or_absent(j, "decoder")) {
      std::string t = type_of(j["decoder"], where_, "decoder");
      if (t != "ByteLevel") unsupported(where_, "decoder", "type " + json_quoted(t));
    }
    finish();
  }

  int32_t checked_id(const json& v, const std::string& field) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX - 1)
      fail(where_, field + ": expected a non-negative integer id");
    return v.get<int32_t>();
  }

  void load_model(const json& m) {
    if (!m.is_object()) fail(where_, "model: expected an object");
    if (m.contains("type") && type_of(m, where_, "model") != "BPE")
      unsupported(where_, "model.type", json_quoted(m["type"].get<std::string>()) + " (only BPE is implemented)");
    const json* vocab = get(m, "vocab");
    if (!vocab || !vocab->is_object()) fail(where_, "model.vocab: expected an object of token -> id");
    const json* merges = get(m, "merges");
    if (!merges || !merges->is_array()) fail(where_, "model.merges: expected an array");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      const json* v = get(m, key);
      if (v && !v->is_null() && !(v->is_string() && v->get<std::string>().empty()))
        unsupported(where_, std::string("model.") + key, "a non-empty value");
    }
    if (const json* d = get(m, "dropout"); d && !d->is_null() && !(d->is_number() && d->get<double>() == 0.0))
      unsupported(where_, "model.dropout", "BPE dropout (random ids)");
    ignore_merges_ = get_bool(m, "ignore_merges", false, where_, "model");
    byte_fallback_ = get_bool(m, "byte_fallback", false, where_, "model");
    fuse_unk_ = get_bool(m, "fuse_unk", false, where_, "model");

    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      int32_t id = checked_id(it.value(), "model.vocab[" + json_quoted(it.key()) + "]");
      vocab_[it.key()] = id;
      max_id_ = std::max(max_id_, id);
    }
    if (const json* u = get(m, "unk_token"); u && !u->is_null()) {
      if (!u->is_string()) fail(where_, "model.unk_token: expected a string");
      auto it = vocab_.find(u->get<std::string>());
      if (it == vocab_.end())
        fail(where_, "model.unk_token: " + json_quoted(u->get<std::string>()) + " is not in model.vocab");
      unk_ = it->second;
    }
    std::string a, b;
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& e = (*merges)[i];
      std::string field = "model.merges[" + std::to_string(i) + "]";
      if (e.is_string()) {  // "a b": exactly one space, as tokenizers requires
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail(where_, field + ": expected \"left right\"");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        fail(where_, field + ": expected \"left right\" or [\"left\", \"right\"]");
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end())
        fail(where_, field + ": " + json_quoted(a) + " + " + json_quoted(b) + " needs a token not in model.vocab");
      // A repeated pair keeps its last rank, as tokenizers' map building does.
      merges_[pair_key(ia->second, ib->second)] = {int32_t(i), im->second};
    }
  }

  void load_added(const json& j) {
    const json* list = get(j, "added_tokens");
    if (!list || list->is_null()) return;
    if (!list->is_array()) fail(where_, "added_tokens: expected an array");
    for (size_t i = 0; i < list->size(); ++i) {
      const json& e = (*list)[i];
      std::string field = "added_tokens[" + std::to_string(i) + "]";
      if (!e.is_object() || !e.contains("id")) fail(where_, field + ": expected an object with an id");
      AddedToken t;
      t.id = checked_id(e["id"], field + ".id");
      t.content = get_string(e, "content", where_, field);
      t.single_word = get_bool(e, "single_word", false, where_, field);
      t.lstrip = get_bool(e, "lstrip", false, where_, field);
      t.rstrip = get_bool(e, "rstrip", false, where_, field);
      t.normalized = get_bool(e, "normalized", false, where_, field);
      t.special = get_bool(e, "special", false, where_, field);
      max_id_ = std::max(max_id_, t.id);
      if (t.content.empty()) continue;  // tokenizers ignores empty added tokens
      added_.push_back(std::move(t));
    }
    // Matching order as tokenizers builds it: special tokens first, then the others.
    std::stable_partition(added_.begin(), added_.end(), [](const AddedToken& t) { return t.special; });
    for (size_t i = 0; i < added_.size(); ++i)
      (added_[i].normalized ? trie_normalized_ : trie_raw_).add(added_[i].content, int32_t(i));
  }

  void load_pre_tokenizer(const json& p, const std::string& field, int depth = 0) {
    std::string t = type_of(p, where_, field);
    if (depth > kMaxNesting) fail(where_, field + ": Sequence nested too deeply");
    if (t == "Sequence") {
      const json* list = get(p, "pretokenizers");
      if (!list || !list->is_array()) fail(where_, field + ".pretokenizers: expected an array");
      for (size_t i = 0; i < list->size(); ++i)
        load_pre_tokenizer((*list)[i], field + ".pretokenizers[" + std::to_string(i) + "]", depth + 1);
    } else if (t == "ByteLevel") {
      PreStep st;
      st.byte_level = true;
      st.add_prefix_space = get_bool(p, "add_prefix_space", true, where_, field);
      if (get_bool(p, "use_regex", true, where_, field))
        st.re = std::make_unique<Regex>(onig_to_pcre2(kGpt2Pattern, where_, field), false, where_, field);
      steps_.push_back(std::move(st));
    } else if (t == "Split") {
      PreStep st;
      const json* pat = get(p, "pattern");
      if (pat && pat->is_object() && pat->contains("Regex") && (*pat)["Regex"].is_string()) {
        std::string f = field + ".pattern.Regex";
        st.re = std::make_unique<Regex>(onig_to_pcre2((*pat)["Regex"].get<std::string>(), where_, f), false, where_, f);
      } else if (pat && pat->is_object() && pat->contains("String") && (*pat)["String"].is_string()) {
        st.re = std::make_unique<Regex>((*pat)["String"].get<std::string>(), true, where_, field + ".pattern.String");
      } else {
        fail(where_, field + ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
      }
      std::string b = get_string(p, "behavior", where_, field);
      static const std::pair<const char*, Behavior> kBehaviors[] = {
          {"Removed", Behavior::Removed}, {"Isolated", Behavior::Isolated},
          {"MergedWithPrevious", Behavior::MergedWithPrevious}, {"MergedWithNext", Behavior::MergedWithNext},
          {"Contiguous", Behavior::Contiguous}};
      bool found = false;
      for (auto& [name, beh] : kBehaviors)
        if (b == name) {
          st.behavior = beh;
          found = true;
        }
      if (!found) fail(where_, field + ".behavior: unknown value " + json_quoted(b));
      st.invert = get_bool(p, "invert", false, where_, field);
      steps_.push_back(std::move(st));
    } else {
      unsupported(where_, field, "type " + json_quoted(t));
    }
  }

  void load_post_processor(const json& p, const std::string& field, int depth = 0) {
    std::string t = type_of(p, where_, field);
    if (depth > kMaxNesting) fail(where_, field + ": Sequence nested too deeply");
    if (t == "ByteLevel") return;  // only adjusts offsets
    if (t == "Sequence") {
      const json* list = get(p, "processors");
      if (!list || !list->is_array()) fail(where_, field + ".processors: expected an array");
      for (size_t i = 0; i < list->size(); ++i)
        load_post_processor((*list)[i], field + ".processors[" + std::to_string(i) + "]", depth + 1);
      return;
    }
    if (t != "TemplateProcessing") unsupported(where_, field, "type " + json_quoted(t));
    const json* single = get(p, "single");
    const json* specials = get(p, "special_tokens");
    if (!single || !single->is_array()) fail(where_, field + ".single: expected an array");
    // We can express "one special token, then the text" (BOS); anything else would give other ids.
    std::vector<int32_t> before;
    bool seen_text = false;
    for (const json& item : *single) {
      if (item.is_object() && item.contains("Sequence")) {
        seen_text = true;
        continue;
      }
      if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].is_object())
        fail(where_, field + ".single: expected SpecialToken or Sequence items");
      if (seen_text) unsupported(where_, field + ".single", "a special token after the text (e.g. an appended EOS)");
      std::string name = get_string(item["SpecialToken"], "id", where_, field + ".single[].SpecialToken");
      const json* st = specials ? get(*specials, name.c_str()) : nullptr;
      const json* ids = st ? get(*st, "ids") : nullptr;
      std::string ids_field = field + ".special_tokens[" + json_quoted(name) + "].ids";
      if (!ids || !ids->is_array()) fail(where_, ids_field + ": missing");
      for (const json& id : *ids) before.push_back(checked_id(id, ids_field));
    }
    if (before.size() > 1) unsupported(where_, field + ".single", "more than one leading special token");
    if (before.size() == 1) bos_ = before[0];
  }

  // Id -> token string / bytes / special flag tables, EOS guesses, and sanity limits.
  void finish() {
    size_t entries = vocab_.size() + added_.size();
    if (max_id_ < 0) fail(where_, "model.vocab: empty vocabulary");
    // Ids index dense tables; a wildly sparse id is a broken (or hostile) file, not a real vocabulary.
    if (size_t(max_id_) > 2 * entries + 1024)
      fail(where_, "model.vocab: id " + std::to_string(max_id_) + " is far beyond the number of tokens");
    tokens_.assign(size_t(max_id_) + 1, "");
    special_.assign(size_t(max_id_) + 1, false);
    for (const auto& [s, id] : vocab_) tokens_[size_t(id)] = s;
    for (const AddedToken& a : added_) {
      tokens_[size_t(a.id)] = a.content;
      if (a.special) special_[size_t(a.id)] = true;
    }
    bytes_.resize(tokens_.size());
    for (size_t i = 0; i < tokens_.size(); ++i) bytes_[i] = unmap_bytes(tokens_[i]);
    if (bos_ > max_id_) fail(where_, "post_processor: BOS id " + std::to_string(bos_) + " is not in the vocabulary");
    for (const char* name : {"<|end_of_text|>", "<|eot_id|>"}) add_special_eos(name);
    if (eos_.empty())
      for (const char* name : {"<|endoftext|>", "</s>"}) add_special_eos(name);
  }
  void add_special_eos(const std::string& name) {
    for (const AddedToken& a : added_)
      if (a.special && a.content == name && std::find(eos_.begin(), eos_.end(), a.id) == eos_.end())
        eos_.push_back(a.id);
  }

  // ----------------------------------------------------------------------------------------------- encoding
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  // Cuts added tokens out of the text segments (tokenizers' AddedVocabulary::find_matches).
  std::vector<Segment> split_added(std::string_view text, const std::vector<Segment>& in, const Trie& trie) const {
    if (trie.empty()) return in;
    std::vector<Segment> out;
    for (const Segment& sg : in) {
      if (sg.added >= 0) {
        out.push_back(sg);
        continue;
      }
      std::string_view s = text.substr(0, sg.end);  // matches must not run past the segment
      size_t cursor = sg.begin, from = sg.begin, b, e;
      int32_t t;
      while (from < sg.end && trie.find(s, from, b, e, t)) {
        from = e;
        const AddedToken& a = added_[size_t(t)];
        if (a.single_word) {
          bool word_before = b > sg.begin && char_is(word_class(), s, prev_char_start(s, b));
          bool word_after = e < sg.end && char_is(word_class(), s, e);
          if (word_before || word_after) continue;
        }
        if (a.lstrip)  // swallow whitespace before it, but not what an earlier match took
          while (b > cursor && char_is(space_class(), s, prev_char_start(s, b))) b = prev_char_start(s, b);
        if (a.rstrip)
          while (e < sg.end && char_is(space_class(), s, e)) e += char_len_at(s, e);
        if (b > cursor) out.push_back({cursor, b, -1});
        out.push_back({b, e, t});
        cursor = from = e;
      }
      if (cursor < sg.end) out.push_back({cursor, sg.end, -1});
    }
    return out;
  }

  // One pre-tokenizer step on one piece; appends the resulting non-empty pieces to `out`.
  void apply_step(const PreStep& st, Regex::Scratch* sc, std::string& piece, std::vector<std::string>& out) const {
    if (st.byte_level && st.add_prefix_space && (piece.empty() || piece[0] != ' ')) piece.insert(0, 1, ' ');
    if (!st.re) {
      if (!piece.empty()) out.push_back(st.byte_level ? map_bytes(piece) : std::move(piece));
      return;
    }
    // Match spans cover the piece: (begin, end, is_match). Empty matches still cut, as in tokenizers.
    struct Span {
      size_t b, e;
      bool m;
    };
    std::vector<Span> spans;
    size_t prev = 0, search = 0;
    std::optional<size_t> last_match_end;
    while (search <= piece.size()) {
      size_t b, e;
      if (!st.re->find(piece, search, *sc, b, e)) break;
      if (b == e && last_match_end == e) {  // no empty match right after the previous match (Rust's rule)
        search = e < piece.size() ? e + char_len_at(piece, e) : e + 1;
        continue;
      }
      if (prev != b) spans.push_back({prev, b, false});
      spans.push_back({b, e, true});
      prev = search = e;
      last_match_end = e;
    }
    if (prev != piece.size()) spans.push_back({prev, piece.size(), false});
    if (st.invert)
      for (Span& s : spans) s.m = !s.m;

    std::vector<Span> merged;
    bool prev_match = false;
    switch (st.behavior) {
      case Behavior::Isolated:
        merged = spans;
        break;
      case Behavior::Removed:
        for (const Span& s : spans)
          if (!s.m) merged.push_back(s);
        break;
      case Behavior::MergedWithPrevious:
        for (const Span& s : spans) {
          if (s.m && !prev_match && !merged.empty())
            merged.back().e = s.e;
          else
            merged.push_back(s);
          prev_match = s.m;
        }
        break;
      case Behavior::MergedWithNext:
        for (size_t i = spans.size(); i-- > 0;) {
          const Span& s = spans[i];
          if (s.m && !prev_match && !merged.empty())
            merged.back().b = s.b;
          else
            merged.push_back(s);
          prev_match = s.m;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      case Behavior::Contiguous:
        for (size_t i = 0; i < spans.size(); ++i) {
          if (i > 0 && spans[i].m == prev_match && !merged.empty())
            merged.back().e = spans[i].e;
          else
            merged.push_back(spans[i]);
          prev_match = spans[i].m;
        }
        break;
    }
    for (const Span& s : merged) {
      if (s.e <= s.b) continue;
      std::string_view sub(piece.data() + s.b, s.e - s.b);
      out.push_back(st.byte_level ? map_bytes(sub) : std::string(sub));
    }
  }

  static std::string map_bytes(std::string_view s) {
    const ByteMap& m = byte_map();
    std::string out;
    out.reserve(s.size() * 2);
    for (unsigned char c : s) out += m.to_char[c];
    return out;
  }

  // BPE on one pre-token (already byte-mapped), with a cache of recent words.
  void tokenize_word(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
      auto it = vocab_.find(word);
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    constexpr size_t kMaxCachedLen = 256, kMaxCacheEntries = 1 << 17;
    bool cacheable = word.size() <= kMaxCachedLen;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      auto it = cache_.find(word);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = merge_word(word);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (cache_.size() >= kMaxCacheEntries) cache_.clear();
      cache_.emplace(word, std::move(ids));
    }
  }

  std::vector<int32_t> merge_word(const std::string& word) const {
    // Initial symbols: one per character; characters not in the vocabulary become byte tokens (byte_fallback),
    // the unknown token (fused when fuse_unk), or nothing, as tokenizers does.
    std::vector<int32_t> sym;
    std::string ch;
    bool last_unk = false;
    for (size_t i = 0; i < word.size();) {
      size_t n = char_len_at(word, i);
      ch.assign(word, i, n);
      i += n;
      auto it = vocab_.find(ch);
      if (it != vocab_.end()) {
        sym.push_back(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback_) {
        std::vector<int32_t> bytes;
        char name[8];
        for (unsigned char c : ch) {
          std::snprintf(name, sizeof name, "<0x%02X>", c);
          auto bt = vocab_.find(name);
          if (bt == vocab_.end()) break;
          bytes.push_back(bt->second);
        }
        if (bytes.size() == ch.size()) {
          sym.insert(sym.end(), bytes.begin(), bytes.end());
          last_unk = false;
          continue;
        }
      }
      if (unk_ >= 0) {
        if (!(fuse_unk_ && last_unk)) sym.push_back(unk_);
        last_unk = true;
      }
    }
    size_t m = sym.size();
    if (m < 2 || merges_.empty()) return sym;

    std::vector<int64_t> prev(m), next(m);
    for (size_t i = 0; i < m; ++i) {
      prev[i] = int64_t(i) - 1;
      next[i] = i + 1 < m ? int64_t(i) + 1 : -1;
    }
    struct Cand {
      int32_t rank;
      int64_t pos;
      int32_t merged;
      bool operator<(const Cand& o) const {  // min-heap on (rank, pos)
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::priority_queue<Cand> heap;
    auto consider = [&](int64_t i) {
      if (i < 0 || next[size_t(i)] < 0) return;
      auto it = merges_.find(pair_key(sym[size_t(i)], sym[size_t(next[size_t(i)])]));
      if (it != merges_.end()) heap.push({it->second.first, i, it->second.second});
    };
    for (size_t i = 0; i + 1 < m; ++i) consider(int64_t(i));
    while (!heap.empty()) {
      Cand c = heap.top();
      heap.pop();
      size_t i = size_t(c.pos);
      if (sym[i] < 0 || next[i] < 0) continue;  // merged away, or no right neighbour any more
      size_t j = size_t(next[i]);
      auto it = merges_.find(pair_key(sym[i], sym[j]));
      if (it == merges_.end() || it->second.second != c.merged) continue;  // stale
      sym[i] = c.merged;
      sym[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[size_t(next[j])] = int64_t(i);
      consider(prev[i]);
      consider(int64_t(i));
    }
    std::vector<int32_t> ids;
    for (int64_t i = 0; i >= 0; i = next[size_t(i)]) ids.push_back(sym[size_t(i)]);
    return ids;
  }

  std::string where_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, merged id)
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_ = -1;
  int32_t max_id_ = -1;
  std::vector<AddedToken> added_;
  Trie trie_raw_, trie_normalized_;
  std::vector<PreStep> steps_;
  std::vector<std::string> tokens_;  // id -> token string
  std::vector<std::string> bytes_;   // id -> decoded bytes
  std::vector<bool> special_;

  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_bpe_json(std::string_view json_text, const std::string& where) {
  return std::make_unique<BpeTokenizer>(json_text, where);
}

std::unique_ptr<Tokenizer> load_bpe_json(const std::string& tokenizer_json_path) {
  return parse_bpe_json(read_file(tokenizer_json_path), tokenizer_json_path);
}

}  // namespace oar
