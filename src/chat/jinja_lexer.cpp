// The lexer of the Jinja subset: template text to tokens, applying Jinja's whitespace rules (trim_blocks,
// lstrip_blocks, - and + markers) exactly as jinja2's lexer does.
#include <charconv>
#include <cstring>

#include "chat/jinja_internal.h"
#include "core/utf8.h"

namespace oar::jinja::detail {
namespace {

bool is_py_space_byte(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == ' ' || (u >= 0x09 && u <= 0x0D) || (u >= 0x1C && u <= 0x1F);
}

// Python's str.rstrip() / whitespace-only check on the template text (ASCII and Unicode spaces).
std::string rstrip_ws(const std::string& s) { return py_strip(s, false, true); }
bool all_ws(std::string_view s) { return !s.empty() && py_strip(s, true, true).empty(); }

// The n hex digits after body[i] (the escape letter) as a code point; i is left on the last digit.
uint32_t hex_escape(std::string_view body, size_t& i, size_t n, int line) {
  uint32_t v = 0;
  for (size_t k = 1; k <= n; k++) {
    if (i + k >= body.size()) syntax_error(line, "truncated escape in string");
    char h = body[i + k];
    int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
    if (d < 0) syntax_error(line, "truncated escape in string");
    v = v * 16 + uint32_t(d);
  }
  i += n;
  return v;
}

// The character a one-letter escape (\n, \t, \\, ...) stands for; 0 when `e` is not one of them.
char simple_escape(char e) {
  switch (e) {
    case '\\': return '\\';
    case '\'': return '\'';
    case '"': return '"';
    case 'a': return '\a';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'v': return '\v';
    default: return 0;
  }
}

// The escape whose letter is body[i] (after its backslash), appended to out; i is left on its last character.
void append_escape(std::string_view body, size_t& i, int line, std::string& out) {
  const char e = body[i];
  if (e == '\n') return;  // line continuation
  if (char c = simple_escape(e)) {
    out += c;
    return;
  }
  switch (e) {
    case 'x': utf8_append_codepoint(out, hex_escape(body, i, 2, line)); return;
    case 'u': utf8_append_codepoint(out, hex_escape(body, i, 4, line)); return;
    case 'U': {
      uint32_t cp = hex_escape(body, i, 8, line);
      if (cp > 0x10FFFF) syntax_error(line, "illegal Unicode character in string");
      utf8_append_codepoint(out, cp);
      return;
    }
    case 'N': syntax_error(line, "\\N{...} escapes are not supported");
    default: break;
  }
  if (e >= '0' && e <= '7') {  // octal, up to three digits
    uint32_t v = uint32_t(e - '0');
    for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; k++)
      v = v * 8 + uint32_t(body[++i] - '0');
    utf8_append_codepoint(out, v);
  } else {  // unknown escapes keep their backslash, as Python does
    out += '\\';
    out += e;
  }
}

// Jinja string literal: the body between the quotes, unescaped as Python's "unicode-escape" codec does.
std::string unescape(std::string_view body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); i++) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    ++i;
    append_escape(body, i, line, out);
  }
  return out;
}

