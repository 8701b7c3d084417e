// libFuzzer target: arbitrary bytes as a tokenizer.json. Loading must either succeed or throw oar::Error (any
// other exception, crash, sanitizer report or leak is a bug); a tokenizer that loads must encode a few texts
// (and the input itself), decode them to valid UTF-8 and stream-decode them to the same text.
//   seed corpus: fuzz/corpus/tokenizer_json/
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || (len == 2 && c < 0xC2) || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

void exercise(const oar::Tokenizer& tok, std::string_view text) {
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text, true);
  } catch (const oar::Error&) {
    return;  // e.g. a hostile regex hit PCRE2's match limit
  }
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
  std::string whole = tok.decode(ids);
  if (!valid_utf8(whole)) __builtin_trap();
  oar::StreamDecoder sd(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += sd.push(id);
  streamed += sd.flush();
  if (streamed != whole) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<oar::Tokenizer> tok;
  try {
    tok = oar::parse_bpe_json(input, "fuzz/tokenizer.json");
  } catch (const oar::Error& e) {
    if (std::strchr(e.what(), '\n')) __builtin_trap();  // errors are one line for the CLI
    return 0;
  }
  static const char* const kTexts[] = {
      "",
      "Hello world, I'll say DON'T 12345678",
      "  leading\tand\r\nnew  lines \n\n",
      "\xE7\xB1\xBB\xE5\x9E\x8B#\xE8\xA3\x99 \xF0\x9F\xA6\x99\xF0\x9F\x8E\x89",  // 类型#裙 🦙🎉
      "<|begin_of_text|>a<|eot_id|>b<|end_of_text|>",
      "bad \xFF\xFE utf-8 \xC3 \xE4\xB8",
  };
  for (const char* t : kTexts) exercise(*tok, t);
  exercise(*tok, input.substr(0, 512));
  for (int32_t id = -1; id <= tok->vocab_size() && id < 4096; ++id) {
    (void)tok->token_bytes(id, true);
    (void)tok->id_to_piece(id);
    (void)tok->is_special(id);
  }
  return 0;
}
