// Text -> ids for training data. Special-token strings written in the text ("</s>", "<|eot_id|>") become their
// ids: Tokenizer::encode's rule (Hugging Face's default), shared with serve, predict, chat and preprocess, or, for
// fine-tuning data, PaddleNLP's, which also drops the whitespace around them (Tokenizer::encode_trimming_specials).
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace oar {

enum class SpecialTextRule {
  HuggingFace,  // Tokenizer::encode
  PaddleNLP,    // Tokenizer::encode_trimming_specials: what run_finetune.py's tokenizer does with the same text
};

class TextEncoder {
 public:
  explicit TextEncoder(const Tokenizer& tok, SpecialTextRule rule = SpecialTextRule::HuggingFace)
      : tok_(tok), rule_(rule) {}
  // add_bos prepends BOS when the tokenizer has one (PaddleNLP's add_special_tokens=True for Llama).
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const {
    return rule_ == SpecialTextRule::PaddleNLP ? tok_.encode_trimming_specials(text, add_bos) : tok_.encode(text, add_bos);
  }
  const Tokenizer& tokenizer() const { return tok_; }

 private:
  const Tokenizer& tok_;
  SpecialTextRule rule_;
};

}  // namespace oar
