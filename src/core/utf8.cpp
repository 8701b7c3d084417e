#include "core/utf8.h"

namespace oar {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// How many bytes starting at p[0] form a well-formed sequence, following Unicode Table 3-7. Returns the full
// length when complete, or -k when only the first k bytes are a valid prefix (k >= 1); *truncated tells whether
// that was because the input ended (the sequence might still complete) rather than a bad byte.
int utf8_check(const unsigned char* p, size_t n, bool* truncated = nullptr) {
  if (truncated) *truncated = false;
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    need = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return -1;  // continuation byte or never-valid lead
  }
  for (int i = 1; i < need; ++i) {
    if (size_t(i) >= n) {
      if (truncated) *truncated = true;
      return -i;
    }
    unsigned char b = p[i];
    bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return -i;
  }
  return need;
}
}  // namespace

size_t utf8_append_valid(std::string& out, std::string_view bytes, bool final) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    size_t run = i;  // copy runs of ASCII / valid sequences in one go
    int r;
    while (run < n && (r = utf8_check(p + run, n - run)) > 0) run += size_t(r);
    out.append(bytes.data() + i, run - i);
    i = run;
    if (i >= n) break;
    bool truncated;
    r = utf8_check(p + i, n - i, &truncated);
    if (truncated && !final) return i;  // a valid prefix cut off by the end: it may still complete
    size_t k = size_t(-r);
    out.append(kReplacement);
    i += k;
  }
  return i;
}

std::string utf8_sanitize(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  utf8_append_valid(out, bytes, true);
  return out;
}

bool utf8_is_valid(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    int r = utf8_check(p + i, bytes.size() - i);
    if (r < 0) return false;
    i += size_t(r);
  }
  return true;
}

void utf8_append_codepoint(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

uint32_t utf8_code_point(std::string_view s, size_t i, size_t& len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  auto cont = [&](size_t k) { return i + k < s.size() ? uint32_t(static_cast<unsigned char>(s[i + k]) & 0x3F) : 0u; };
  if (c < 0x80) { len = 1; return c; }
  if ((c >> 5) == 6) { len = 2; return (uint32_t(c & 0x1F) << 6) | cont(1); }
  if ((c >> 4) == 14) { len = 3; return (uint32_t(c & 0x0F) << 12) | (cont(1) << 6) | cont(2); }
  if ((c >> 3) == 30) { len = 4; return (uint32_t(c & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3); }
  len = 1;
  return c;
}

namespace {

bool py_isspace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Whether s[i..] starts with a well-formed whitespace character; sets len to its length. Stray, truncated or
// overlong bytes are not whitespace, so text that is not valid UTF-8 is never cut inside a sequence.
bool whitespace_at(std::string_view s, size_t i, size_t& len) {
  const uint32_t cp = utf8_code_point(s, i, len);
  if (i + len > s.size() || len != (cp < 0x80 ? 1u : cp < 0x800 ? 2u : cp < 0x10000 ? 3u : 4u)) return false;
  for (size_t k = 1; k < len; k++)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
  return py_isspace(cp);
}

}  // namespace

std::string_view python_lstrip(std::string_view text) {
  size_t b = 0, len;
  while (b < text.size() && whitespace_at(text, b, len)) b += len;
  return text.substr(b);
}

std::string_view python_rstrip(std::string_view text) {
  size_t e = text.size(), len;
  while (e > 0) {
    size_t k = e - 1;  // back to the lead byte of the last character
    while (k > 0 && e - k < 4 && (static_cast<unsigned char>(text[k]) & 0xC0) == 0x80) k--;
    if (!whitespace_at(text, k, len) || k + len != e) break;
    e = k;
  }
  return text.substr(0, e);
}

std::string_view python_strip(std::string_view text) { return python_rstrip(python_lstrip(text)); }

}  // namespace oar
