// Pieces shared by the tokenizer implementations (not part of the public API).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
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

  // Special tokens that text spelling them out encodes to, longest first. This is the one place that decides it,
  // for every caller (serve, predict, preprocess, chat): as Hugging Face tokenizers do by default
  // (split_special_tokens=False), text such as "<s>" becomes that token. tokenizer.json matches its own added
  // tokens; tokenizer.model and tokenizer.bin the unk, bos and eos tokens (LlamaTokenizerFast's added tokens).
  std::vector<std::pair<std::string, int32_t>> literal_specials_;
  std::array<bool, 256> literal_first_{};  // bytes that start some literal special
  void add_literal_special(std::string text, int32_t id);
  // Encodes text split at the literal specials: each special as its id, each part between them on its own
  // through encode_part (so each part gets its own dummy prefix, as HF's legacy Llama tokenizer gives it).
  // trim_specials: Python's rstrip() on the part before each special and lstrip() on the part after it, and parts
  // left empty are skipped (PaddleNLP's slow tokenizer; see Tokenizer::encode_trimming_specials).
  std::vector<int32_t> encode_split(std::string_view text, bool add_bos,
                                    const std::function<void(std::string_view, std::vector<int32_t>&)>& encode_part,
                                    bool trim_specials = false) const;
  // encode_trimming_specials for an implementation whose encode() splits with encode_split: each part between
  // specials holds none, so encode() encodes it whole.
  std::vector<int32_t> encode_parts_trimmed(std::string_view text, bool add_bos) const;

  int32_t bos_ = -1;
  std::vector<int32_t> eos_;
  int32_t pad_ = -1;
  std::string chat_template_;
};

}  // namespace oar::tok
