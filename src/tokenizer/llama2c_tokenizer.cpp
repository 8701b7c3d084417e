// llama2.c's tokenizer.bin: int32 max_token_length, then per id: float32 score, int32 length, bytes.
// Encoding follows run.c: optional BOS, a " " dummy-prefix token for non-empty text, one token per UTF-8
// code point (or its bytes as ids byte+3), then repeatedly merge the adjacent pair whose concatenation is the
// best-scoring vocabulary entry (the leftmost on ties). Decoding: "<0xNN>" pieces are raw bytes, and the
// first piece loses its leading space (run.c does that after BOS).
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/fs.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

namespace oar {
namespace {

constexpr int32_t kBos = 1, kEos = 2, kByteOffset = 3;

class Llama2cTokenizer final : public tok::TokenizerBase {
 public:
  Llama2cTokenizer(const std::string& path, int32_t vocab_size) {
    std::string data = read_file(path);
    size_t pos = 0;
    auto read = [&](void* dst, size_t n, const char* what) {
      if (data.size() - pos < n)
        fail(path, "truncated tokenizer.bin: " + std::string(what) + " of token " + std::to_string(pieces_.size()) +
                       " is past the end of the file (" + std::to_string(data.size()) + " bytes)");
      std::memcpy(dst, data.data() + pos, n);
      pos += n;
    };
    int32_t max_len = 0;
    read(&max_len, 4, "the header");
    if (max_len < 0) fail(path, "corrupt tokenizer.bin: negative max_token_length");
    while (vocab_size > 0 ? int32_t(pieces_.size()) < vocab_size : pos < data.size()) {
      float score;
      int32_t len;
      read(&score, 4, "the score");
      read(&len, 4, "the length");
      if (len < 0) fail(path, "corrupt tokenizer.bin: token " + std::to_string(pieces_.size()) + " has length " +
                                  std::to_string(len));
      std::string piece(size_t(len), '\0');
      read(piece.data(), size_t(len), "the text");
      pieces_.push_back(std::move(piece));
      scores_.push_back(score);
    }
    if (pieces_.empty()) fail(path, "tokenizer.bin holds no tokens");
    index_pieces();
    if (n() > kBos) bos_ = kBos;
    if (n() > kEos) eos_ = {kEos};
    // tokenizer.bin is exported from Llama's tokenizer.model (its pieces "\n<s>\n", "\n</s>\n"): the same
    // literal special tokens as that model's, plus the pieces as stored.
    const char* names[] = {"<unk>", "<s>", "</s>"};
    for (int32_t id = 0; id <= kEos && id < n(); id++) {
      add_literal_special(names[id], id);
      add_literal_special(pieces_[size_t(id)], id);
    }
    // Special: eos and whatever bos_ is (tokenizer_config.json may change it after construction).
    special_.assign(size_t(n()), false);
    if (n() > kEos) special_[size_t(kEos)] = true;
  }

  // GGUF's lists: "\u2581" becomes the space that tokenizer.bin's pieces hold.
  Llama2cTokenizer(SpmVocab v, const std::string& where) {
    const size_t count = v.pieces.size();
    if (count == 0) fail(where, "the embedded tokenizer holds no tokens");
    if (v.scores.size() != count || (!v.types.empty() && v.types.size() != count))
      fail(where, "the embedded tokenizer's tokens, scores and token types differ in length");
    for (const std::string& p : v.pieces) pieces_.push_back(with_spaces(p));
    scores_ = std::move(v.scores);
    auto check = [&](int32_t id, const char* what) {
      if (id < -1 || id >= n()) fail(where, std::string("the embedded tokenizer's ") + what + " id " + std::to_string(id) +
                                                " is outside its " + std::to_string(n()) + " tokens");
    };
    check(v.bos, "bos");
    check(v.unk, "unk");
    check(v.pad, "pad");
    for (int32_t e : v.eos) {
      check(e, "eos");
      if (e >= 0) eos_.push_back(e);
    }
    bos_ = v.bos;
    pad_ = v.pad;
    unk_ = std::max(v.unk, 0);
    index_pieces();
    chat_template_ = std::move(v.chat_template);
    mark_specials(v.types);
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    return encode_split(text, add_bos, [this](std::string_view part, std::vector<int32_t>& ids) {
      size_t first = ids.size();
      if (!part.empty()) push_or_bytes(" ", ids);
      // Group each lead byte with up to 3 following continuation bytes, exactly as run.c does (so malformed
      // input is split the same way), and look the group up whole.
      for (size_t i = 0; i < part.size();) {
        size_t j = i + 1;
        while (j < part.size() && j - i < 4 && (uint8_t(part[j]) & 0xC0) == 0x80) ++j;
        push_or_bytes(part.substr(i, j - i), ids);
        i = j;
      }
      merge(ids, first);
    });
  }

  // tokenizer.bin is the Llama-2 sentencepiece vocabulary exported: PaddleNLP's LlamaTokenizer rule applies.
  std::vector<int32_t> encode_trimming_specials(std::string_view text, bool add_bos) const override {
    return encode_parts_trimmed(text, add_bos);
  }

  std::string token_bytes(int32_t id, bool include_special) const override {
    if (id < 0 || id >= n()) return "";
    if (is_special(id)) return include_special ? pieces_[size_t(id)] : "";
    const std::string& p = pieces_[size_t(id)];
    int byte = parse_byte_piece(p);
    if (byte >= 0) return std::string(1, char(byte));
    return p;
  }