// Newlines normalized to \n and one trailing newline dropped (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view in) {
  std::string src;
  src.reserve(in.size());
  for (size_t i = 0; i < in.size(); i++) {
    if (in[i] == '\r') {
      src += '\n';
      if (i + 1 < in.size() && in[i + 1] == '\n') i++;
    } else {
      src += in[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return src;
}

class Lexer {
 public:
  explicit Lexer(std::string_view in) : src_(normalize_newlines(in)), n_(src_.size()) {}

  std::vector<Token> run() {
    while (pos_ < n_) {
      const size_t start = next_tag();
      if (start == std::string::npos) {
        toks_.push_back({Tok::Data, src_.substr(pos_), line_});
        break;
      }
      const char kind = src_[start + 1];
      size_t p = start + 2;
      char sign = 0;
      if (p < n_ && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      text_before(start, kind, sign);
      if (kind == '#') comment(p);
      else tag(kind, p);
    }
    toks_.push_back({Tok::Eof, "", line_});
    return std::move(toks_);
  }

 private:
  std::string src_;
  const size_t n_;
  std::vector<Token> toks_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;  // the previous match ended with a newline (lstrip_blocks may apply)

  void count_lines(size_t a, size_t b) {
    for (size_t k = a; k < b; k++)
      if (src_[k] == '\n') line_++;
  }
  size_t skip_ws(size_t p) const {
    while (p < n_ && is_py_space_byte(src_[p])) p++;
    return p;
  }
  bool digit(size_t k) const { return k < n_ && src_[k] >= '0' && src_[k] <= '9'; }
  // Where the next {{, {% or {# opens, or npos.
  size_t next_tag() const {
    for (size_t k = pos_; k + 1 < n_; k++)
      if (src_[k] == '{' && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    return std::string::npos;
  }
  // The template text before a tag, with the tag's whitespace control applied: `-` strips it on the right,
  // lstrip_blocks strips the spaces that begin the tag's line (blocks and comments, not {{ }}), `+` keeps it.
  void text_before(size_t start, char kind, char sign) {
    std::string text = src_.substr(pos_, start - pos_);
    const int text_line = line_;
    count_lines(pos_, start);
    if (sign == '-') {
      text = rstrip_ws(text);
    } else if (sign != '+' && kind != '{') {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && all_ws(std::string_view(text).substr(l_pos))) text.resize(l_pos);
    }
    if (!text.empty()) toks_.push_back({Tok::Data, text, text_line});
  }
  // {# ... #}: skipped, with trim_blocks or `-` after it.
  void comment(size_t p) {
    size_t e = src_.find("#}", p);
    if (e == std::string::npos) syntax_error(line_, "missing end of comment tag");
    char esign = (e > p && (src_[e - 1] == '-' || src_[e - 1] == '+')) ? src_[e - 1] : 0;
    size_t after = e + 2;
    if (esign == '-') after = skip_ws(after);
    else if (esign == 0 && after < n_ && src_[after] == '\n') after++;  // trim_blocks
    count_lines(p, after);
    line_starting_ = src_[after - 1] == '\n';
    pos_ = after;
  }
  // {{ ... }} or {% ... %}: the tokens up to the closing marker (outside brackets).
  void tag(char kind, size_t p) {
    toks_.push_back({kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", line_});
    std::vector<char> brackets;
    for (;;) {
      size_t q = skip_ws(p);
      count_lines(p, q);
      p = q;
      if (p >= n_)
        syntax_error(line_, std::string("unexpected end of template, expected '") + (kind == '{' ? "}}" : "%}") + "'");
      if (brackets.empty()) {
        size_t end = tag_end(kind, p);
        if (end != std::string::npos) {
          toks_.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, "", line_});
          count_lines(p, end);
          line_starting_ = src_[end - 1] == '\n';
          pos_ = end;
          return;
        }
      }
      const char c = src_[p];
      if (ascii_alpha(c) || c == '_') p = name(p);
      else if (c >= '0' && c <= '9') p = number(p);
      else if (c == '\'' || c == '"') p = string_literal(p);
      else p = op(p, brackets);
    }
  }
  // Where the text after a closing marker at p begins (with `-` and trim_blocks applied), or npos.
  size_t tag_end(char kind, size_t p) const {
    if (kind == '%') {
      if (src_.compare(p, 3, "+%}") == 0) return p + 3;
      if (src_.compare(p, 3, "-%}") == 0) return skip_ws(p + 3);
      if (src_.compare(p, 2, "%}") == 0) return (p + 2 < n_ && src_[p + 2] == '\n') ? p + 3 : p + 2;
    } else {
      if (src_.compare(p, 3, "-}}") == 0) return skip_ws(p + 3);
      if (src_.compare(p, 2, "}}") == 0) return p + 2;
    }
    return std::string::npos;
  }
  size_t name(size_t p) {
    size_t e = p;
    while (e < n_ && (ascii_alpha(src_[e]) || src_[e] == '_' || digit(e))) e++;
    toks_.push_back({Tok::Name, src_.substr(p, e - p), line_});
    return e;
  }
  // Digits with single underscores between them.
  size_t digits(size_t k) const {
    while (digit(k) || (k < n_ && src_[k] == '_' && digit(k + 1))) k++;
    return k;
  }
  size_t number(size_t p) {
    size_t e = digits(p);
    bool is_float = false;
    if (e + 1 < n_ && src_[e] == '.' && digit(e + 1)) {
      e = digits(e + 1);
      is_float = true;
    }
    if (e < n_ && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t k = e + 1;
      if (k < n_ && (src_[k] == '+' || src_[k] == '-')) k++;
      if (digit(k)) {
        e = digits(k);
        is_float = true;
      }
    }
    std::string num;
    for (size_t k = p; k < e; k++)
      if (src_[k] != '_') num += src_[k];
    Token t{is_float ? Tok::Float : Tok::Int, num, line_};
    if (is_float) {
      t.fval = std::strtod(num.c_str(), nullptr);
    } else {
      auto r = std::from_chars(num.data(), num.data() + num.size(), t.ival);
      if (r.ec != std::errc()) syntax_error(line_, "integer literal " + num + " is too large");
    }
    toks_.push_back(t);
    return e;
  }
  size_t string_literal(size_t p) {
    const char quote = src_[p];
    size_t e = p + 1;
    while (e < n_ && src_[e] != quote) e += src_[e] == '\\' ? 2 : 1;
    if (e >= n_) syntax_error(line_, "unterminated string literal");
    toks_.push_back({Tok::String, unescape(std::string_view(src_).substr(p + 1, e - p - 1), line_), line_});
    count_lines(p, e);
    return e + 1;
  }
  // An operator; brackets must pair up within the tag.
  size_t op(size_t p, std::vector<char>& brackets) {
    static const char* const kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
    const char c = src_[p];
    std::string o;
    for (const char* two : kOps2)
      if (src_.compare(p, 2, two) == 0) o = two;
    if (o.empty()) {
      if (!std::strchr("+-/*%~[](){}<>=.:|,", c)) syntax_error(line_, std::string("unexpected character '") + c + "'");
      o = std::string(1, c);
    }
    if (o == "(" || o == "[" || o == "{") {
      brackets.push_back(o == "(" ? ')' : o == "[" ? ']' : '}');
    } else if (o == ")" || o == "]" || o == "}") {
      if (brackets.empty()) syntax_error(line_, "unexpected '" + o + "'");
      if (brackets.back() != o[0]) syntax_error(line_, "unexpected '" + o + "', expected '" + brackets.back() + "'");
      brackets.pop_back();
    }
    toks_.push_back({Tok::Op, o, line_});
    return p + o.size();
  }
};

}  // namespace

std::vector<Token> lex(std::string_view source) { return Lexer(source).run(); }

}  // namespace oar::jinja::detail
