#include "data/text_encoder.h"

#include <algorithm>

namespace oar {

TextEncoder::TextEncoder(const Tokenizer& tok) : tok_(tok) {
  if (tok.kind() != "sentencepiece") return;  // tokenizer.json matches special tokens itself; llama2.c never did
  for (int32_t id = 0; id < tok.vocab_size(); id++) {
    if (!tok.is_special(id)) continue;
    std::string piece = tok.id_to_piece(id);
    if (!piece.empty()) specials_.emplace_back(std::move(piece), id);
  }
  for (const auto& s : specials_) first_byte_[static_cast<unsigned char>(s.first[0])] = true;
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

std::vector<int32_t> TextEncoder::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && tok_.bos_id() >= 0) out.push_back(tok_.bos_id());
  if (specials_.empty()) {
    std::vector<int32_t> ids = tok_.encode(text, false);
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }
  size_t start = 0, pos = 0;
  auto flush = [&](size_t end) {
    if (end > start) {
      std::vector<int32_t> ids = tok_.encode(text.substr(start, end - start), false);
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  while (pos < text.size()) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    if (first_byte_[static_cast<unsigned char>(text[pos])])  // cheap pre-check before comparing strings
      for (const auto& s : specials_)
        if (text.compare(pos, s.first.size(), s.first) == 0) {
          hit = &s;
          break;
        }
    if (!hit) {
      pos++;
      continue;
    }
    flush(pos);
    out.push_back(hit->second);
    pos += hit->first.size();
    start = pos;
  }
  flush(text.size());
  return out;
}

}  // namespace oar
