// Text -> ids for training data. Special-token strings written in the text ("</s>", "<|eot_id|>") become their
// ids: that is Tokenizer::encode's one rule (Hugging Face's default), shared with serve, predict and chat.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace oar {

class TextEncoder {
 public:
  explicit TextEncoder(const Tokenizer& tok) : tok_(tok) {}
  // add_bos prepends BOS when the tokenizer has one (PaddleNLP's add_special_tokens=True for Llama).
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const { return tok_.encode(text, add_bos); }
  const Tokenizer& tokenizer() const { return tok_; }

 private:
  const Tokenizer& tok_;
};

}  // namespace oar
