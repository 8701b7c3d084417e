// Text -> ids as PaddleNLP's tokenizers produce them for training data: special-token strings written in the
// text ("</s>", "<|eot_id|>") become their ids instead of being spelled out. tokenizer.json already does this;
// for tokenizer.model the text is split on the control pieces (<s>, </s>, ...) and each part encoded on its own,
// as the slow Hugging Face / PaddleNLP Llama tokenizer does.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace oar {

class TextEncoder {
 public:
  explicit TextEncoder(const Tokenizer& tok);
  // add_bos prepends BOS when the tokenizer has one (PaddleNLP's add_special_tokens=True for Llama).
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const;
  const Tokenizer& tokenizer() const { return tok_; }

 private:
  const Tokenizer& tok_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // longest first, so "<s>" never shadows a longer one
  std::array<bool, 256> first_byte_{};                     // bytes that start some special piece
};

}  // namespace oar
