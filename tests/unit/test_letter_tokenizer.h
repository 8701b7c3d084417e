// The model fixtures have no tokenizer: for the engine and API tests token i reads as one letter, ids 0-2 are
// special (2 = EOS by default).
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace oar::test {

class LetterTokenizer : public Tokenizer {
 public:
  explicit LetterTokenizer(std::vector<int32_t> eos = {2}) : eos_(std::move(eos)) {}
  std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
  std::string token_bytes(int32_t id, bool) const override { return is_special(id) ? "" : std::string(1, char('a' + id % 26)); }
  int32_t vocab_size() const override { return 256; }
  int32_t bos_id() const override { return 1; }
  std::vector<int32_t> eos_ids() const override { return eos_; }
  std::string id_to_piece(int32_t id) const override { return token_bytes(id, false); }
  bool is_special(int32_t id) const override { return id < 3 || std::find(eos_.begin(), eos_.end(), id) != eos_.end(); }
  std::string kind() const override { return "letters"; }

 private:
  std::vector<int32_t> eos_;
};

}  // namespace oar::test
