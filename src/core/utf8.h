// UTF-8 checks and repairs shared by the tokenizers, the chat templates and the server.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace oar {

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
// Decodes the code point at s[i] (s should be valid UTF-8; a stray byte decodes as itself); sets len.
uint32_t utf8_code_point(std::string_view s, size_t i, size_t& len);
// Python's str.strip() / lstrip() / rstrip() with no argument: Unicode whitespace (str.isspace) removed from both
// ends / the start / the end of valid UTF-8 text.
std::string_view python_strip(std::string_view text);
std::string_view python_lstrip(std::string_view text);
std::string_view python_rstrip(std::string_view text);

}  // namespace oar