  bool strips_leading_space() const override { return true; }
  int32_t vocab_size() const override { return n(); }
  std::string id_to_piece(int32_t id) const override { return id >= 0 && id < n() ? pieces_[size_t(id)] : ""; }
  bool is_special(int32_t id) const override { return id >= 0 && id < n() && (special_[size_t(id)] || id == bos_); }
  std::string kind() const override { return "llama2c"; }
  int32_t token_to_id(std::string_view text) const override {
    auto it = lookup_.find(std::string(text));
    return it == lookup_.end() ? -1 : it->second;
  }

 private:
  int32_t n() const { return int32_t(pieces_.size()); }

  // A GGUF piece with its "\u2581" marks as the spaces that tokenizer.bin's pieces hold.
  static std::string with_spaces(const std::string& p) {
    const std::string mark = "\u2581";
    std::string out;
    for (size_t i = 0; i < p.size();) {
      const bool is_mark = p.compare(i, mark.size(), mark) == 0;
      out += is_mark ? ' ' : p[i];
      i += is_mark ? mark.size() : 1;
    }
    return out;
  }

  // Unknown, control and user-defined pieces (GGUF's token types 2, 3, 4) are literal specials; unknown and
  // control ones, and the eos ids, are special when decoding (user-defined ones decode to their text).
  void mark_specials(const std::vector<int32_t>& types) {
    special_.assign(size_t(n()), false);
    for (int32_t id = 0; id < n(); id++) {
      const int32_t type = types.empty() ? 1 : types[size_t(id)];
      if (type != 2 && type != 3 && type != 4) continue;
      special_[size_t(id)] = type != 4;
      if (!pieces_[size_t(id)].empty()) add_literal_special(pieces_[size_t(id)], id);
    }
    for (int32_t e : eos_) special_[size_t(e)] = true;
  }

  // The lookup table, and the id of each byte's fallback piece: "<0xNN>" when the vocabulary has it, else byte
  // + 3 (llama2.c's rule) or unk.
  void index_pieces() {
    for (int32_t id = 0; id < n(); ++id) lookup_.emplace(pieces_[size_t(id)], id);  // first wins
    char name[8];
    for (int b = 0; b < 256; b++) {
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = lookup_.find(name);
      byte_id_[size_t(b)] = it != lookup_.end() ? it->second : b + kByteOffset < n() ? b + kByteOffset : unk_;
    }
  }

  static int parse_byte_piece(const std::string& p) {
    auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                    : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
    int hi = hex(p[3]), lo = hex(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  // The id of `s`, or else its bytes as byte-fallback ids (unk 0 where the vocabulary has no byte tokens).
  void push_or_bytes(std::string_view s, std::vector<int32_t>& ids) const {
    auto it = lookup_.find(std::string(s));
    if (it != lookup_.end()) {
      ids.push_back(it->second);
      return;
    }
    for (unsigned char c : s) ids.push_back(byte_id_[c]);
  }

  // run.c rescans for the best pair after every merge (quadratic); a heap keyed by (score, position) with
  // stale entries skipped picks the same pair each step in O(n log n). Positions are the symbols' original
  // indices, which keep their left-to-right order, so "smallest position" is run.c's "leftmost".
  void merge(std::vector<int32_t>& ids, size_t first) const {
    size_t m = ids.size() - first;
    if (m < 2) return;
    std::vector<int32_t> tok(ids.begin() + std::ptrdiff_t(first), ids.end());
    std::vector<int64_t> prev(m), next(m);
    for (size_t i = 0; i < m; ++i) {
      prev[i] = int64_t(i) - 1;
      next[i] = i + 1 < m ? int64_t(i) + 1 : -1;
    }
    struct Cand {
      float score;
      int64_t pos;
      int32_t left, right, merged;
      bool operator<(const Cand& o) const {  // max-heap: higher score first, then smaller position
        return score != o.score ? score < o.score : pos > o.pos;
      }
    };
    std::priority_queue<Cand> heap;
    std::string buf;
    auto consider = [&](int64_t i) {
      if (i < 0 || next[size_t(i)] < 0) return;
      int32_t a = tok[size_t(i)], b = tok[size_t(next[size_t(i)])];
      buf = pieces_[size_t(a)];
      buf += pieces_[size_t(b)];
      auto it = lookup_.find(buf);
      // run.c starts its search at a best score of -1e10, so pairs scoring no better never merge.
      if (it != lookup_.end() && scores_[size_t(it->second)] > -1e10f)
        heap.push({scores_[size_t(it->second)], i, a, b, it->second});
    };
    for (size_t i = 0; i + 1 < m; ++i) consider(int64_t(i));
    while (!heap.empty()) {
      Cand c = heap.top();
      heap.pop();
      size_t i = size_t(c.pos);
      if (tok[i] != c.left || next[i] < 0 || tok[size_t(next[i])] != c.right) continue;  // stale
      size_t j = size_t(next[i]);
      tok[i] = c.merged;
      tok[j] = -1;
      next[i] = next[j];
      if (next[j] >= 0) prev[size_t(next[j])] = int64_t(i);
      consider(prev[i]);
      consider(int64_t(i));
    }
    ids.resize(first);
    for (int64_t i = 0; i >= 0; i = next[size_t(i)]) ids.push_back(tok[size_t(i)]);
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> lookup_;
  std::array<int32_t, 256> byte_id_{};
  std::vector<bool> special_;
  int32_t unk_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_path, int32_t vocab_size) {
  return std::make_unique<Llama2cTokenizer>(bin_path, vocab_size);
}

std::unique_ptr<Tokenizer> make_spm_vocab_tokenizer(SpmVocab vocab, const std::string& where) {
  return std::make_unique<Llama2cTokenizer>(std::move(vocab), where);
}

}  // namespace oar
