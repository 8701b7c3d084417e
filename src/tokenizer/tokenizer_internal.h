// Pieces shared by the tokenizer implementations (not part of the public API).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

namespace oar::tok {


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
