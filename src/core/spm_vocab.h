// A SentencePiece vocabulary given as lists, as a GGUF file embeds it (tokenizer.ggml.* with model "llama"):
// io/gguf.h reads one, tokenizer/tokenizer.h encodes with it. Plain data, so that neither layer includes the other.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace oar {

struct SpmVocab {
  std::vector<std::string> pieces;  // "\u2581" for spaces, "<0xNN>" for byte fallback pieces
  std::vector<float> scores;
  std::vector<int32_t> types;  // 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte; empty: all 1
  int32_t bos = -1, unk = 0, pad = -1;
  std::vector<int32_t> eos;
  std::string chat_template;
};

}  // namespace oar
