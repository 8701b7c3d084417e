// Pieces shared by the tokenizer implementations (not part of the public API).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace oar::tok {

// Appends `bytes` to `out` as valid UTF-8: each maximal invalid subpart (Unicode 3.9, "substitution of maximal
// subparts", what Python's errors="replace" and Rust's from_utf8_lossy do) becomes one U+FFFD. When !final, an
// incomplete but so far valid sequence at the end is left alone. Returns the number of bytes consumed.
size_t utf8_append_valid(std::string& out, std::string_view bytes, bool final);
std::string utf8_sanitize(std::string_view bytes);
bool utf8_is_valid(std::string_view bytes);
// Length of the UTF-8 sequence starting with lead byte c (1 for invalid lead bytes).
inline size_t utf8_seq_len(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}
void utf8_append_codepoint(std::string& out, uint32_t cp);

// A tokenizer.json feature that we do not implement. load_tokenizer falls back to tokenizer.model on it.
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// Special ids and the chat template live here so that load_tokenizer can apply tokenizer_config.json & co.
class TokenizerBase : public Tokenizer {
 public:
  int32_t bos_id() const override { return bos_; }
  std::vector<int32_t> eos_ids() const override { return eos_; }
  int32_t pad_id() const override { return pad_; }
  std::string chat_template() const override { return chat_template_; }
  // The id of a token given by its text as tokenizer_config.json writes it, or -1.
  virtual int32_t token_to_id(std::string_view text) const = 0;

  int32_t bos_ = -1;
  std::vector<int32_t> eos_;
  int32_t pad_ = -1;
  std::string chat_template_;
};

}  // namespace oar::tok
