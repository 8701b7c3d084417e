// The Jinja2 subset of jinja.h: a lexer that applies Jinja's whitespace rules (trim_blocks, lstrip_blocks,
// - and + markers) exactly as jinja2's lexer does, a recursive-descent parser with Jinja's operator
// precedence, and a tree-walking evaluator with Python's value semantics.
#include "chat/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <ctime>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>

#include "core/utf8.h"

namespace oar::jinja {

// ------------------------------------------------------------------------------------------------ UTF-8 helpers
namespace {

// Byte length of the UTF-8 sequence starting at s[i] (1 for a stray byte: strings stay walkable).
size_t u8len(std::string_view s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + n > s.size()) return 1;
  for (size_t k = 1; k < n; k++)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

uint32_t u8decode(std::string_view s, size_t i, size_t n) {
  auto c = static_cast<unsigned char>(s[i]);
  if (n == 1) return c;
  uint32_t cp = c & (0x7F >> n);
  for (size_t k = 1; k < n; k++) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

// The code points of s, each as its byte substring (Python indexes, slices and iterates strings by code point).
std::vector<std::string_view> code_points(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    size_t n = u8len(s, i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// len() of a string: its code points, counted without listing them.
size_t code_point_count(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += u8len(s, i)) n++;
  return n;
}

// Python's str.isspace() (the set str.strip() and regex \s use).
bool py_space(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// str.strip / lstrip / rstrip; `chars` empty means whitespace. One walk over the code points: the result runs
// from the first kept one to the end of the last kept one.
std::string py_strip(std::string_view s, bool left, bool right, const std::string* chars = nullptr) {
  std::vector<std::string_view> strip_set;
  if (chars) strip_set = code_points(*chars);
  auto strip_me = [&](std::string_view cp) {
    if (chars) return std::find(strip_set.begin(), strip_set.end(), cp) != strip_set.end();
    return py_space(u8decode(cp, 0, cp.size()));
  };
  size_t b = std::string_view::npos, e = 0;
  for (size_t i = 0; i < s.size();) {
    size_t n = u8len(s, i);
    if (!strip_me(s.substr(i, n))) {
      if (b == std::string_view::npos) b = i;
      e = i + n;
    }
    i += n;
  }
  if (b == std::string_view::npos) return "";  // every code point strippable: nothing is left either way
  return std::string(s.substr(left ? b : 0, (right ? e : s.size()) - (left ? b : 0)));
}

std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}
std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return s;
}
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Python's repr() of a float: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16.
std::string py_float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // e.g. "-1.2345e+17", "5e-05"
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  int exp10 = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (size_t i = 0; i < epos; i++)
    if (sci[i] != '.') digits += sci[i];
  std::string out = neg ? "-" : "";
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 < 0) {
      out += "0." + std::string(size_t(-exp10 - 1), '0') + digits;
    } else {
      size_t int_digits = size_t(exp10) + 1;
      if (digits.size() <= int_digits) {
        out += digits + std::string(int_digits - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_digits) + "." + digits.substr(int_digits);
      }
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += e;
  }
  return out;
}

std::string py_str_repr(const std::string& s) {
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size();) {
    size_t n = u8len(s, i);
    uint32_t c = u8decode(s, i, n);
    if (c == uint32_t(q) || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || (c >= 0x7F && c < 0xA0)) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", unsigned(c));
      out += b;
    } else {
      out.append(s, i, n);
    }
    i += n;
  }
  out += q;
  return out;
}

// json.dumps(x, ensure_ascii=False) string escaping, as Hugging Face's tojson filter produces it.
std::string json_str(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", unsigned(c));
          out += b;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

// The budget of the render running on this thread (RenderLimits), reachable from the value helpers below;
// null outside a render (Value::repr() called by other code is unbounded, as its values are).
class Budget {
 public:
  explicit Budget(const RenderLimits& limits) : lim_(limits) {}

  int line = 0;  // the statement or expression being evaluated, for error messages

  void step(int64_t n = 1) {
    steps_ += n;
    if (steps_ > lim_.max_steps)
      exceeded("more than " + std::to_string(lim_.max_steps) + " evaluation steps (a loop that does not end?)");
    if (steps_ >= next_poll_) poll();
  }
  // Text read or written by a builtin: its time is charged as steps.
  void bytes(size_t n) { step(int64_t(n / RenderLimits::kBytesPerStep)); }
  void check_string(size_t n) {
    if (n > lim_.max_string_bytes)
      exceeded("a string of more than " + std::to_string(lim_.max_string_bytes) + " bytes");
  }
  void check_items(uint64_t n) {
    if (n > lim_.max_list_items)
      exceeded("a list of more than " + std::to_string(lim_.max_list_items) + " items");
  }
  size_t max_string_bytes() const { return lim_.max_string_bytes; }
  size_t max_list_items() const { return lim_.max_list_items; }

 private:
  static constexpr int64_t kPollEvery = 4096;  // steps between two cancellation checks (well under 1 ms)
  [[noreturn]] void exceeded(const std::string& what) const {
    throw RenderLimitExceeded("chat template: line " + std::to_string(line) + ": render budget exceeded: " + what);
  }
  void poll() {
    next_poll_ = steps_ + kPollEvery;
    if (lim_.cancelled && lim_.cancelled()) throw RenderCancelled("chat template: the render was cancelled");
  }
  const RenderLimits& lim_;
  int64_t steps_ = 0, next_poll_ = kPollEvery;
};
thread_local Budget* active_budget = nullptr;

// Builders that loop check as they grow, so that a result far over the limit is never built.
void check_growing_string(size_t n) {
  if (active_budget) active_budget->check_string(n);
}
void check_growing_list(size_t n) {
  if (active_budget) active_budget->check_items(n);
}

// Makes `b` this thread's budget for the lifetime of the guard.
class ActiveBudget {
 public:
  explicit ActiveBudget(Budget& b) : prev_(active_budget) { active_budget = &b; }
  ~ActiveBudget() { active_budget = prev_; }
  ActiveBudget(const ActiveBudget&) = delete;
  ActiveBudget& operator=(const ActiveBudget&) = delete;

 private:
  Budget* prev_;
};

// Values nest only as deep as templates build them (namespace attributes can be grown in a loop); printing,
// comparing or serializing them recurses, so the depth is bounded. Each visit is a step of the budget: shared
// lists make a value's tree far bigger than the memory it takes.
class ValueDepth {
 public:
  ValueDepth() {
    if (++depth_ > 512) {
      --depth_;
      throw TemplateError("chat template: a value is nested too deeply");
    }
    if (active_budget) {
      try {
        active_budget->step();
      } catch (...) {
        --depth_;
        throw;
      }
    }
  }
  ~ValueDepth() { --depth_; }

 private:
  static thread_local int depth_;
};
thread_local int ValueDepth::depth_ = 0;

// Lists and dicts can nest as deep as a loop makes them ([x] wrapped 100,000 times), deeper than a recursive
// destructor could go: a container whose last owner lets go is freed here, its nested containers queued and
// freed one after another instead of from inside each other's destructors.
struct Graveyard {
  std::vector<List*> lists;
  std::vector<Dict*> dicts;
  bool freeing = false;
};
thread_local Graveyard graveyard;

template <class T>
void bury(T* p) {
  Graveyard& g = graveyard;
  if constexpr (std::is_same_v<T, List>) g.lists.push_back(p);
  else g.dicts.push_back(p);
  if (g.freeing) return;  // an outer bury() frees it
  g.freeing = true;
  while (!g.lists.empty() || !g.dicts.empty()) {
    if (!g.lists.empty()) {
      List* l = g.lists.back();
      g.lists.pop_back();
      delete l;
    } else {
      Dict* d = g.dicts.back();
      g.dicts.pop_back();
      delete d;
    }
  }
  g.freeing = false;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ Value
Value::Value(List l) : v_(ListPtr(new List(std::move(l)), bury<List>)) {}
Value::Value(Dict d) : v_(DictPtr(new Dict(std::move(d)), bury<Dict>)) {}

const Value* Dict::find(std::string_view key) const {
  for (auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}
Value* Dict::find(std::string_view key) {
  for (auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}
void Dict::set(const std::string& key, Value v) {
  if (Value* p = find(key)) *p = std::move(v);
  else items.emplace_back(key, std::move(v));
}

Value Value::from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return none();
    case nlohmann::json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return j.get<uint64_t>() <= uint64_t(INT64_MAX) ? Value(int64_t(j.get<uint64_t>())) : Value(j.get<double>());
    case nlohmann::json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (auto& e : j) l.push_back(from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto& [k, v] : j.items()) d.items.emplace_back(k, from_json(v));
      return Value(std::move(d));
    }
    default: return undefined();
  }
}

bool Value::truthy() const {
  if (is_undefined() || is_none()) return false;
  if (is_bool()) return as_bool();
  if (is_int()) return as_int() != 0;
  if (is_float()) return as_float() != 0.0;
  if (is_string()) return !as_string().empty();
  if (is_list()) return !as_list().empty();
  return !as_dict().items.empty() || as_dict().is_namespace;
}

std::string Value::str() const {
  if (is_undefined()) return "";
  if (is_string()) return as_string();
  return repr();
}

namespace {

// repr() appended to `out`, within the render's string budget (shared lists can make a short value print long).
void repr_into(const Value& v, std::string& out) {
  ValueDepth guard;
  if (v.is_undefined()) out += "Undefined";
  else if (v.is_none()) out += "None";
  else if (v.is_bool()) out += v.as_bool() ? "True" : "False";
  else if (v.is_int()) out += std::to_string(v.as_int());
  else if (v.is_float()) out += py_float_repr(v.as_float());
  else if (v.is_string()) out += py_str_repr(v.as_string());
  else if (v.is_list()) {
    out += "[";
    const List& l = v.as_list();
    for (size_t i = 0; i < l.size(); i++) {
      if (i) out += ", ";
      repr_into(l[i], out);
    }
    out += "]";
  } else if (v.as_dict().is_namespace) {
    out += "<Namespace>";
  } else {
    const Dict& d = v.as_dict();
    out += "{";
    for (size_t i = 0; i < d.items.size(); i++) {
      out += (i ? ", " : "") + py_str_repr(d.items[i].first) + ": ";
      repr_into(d.items[i].second, out);
    }
    out += "}";
  }
  if (active_budget) active_budget->check_string(out.size());
}

}  // namespace

std::string Value::repr() const {
  std::string out;
  repr_into(*this, out);
  return out;
}

std::string Value::type_name() const {
  if (is_undefined()) return "Undefined";
  if (is_none()) return "NoneType";
  if (is_bool()) return "bool";
  if (is_int()) return "int";
  if (is_float()) return "float";
  if (is_string()) return "str";
  if (is_list()) return "list";
  return as_dict().is_namespace ? "Namespace" : "dict";
}

// ------------------------------------------------------------------------------------------------ lexer
namespace {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // data, name, operator, or the unescaped string
  int line = 1;
  int64_t ival = 0;
  double fval = 0;
};

[[noreturn]] void syntax_error(int line, const std::string& what) {
  throw TemplateError("chat template: line " + std::to_string(line) + ": " + what);
}

bool is_py_space_byte(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == ' ' || (u >= 0x09 && u <= 0x0D) || (u >= 0x1C && u <= 0x1F);
}

// Python's str.rstrip() / whitespace-only check on the template text (ASCII and Unicode spaces).
std::string rstrip_ws(const std::string& s) { return py_strip(s, false, true); }
bool all_ws(std::string_view s) { return !s.empty() && py_strip(s, true, true).empty(); }

// Jinja string literal: the body between the quotes, unescaped as Python's "unicode-escape" codec does.
std::string unescape(std::string_view body, int line) {
  std::string out;
  for (size_t i = 0; i < body.size(); i++) {
    char c = body[i];
    if (c != '\\' || i + 1 >= body.size()) {
      out += c;
      continue;
    }
    char e = body[++i];
    auto hex = [&](size_t n) -> uint32_t {
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
    };
    switch (e) {
      case '\n': break;  // line continuation
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': utf8_append_codepoint(out, hex(2)); break;
      case 'u': utf8_append_codepoint(out, hex(4)); break;
      case 'U': {
        uint32_t cp = hex(8);
        if (cp > 0x10FFFF) syntax_error(line, "illegal Unicode character in string");
        utf8_append_codepoint(out, cp);
        break;
      }
      case 'N': syntax_error(line, "\\N{...} escapes are not supported");
      default:
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
  }
  return out;
}

std::vector<Token> lex(std::string_view in) {
  // Newlines normalized to \n and one trailing newline dropped (keep_trailing_newline=False).
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

  std::vector<Token> toks;
  const size_t n = src.size();
  size_t pos = 0;
  int line = 1;
  bool line_starting = true;  // the previous match ended with a newline (lstrip_blocks may apply)
  auto count_lines = [&](size_t a, size_t b) {
    for (size_t k = a; k < b; k++)
      if (src[k] == '\n') line++;
  };
  auto skip_ws = [&](size_t p) {
    while (p < n && is_py_space_byte(src[p])) p++;
    return p;
  };
  while (pos < n) {
    size_t start = std::string::npos;
    for (size_t k = pos; k + 1 < n; k++) {
      if (src[k] == '{' && (src[k + 1] == '{' || src[k + 1] == '%' || src[k + 1] == '#')) {
        start = k;
        break;
      }
    }
    if (start == std::string::npos) {
      toks.push_back({Tok::Data, src.substr(pos), line});
      break;
    }
    const char kind = src[start + 1];
    size_t p = start + 2;
    char sign = 0;
    if (p < n && (src[p] == '-' || src[p] == '+')) sign = src[p++];
    std::string text = src.substr(pos, start - pos);
    const int text_line = line;
    count_lines(pos, start);
    if (sign == '-') {
      text = rstrip_ws(text);
    } else if (sign != '+' && kind != '{') {  // lstrip_blocks: blocks and comments, not {{ }}
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting) && all_ws(std::string_view(text).substr(l_pos))) text.resize(l_pos);
    }
    if (!text.empty()) toks.push_back({Tok::Data, text, text_line});

    if (kind == '#') {
      size_t e = src.find("#}", p);
      if (e == std::string::npos) syntax_error(line, "missing end of comment tag");
      char esign = (e > p && (src[e - 1] == '-' || src[e - 1] == '+')) ? src[e - 1] : 0;
      size_t after = e + 2;
      if (esign == '-') after = skip_ws(after);
      else if (esign == 0 && after < n && src[after] == '\n') after++;  // trim_blocks
      count_lines(p, after);
      line_starting = src[after - 1] == '\n';
      pos = after;
      continue;
    }

    toks.push_back({kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "", line});
    std::vector<char> brackets;
    for (;;) {
      size_t q = skip_ws(p);
      count_lines(p, q);
      p = q;
      if (p >= n) syntax_error(line, std::string("unexpected end of template, expected '") + (kind == '{' ? "}}" : "%}") + "'");
      if (brackets.empty()) {
        size_t end = std::string::npos;
        if (kind == '%') {
          if (src.compare(p, 3, "+%}") == 0) end = p + 3;
          else if (src.compare(p, 3, "-%}") == 0) end = skip_ws(p + 3);
          else if (src.compare(p, 2, "%}") == 0) end = (p + 2 < n && src[p + 2] == '\n') ? p + 3 : p + 2;
        } else {
          if (src.compare(p, 3, "-}}") == 0) end = skip_ws(p + 3);
          else if (src.compare(p, 2, "}}") == 0) end = p + 2;
        }
        if (end != std::string::npos) {
          toks.push_back({kind == '{' ? Tok::VarEnd : Tok::BlockEnd, "", line});
          count_lines(p, end);
          line_starting = src[end - 1] == '\n';
          pos = end;
          break;
        }
      }
      const char c = src[p];
      if (ascii_alpha(c) || c == '_') {
        size_t e = p;
        while (e < n && (ascii_alpha(src[e]) || src[e] == '_' || (src[e] >= '0' && src[e] <= '9'))) e++;
        toks.push_back({Tok::Name, src.substr(p, e - p), line});
        p = e;
      } else if (c >= '0' && c <= '9') {
        size_t e = p;
        auto digits = [&](size_t k) {
          while (k < n && ((src[k] >= '0' && src[k] <= '9') || (src[k] == '_' && k + 1 < n && src[k + 1] >= '0' && src[k + 1] <= '9'))) k++;
          return k;
        };
        e = digits(p);
        bool is_float = false;
        if (e + 1 < n && src[e] == '.' && src[e + 1] >= '0' && src[e + 1] <= '9') {
          e = digits(e + 1);
          is_float = true;
        }
        if (e < n && (src[e] == 'e' || src[e] == 'E')) {
          size_t k = e + 1;
          if (k < n && (src[k] == '+' || src[k] == '-')) k++;
          if (k < n && src[k] >= '0' && src[k] <= '9') {
            e = digits(k);
            is_float = true;
          }
        }
        std::string num;
        for (size_t k = p; k < e; k++)
          if (src[k] != '_') num += src[k];
        Token t{is_float ? Tok::Float : Tok::Int, num, line};
        if (is_float) {
          t.fval = std::strtod(num.c_str(), nullptr);
        } else {
          auto r = std::from_chars(num.data(), num.data() + num.size(), t.ival);
          if (r.ec != std::errc()) syntax_error(line, "integer literal " + num + " is too large");
        }
        toks.push_back(t);
        p = e;
      } else if (c == '\'' || c == '"') {
        size_t e = p + 1;
        while (e < n && src[e] != c) e += src[e] == '\\' ? 2 : 1;
        if (e >= n) syntax_error(line, "unterminated string literal");
        toks.push_back({Tok::String, unescape(std::string_view(src).substr(p + 1, e - p - 1), line), line});
        count_lines(p, e);
        p = e + 1;
      } else {
        static const char* const kOps2[] = {"//", "**", "==", "!=", ">=", "<="};
        std::string op;
        for (const char* o : kOps2)
          if (src.compare(p, 2, o) == 0) op = o;
        if (op.empty()) {
          if (!std::strchr("+-/*%~[](){}<>=.:|,", c)) syntax_error(line, std::string("unexpected character '") + c + "'");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") {
          brackets.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (brackets.empty()) syntax_error(line, "unexpected '" + op + "'");
          if (brackets.back() != op[0]) syntax_error(line, "unexpected '" + op + "', expected '" + brackets.back() + "'");
          brackets.pop_back();
        }
        toks.push_back({Tok::Op, op, line});
        p += op.size();
      }
    }
  }
  toks.push_back({Tok::Eof, "", line});
  return toks;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ AST
struct Expr {
  enum Kind { Literal, Name, Attr, Item, Slice, Call, Filter, Test, Neg, Pos, Not, Binary, Compare, And, Or, Cond, ListLit, DictLit };
  Kind kind;
  int line = 0;
  Value value;                                  // Literal
  std::string name;                             // Name, Attr, Call (function/method), Filter, Test, Binary op
  std::vector<std::unique_ptr<Expr>> args;      // operands / positional arguments (Slice: obj, start, stop, step)
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;                 // Compare: the operators between args
  bool negated = false;                         // Test: `is not`
  int height = 1;                               // levels of this tree: evaluating it recurses that deep
};
using ExprPtr = std::unique_ptr<Expr>;

struct Node {
  enum Kind { Text, Output, If, For, Set, SetBlock, Break, Continue, Scope };
  Kind kind;
  int line = 0;
  std::string text;                                      // Text
  ExprPtr expr;                                          // Output, Set value, For iterable
  std::vector<std::string> targets;                      // For loop variables; Set: {name} or {namespace, attr}
  std::vector<std::pair<ExprPtr, std::vector<std::unique_ptr<Node>>>> branches;  // If
  std::vector<std::unique_ptr<Node>> body, else_body;    // For, If (else), SetBlock, Scope
  ExprPtr filter;                                        // For ... if filter
};
using Body = std::vector<std::unique_ptr<Node>>;

// ------------------------------------------------------------------------------------------------ parser
namespace {

const std::set<std::string>& known_filters() {
  static const std::set<std::string> s = {"trim", "length", "count", "lower", "upper", "capitalize", "title",
                                          "default", "d", "first", "last", "join", "string", "int", "float",
                                          "abs", "tojson", "replace", "list", "reverse", "safe", "items"};
  return s;
}
const std::set<std::string>& known_tests() {
  static const std::set<std::string> s = {"defined", "undefined", "none", "boolean", "true", "false",
                                          "integer", "float", "number", "string", "mapping", "iterable",
                                          "sequence", "odd", "even", "divisibleby", "eq", "equalto", "ne",
                                          "in", "lower", "upper"};
  return s;
}
const std::set<std::string>& known_functions() {
  static const std::set<std::string> s = {"raise_exception", "range", "namespace", "strftime_now"};
  return s;
}
const std::set<std::string>& known_methods() {
  static const std::set<std::string> s = {"strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize",
                                          "startswith", "endswith", "split", "replace", "find", "count",
                                          "join", "items", "keys", "values", "get"};
  return s;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse_template() {
    std::string end;
    Body b = parse_body({}, &end);
    return b;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  int loop_depth_ = 0;
  // Nesting: the blocks and brackets being parsed (depth_, one per statement block, three per bracket) plus the
  // levels of the expression tree being built stay within kMaxNestingDepth, so that parsing, evaluating and
  // freeing the tree all recurse boundedly (with sanitizers too).
  int depth_ = 0;
  struct Nest {
    Parser& p;
    explicit Nest(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxNestingDepth) p.too_deep(p.cur().line);
    }
    ~Nest() { p.depth_--; }
  };
  [[noreturn]] void too_deep(int line) const {
    syntax_error(line, "nested too deeply: more than " + std::to_string(kMaxNestingDepth) +
                           " levels of blocks, brackets, operators, filters, tests, calls and attribute or item "
                           "accesses");
  }
  // Makes `child` (null for an omitted operand) an operand of `parent`, within the nesting limit.
  void attach(Expr& parent, ExprPtr child) {
    if (child) grow(parent, child->height + 1);
    parent.args.push_back(std::move(child));
  }
  void attach_kwarg(Expr& parent, std::string key, ExprPtr child) {
    grow(parent, child->height + 1);
    parent.kwargs.emplace_back(std::move(key), std::move(child));
  }
  void grow(Expr& parent, int height) {
    parent.height = std::max(parent.height, height);
    if (depth_ + parent.height > kMaxNestingDepth) too_deep(parent.line);
  }

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
  [[noreturn]] void fail_here(const std::string& what) const { syntax_error(cur().line, what); }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::VarEnd: return "end of print statement";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::Op: return "'" + t.text + "'";
      case Tok::String: return "string";
      default: return "literal";
    }
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail_here(std::string("expected '") + op + "', got " + describe(cur()));
    i_++;
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail_here("expected a name, got " + describe(cur()));
    return t_[i_++].text;
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail_here(std::string("expected ") + what + ", got " + describe(cur()));
    i_++;
  }

  // Statements until one of `ends` opens a block tag; *end_found gets it ("" at end of template).
  Body parse_body(const std::vector<std::string>& ends, std::string* end_found) {
    Body body;
    for (;;) {
      const Token& tk = cur();
      if (tk.type == Tok::Eof) {
        if (!ends.empty()) fail_here("unexpected end of template, expected '" + ends.back() + "'");
        *end_found = "";
        return body;
      }
      if (tk.type == Tok::Data) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Text;
        n->text = tk.text;
        body.push_back(std::move(n));
        i_++;
      } else if (tk.type == Tok::VarBegin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Output;
        n->line = tk.line;
        i_++;
        n->expr = parse_expression();
        expect(Tok::VarEnd, "end of print statement '}}'");
        body.push_back(std::move(n));
      } else if (tk.type == Tok::BlockBegin) {
        i_++;
        if (cur().type != Tok::Name) fail_here("expected a statement name, got " + describe(cur()));
        std::string kw = cur().text;
        if (std::find(ends.begin(), ends.end(), kw) != ends.end()) {
          i_++;
          *end_found = kw;
          return body;
        }
        body.push_back(parse_statement());
      } else {
        fail_here("unexpected " + describe(tk));
      }
    }
  }

  std::unique_ptr<Node> parse_statement() {
    Nest nest(*this);
    const int line = cur().line;
    const std::string kw = expect_name();
    auto n = std::make_unique<Node>();
    n->line = line;
    std::string end;
    if (kw == "if") {
      n->kind = Node::If;
      ExprPtr cond = parse_expression();
      expect(Tok::BlockEnd, "'%}'");
      for (;;) {
        Body b = parse_body({"elif", "else", "endif"}, &end);
        n->branches.emplace_back(std::move(cond), std::move(b));
        if (end == "elif") {
          cond = parse_expression();
          expect(Tok::BlockEnd, "'%}'");
          continue;
        }
        if (end == "else") {
          expect(Tok::BlockEnd, "'%}'");
          n->else_body = parse_body({"endif"}, &end);
        }
        break;
      }
      expect(Tok::BlockEnd, "'%}'");
    } else if (kw == "for") {
      n->kind = Node::For;
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        i_++;
        n->targets.push_back(expect_name());
      }
      if (!is_name("in")) fail_here("expected 'in' in for loop, got " + describe(cur()));
      i_++;
      n->expr = parse_or();  // no conditional expression: a following `if` filters the loop
      if (is_name("if")) {
        i_++;
        n->filter = parse_expression();
      }
      if (is_name("recursive")) fail_here("recursive for loops are not supported");
      expect(Tok::BlockEnd, "'%}'");
      loop_depth_++;
      n->body = parse_body({"else", "endfor"}, &end);
      loop_depth_--;
      if (end == "else") {
        expect(Tok::BlockEnd, "'%}'");
        n->else_body = parse_body({"endfor"}, &end);
      }
      expect(Tok::BlockEnd, "'%}'");
    } else if (kw == "set") {
      n->targets.push_back(expect_name());
      if (is_op(".")) {
        i_++;
        n->targets.push_back(expect_name());
      }
      if (is_op(",")) fail_here("tuple assignment in set is not supported");
      if (is_op("=")) {
        i_++;
        n->kind = Node::Set;
        n->expr = parse_expression();
        expect(Tok::BlockEnd, "'%}'");
      } else {
        if (n->targets.size() != 1) fail_here("a set block assigns a plain name");
        expect(Tok::BlockEnd, "'=' or '%}'");
        n->kind = Node::SetBlock;
        n->body = parse_body({"endset"}, &end);
        expect(Tok::BlockEnd, "'%}'");
      }
    } else if (kw == "break" || kw == "continue") {
      if (loop_depth_ == 0) syntax_error(line, "'" + kw + "' outside of a for loop");
      n->kind = kw == "break" ? Node::Break : Node::Continue;
      expect(Tok::BlockEnd, "'%}'");
    } else if (kw == "generation") {  // Hugging Face's marker for assistant tokens: renders its body
      n->kind = Node::Scope;
      expect(Tok::BlockEnd, "'%}'");
      n->body = parse_body({"endgeneration"}, &end);
      expect(Tok::BlockEnd, "'%}'");
    } else if (kw == "elif" || kw == "else" || kw.rfind("end", 0) == 0) {
      syntax_error(line, "unexpected '" + kw + "'");
    } else {
      syntax_error(line, "unsupported tag '" + kw + "' (this chat-template interpreter supports if, for, set, "
                         "break, continue and generation)");
    }
    return n;
  }

  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  ExprPtr parse_expression() {
    Nest nest(*this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      i_++;
      auto c = make(Expr::Cond, line);
      ExprPtr cond = parse_or();
      ExprPtr otherwise;
      if (is_name("else")) {
        i_++;
        otherwise = parse_expression();
      }
      attach(*c, std::move(cond));
      attach(*c, std::move(e));
      attach(*c, std::move(otherwise));  // may be null: undefined
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto o = make(Expr::Or, cur().line);
      i_++;
      attach(*o, std::move(e));
      attach(*o, parse_and());
      e = std::move(o);
    }
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto a = make(Expr::And, cur().line);
      i_++;
      attach(*a, std::move(e));
      attach(*a, parse_not());
      e = std::move(a);
    }
    return e;
  }
  ExprPtr parse_not() {
    Nest nest(*this);
    if (is_name("not")) {
      auto n = make(Expr::Not, cur().line);
      i_++;
      attach(*n, parse_not());
      return n;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    for (;;) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        i_++;
      } else if (is_name("in")) {
        op = "in";
        i_++;
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "not in";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Compare, first->line);
        attach(*cmp, std::move(first));
      }
      cmp->ops.push_back(op);
      attach(*cmp, parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b, int line) {
    auto e = make(Expr::Binary, line);
    e->name = op;
    attach(*e, std::move(a));
    attach(*e, std::move(b));
    return e;
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      int line = cur().line;
      i_++;
      e = binary(op, std::move(e), parse_concat(), line);
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      int line = cur().line;
      i_++;
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      int line = cur().line;
      i_++;
      e = binary(op, std::move(e), parse_pow(), line);
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      i_++;
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    Nest nest(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(is_op("-") ? Expr::Neg : Expr::Pos, cur().line);
      i_++;
      attach(*e, parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& tk = cur();
    const int line = tk.line;
    if (tk.type == Tok::Name) {
      static const std::set<std::string> kTrue = {"true", "True"}, kFalse = {"false", "False"}, kNone = {"none", "None"};
      auto e = make(Expr::Literal, line);
      if (kTrue.count(tk.text)) e->value = Value(true);
      else if (kFalse.count(tk.text)) e->value = Value(false);
      else if (kNone.count(tk.text)) e->value = Value::none();
      else {
        e->kind = Expr::Name;
        e->name = tk.text;
      }
      i_++;
      return e;
    }
    if (tk.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += t_[i_++].text;  // adjacent literals concatenate
      auto e = make(Expr::Literal, line);
      e->value = Value(std::move(s));
      return e;
    }
    if (tk.type == Tok::Int || tk.type == Tok::Float) {
      auto e = make(Expr::Literal, line);
      e->value = tk.type == Tok::Int ? Value(tk.ival) : Value(tk.fval);
      i_++;
      return e;
    }
    if (is_op("(")) {  // parenthesized expression or tuple (a list here)
      i_++;
      if (is_op(")")) {
        i_++;
        auto e = make(Expr::ListLit, line);
        return e;
      }
      ExprPtr first = parse_expression();
      if (!is_op(",")) {
        expect_op(")");
        return first;
      }
      auto e = make(Expr::ListLit, line);
      attach(*e, std::move(first));
      while (is_op(",")) {
        i_++;
        if (is_op(")")) break;
        attach(*e, parse_expression());
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      i_++;
      auto e = make(Expr::ListLit, line);
      while (!is_op("]")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (is_op("]")) break;
        }
        attach(*e, parse_expression());
      }
      i_++;
      return e;
    }
    if (is_op("{")) {
      i_++;
      auto e = make(Expr::DictLit, line);
      while (!is_op("}")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (is_op("}")) break;
        }
        attach(*e, parse_expression());
        expect_op(":");
        attach(*e, parse_expression());
      }
      i_++;
      return e;
    }
    fail_here("unexpected " + describe(tk) + " in expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      const int line = cur().line;
      if (is_op(".")) {
        i_++;
        auto a = make(Expr::Attr, line);
        if (cur().type == Tok::Int) {  // x.0 is x[0] in Jinja
          a->kind = Expr::Item;
          auto k = make(Expr::Literal, line);
          k->value = Value(cur().ival);
          i_++;
          attach(*a, std::move(e));
          attach(*a, std::move(k));
        } else {
          a->name = expect_name();
          attach(*a, std::move(e));
        }
        e = std::move(a);
      } else if (is_op("[")) {
        i_++;
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; k++) {
          if (!is_op(":") && !is_op("]")) parts[k] = parse_expression();
          if (k < 2 && is_op(":")) {
            slice = true;
            i_++;
          } else {
            break;
          }
        }
        expect_op("]");
        auto s = make(slice ? Expr::Slice : Expr::Item, line);
        attach(*s, std::move(e));
        if (slice) {
          for (auto& p : parts) attach(*s, std::move(p));
        } else {
          if (!parts[0]) syntax_error(line, "expected a subscript");
          attach(*s, std::move(parts[0]));
        }
        e = std::move(s);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  void parse_args(Expr& call) {
    expect_op("(");
    for (bool first = true; !is_op(")"); first = false) {
      if (!first) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail_here("*args and **kwargs are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        i_ += 2;
        attach_kwarg(call, key, parse_expression());
      } else {
        if (!call.kwargs.empty()) fail_here("positional argument after keyword argument");
        attach(call, parse_expression());
      }
    }
    i_++;
  }

  ExprPtr parse_call(ExprPtr callee) {
    const int line = cur().line;
    auto c = make(Expr::Call, line);
    if (callee->kind == Expr::Name) {
      if (!known_functions().count(callee->name))
        syntax_error(line, "unsupported function '" + callee->name + "'");
      c->name = callee->name;
    } else if (callee->kind == Expr::Attr) {
      if (!known_methods().count(callee->name))
        syntax_error(line, "unsupported method '" + callee->name + "'");
      c->name = "." + callee->name;
      attach(*c, std::move(callee->args[0]));  // the object, then the arguments
    } else {
      syntax_error(line, "only functions and methods can be called");
    }
    // Arguments follow the object (for methods) in args.
    auto parsed = make(Expr::Call, line);
    parse_args(*parsed);
    for (auto& a : parsed->args) attach(*c, std::move(a));
    for (auto& [key, value] : parsed->kwargs) attach_kwarg(*c, key, std::move(value));
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    for (;;) {
      const int line = cur().line;
      if (is_op("|")) {
        i_++;
        std::string name = expect_name();
        if (!known_filters().count(name)) syntax_error(line, "unsupported filter '" + name + "'");
        auto f = make(Expr::Filter, line);
        f->name = name;
        attach(*f, std::move(e));
        if (is_op("(")) parse_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        i_++;
        auto t = make(Expr::Test, line);
        if (is_name("not")) {
          t->negated = true;
          i_++;
        }
        // `none`, `true` and `false` lex as names and are also test names.
        std::string name = expect_name();
        if (!known_tests().count(name)) syntax_error(line, "unsupported test '" + name + "'");
        t->name = name;
        attach(*t, std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else if (cur().type == Tok::String || cur().type == Tok::Int || cur().type == Tok::Float) {
          attach(*t, parse_primary());  // `x is divisibleby 3`
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

// ------------------------------------------------------------------------------------------------ evaluator
namespace {

enum class Flow { Normal, Break, Continue };

[[noreturn]] void runtime_error(int line, const std::string& what) {
  throw TemplateError("chat template: line " + std::to_string(line) + ": " + what);
}

class Renderer {
 public:
  Renderer(const Value& globals, Budget& budget) : budget_(budget) {
    frames_.emplace_back();
    if (globals.is_dict())
      for (auto& [k, v] : globals.as_dict().items) frames_.back().emplace_back(k, v);
    frames_.emplace_back();  // the template's own top-level variables
  }

  Flow exec(const Body& body, std::string& out) {
    for (auto& n : body) {
      Flow f = exec(*n, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Value eval(const Expr& e);

 private:
  using Frame = std::vector<std::pair<std::string, Value>>;
  std::vector<Frame> frames_;
  Budget& budget_;
  // A loop iteration costs several steps' time (a scope, the loop variables), even with an empty body.
  static constexpr int64_t kStepsPerIteration = 4;

  Value compute(const Expr& e);
  // An operand of a builtin: the builtin reads its text, which the budget charges.
  Value operand(const Expr& e) {
    Value v = eval(e);
    if (v.is_string()) budget_.bytes(v.as_string().size());
    return v;
  }
  // What a builtin built: charged, and within the size limits.
  void charge_built(const Value& v, int line) {
    budget_.line = line;
    if (v.is_string()) {
      budget_.bytes(v.as_string().size());
      budget_.check_string(v.as_string().size());
    } else if (v.is_list()) {
      budget_.step(int64_t(v.as_list().size()));
      budget_.check_items(v.as_list().size());
    }
  }
  // Text appended to the rendered output (or a {% set %} block's capture).
  void emit(std::string& out, const std::string& text) {
    budget_.bytes(text.size());
    budget_.check_string(out.size() + text.size());
    out += text;
  }

  Value lookup(const std::string& name) const {
    for (auto f = frames_.rbegin(); f != frames_.rend(); ++f)
      for (auto& [k, v] : *f)
        if (k == name) return v;
    return Value::undefined("'" + name + "' is undefined");
  }
  void assign(const std::string& name, Value v) {
    for (auto& [k, old] : frames_.back())
      if (k == name) {
        old = std::move(v);
        return;
      }
    frames_.back().emplace_back(name, std::move(v));
  }

  Flow exec(const Node& n, std::string& out);
  void exec_for(const Node& n, std::string& out);

  [[noreturn]] void undefined_error(const Value& v, int line) {
    runtime_error(line, v.undefined_name().empty() ? "value is undefined" : v.undefined_name());
  }
  void check_defined(const Value& v, int line) {
    if (v.is_undefined()) undefined_error(v, line);
  }

  Value attr(const Value& obj, const std::string& name, int line);
  Value item(const Value& obj, const Value& key, int line);
  Value slice(const Value& obj, const Value& a, const Value& b, const Value& c, int line);
  Value binary(const std::string& op, const Value& a, const Value& b, int line);
  bool compare(const std::string& op, const Value& a, const Value& b, int line);
  Value call(const Expr& e);
  Value method(const Value& obj, const std::string& name, const std::vector<Value>& args, int line);
  Value filter(const Expr& e);
  bool test(const Expr& e);
  std::vector<Value> iterate(const Value& v, int line);
};

bool py_eq(const Value& a, const Value& b) {
  ValueDepth guard;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      auto f = [](const Value& v) { return v.is_float() ? v.as_float() : v.is_int() ? double(v.as_int()) : double(v.as_bool()); };
      return f(a) == f(b);
    }
    auto i = [](const Value& v) { return v.is_int() ? v.as_int() : int64_t(v.as_bool()); };
    return i(a) == i(b);
  }
  if (a.is_string() && b.is_string()) return a.as_string() == b.as_string();
  if (a.is_none() && b.is_none()) return true;
  if (a.is_undefined() && b.is_undefined()) return true;
  if (a.is_list() && b.is_list()) {
    const List &x = a.as_list(), &y = b.as_list();
    if (x.size() != y.size()) return false;
    for (size_t k = 0; k < x.size(); k++)
      if (!py_eq(x[k], y[k])) return false;
    return true;
  }
  if (a.is_dict() && b.is_dict()) {
    const Dict &x = a.as_dict(), &y = b.as_dict();
    if (&x == &y) return true;
    if (x.is_namespace || y.is_namespace || x.items.size() != y.items.size()) return false;
    for (auto& [k, v] : x.items) {
      const Value* w = y.find(k);
      if (!w || !py_eq(v, *w)) return false;
    }
    return true;
  }
  return false;
}

double as_double(const Value& v) { return v.is_float() ? v.as_float() : v.is_int() ? double(v.as_int()) : double(v.as_bool()); }
int64_t as_int64(const Value& v) { return v.is_int() ? v.as_int() : int64_t(v.as_bool()); }

// json.dumps as Hugging Face's tojson filter calls it (ensure_ascii=False, optional indent).
void to_json(const Value& v, int indent, int level, std::string& out, int line) {
  ValueDepth guard;
  auto nl = [&](int lvl) {
    if (indent >= 0) out += "\n" + std::string(size_t(indent) * size_t(lvl), ' ');
  };
  if (v.is_none()) out += "null";
  else if (v.is_bool()) out += v.as_bool() ? "true" : "false";
  else if (v.is_int()) out += std::to_string(v.as_int());
  else if (v.is_float()) {
    double x = v.as_float();
    out += std::isnan(x) ? "NaN" : std::isinf(x) ? (x > 0 ? "Infinity" : "-Infinity") : py_float_repr(x);
  } else if (v.is_string()) out += json_str(v.as_string());
  else if (v.is_list()) {
    const List& l = v.as_list();
    if (l.empty()) {
      out += "[]";
      return;
    }
    out += "[";
    for (size_t k = 0; k < l.size(); k++) {
      if (k) out += indent >= 0 ? "," : ", ";
      nl(level + 1);
      to_json(l[k], indent, level + 1, out, line);
    }
    nl(level);
    out += "]";
  } else if (v.is_dict() && !v.as_dict().is_namespace) {
    const Dict& d = v.as_dict();
    if (d.items.empty()) {
      out += "{}";
      return;
    }
    out += "{";
    for (size_t k = 0; k < d.items.size(); k++) {
      if (k) out += indent >= 0 ? "," : ", ";
      nl(level + 1);
      out += json_str(d.items[k].first) + ": ";
      to_json(d.items[k].second, indent, level + 1, out, line);
    }
    nl(level);
    out += "}";
  } else {
    runtime_error(line, "Object of type " + v.type_name() + " is not JSON serializable");
  }
  check_growing_string(out.size());
}

// Python slice index normalization (PySlice_AdjustIndices).
std::vector<int64_t> slice_indices(int64_t len, const Value& a, const Value& b, const Value& c, int line) {
  auto get = [&](const Value& v, bool& given) -> int64_t {
    given = !(v.is_undefined() || v.is_none());
    if (!given) return 0;
    if (!v.is_int() && !v.is_bool()) runtime_error(line, "slice indices must be integers or None");
    return as_int64(v);
  };
  bool has_a, has_b, has_c;
  int64_t start = get(a, has_a), stop = get(b, has_b), step = get(c, has_c);
  if (!has_c) step = 1;
  if (step == 0) runtime_error(line, "slice step cannot be zero");
  auto adjust = [&](int64_t& x, bool given, int64_t dflt) {
    if (!given) {
      x = dflt;
      return;
    }
    if (x < 0) {
      x += len;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= len) {
      x = step < 0 ? len - 1 : len;
    }
  };
  adjust(start, has_a, step < 0 ? len - 1 : 0);
  adjust(stop, has_b, step < 0 ? -1 : len);
  std::vector<int64_t> idx;
  if (step > 0)
    for (int64_t k = start; k < stop; k += step) idx.push_back(k);
  else
    for (int64_t k = start; k > stop; k += step) idx.push_back(k);
  return idx;
}

std::string py_title(const std::string& s) {
  std::string out = s;
  bool prev_alpha = false;
  for (char& ch : out) {
    if (ascii_alpha(ch)) {
      ch = prev_alpha ? ascii_lower(std::string(1, ch))[0] : ascii_upper(std::string(1, ch))[0];
      prev_alpha = true;
    } else {
      prev_alpha = false;
    }
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty()) out[0] = ascii_upper(out.substr(0, 1))[0];
  return out;
}

std::vector<std::string> py_split(const std::string& s, const Value& sep, int64_t maxsplit, int line) {
  std::vector<std::string> out;
  if (sep.is_undefined() || sep.is_none()) {  // runs of whitespace, no empty strings
    std::vector<std::string_view> cps = code_points(s);
    size_t k = 0;
    auto ws = [&](size_t j) { return py_space(u8decode(cps[j], 0, cps[j].size())); };
    while (k < cps.size()) {
      while (k < cps.size() && ws(k)) k++;
      if (k >= cps.size()) break;
      std::string word;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        for (; k < cps.size(); k++) word += cps[k];
        out.push_back(py_strip(word, false, true));
        break;
      }
      while (k < cps.size() && !ws(k)) word += cps[k++];
      out.push_back(word);
      check_growing_list(out.size());
    }
    return out;
  }
  if (!sep.is_string()) runtime_error(line, "split() separator must be a string");
  const std::string& d = sep.as_string();
  if (d.empty()) runtime_error(line, "empty separator");
  size_t pos = 0;
  for (;;) {
    if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) break;
    size_t f = s.find(d, pos);
    if (f == std::string::npos) break;
    out.push_back(s.substr(pos, f - pos));
    pos = f + d.size();
    check_growing_list(out.size());
  }
  out.push_back(s.substr(pos));
  return out;
}

std::string py_replace(const std::string& s, const std::string& a, const std::string& b, int64_t count) {
  std::string out;
  if (a.empty()) {  // Python inserts `b` between every code point
    std::vector<std::string_view> cps = code_points(s);
    int64_t done = 0;
    for (size_t k = 0; k <= cps.size(); k++) {
      if (count < 0 || done < count) {
        out += b;
        done++;
      }
      if (k < cps.size()) out += cps[k];
      check_growing_string(out.size());
    }
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  for (;;) {
    size_t f = (count >= 0 && done >= count) ? std::string::npos : s.find(a, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += b;
    pos = f + a.size();
    done++;
    check_growing_string(out.size());
  }
  out.append(s, pos);
  return out;
}

Value Renderer::attr(const Value& obj, const std::string& name, int line) {
  check_defined(obj, line);
  if (obj.is_dict()) {
    if (const Value* v = obj.as_dict().find(name)) return *v;
  }
  return Value::undefined(obj.type_name() + " object has no attribute '" + name + "'");
}

Value Renderer::item(const Value& obj, const Value& key, int line) {
  check_defined(obj, line);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
    return Value::undefined(obj.type_name() + " object has no element " + key.repr());
  }
  if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t k = as_int64(key);
    if (obj.is_list()) {
      const List& l = obj.as_list();
      int64_t n = int64_t(l.size());
      if (k < 0) k += n;
      if (k >= 0 && k < n) return l[size_t(k)];
    } else {
      const std::string& str = obj.as_string();
      int64_t n = int64_t(code_point_count(str));
      if (k < 0) k += n;
      if (k >= 0 && k < n) {
        size_t i = 0;
        for (int64_t j = 0; j < k; j++) i += u8len(str, i);
        return Value(str.substr(i, u8len(str, i)));
      }
    }
    return Value::undefined(obj.type_name() + " object has no element " + key.repr());
  }
  return Value::undefined(obj.type_name() + " object has no element " + key.repr());
}

Value Renderer::slice(const Value& obj, const Value& a, const Value& b, const Value& c, int line) {
  check_defined(obj, line);
  if (obj.is_list()) {
    const List& l = obj.as_list();
    List out;
    for (int64_t k : slice_indices(int64_t(l.size()), a, b, c, line)) out.push_back(l[size_t(k)]);
    return Value(std::move(out));
  }
  if (obj.is_string()) {
    std::vector<std::string_view> cps = code_points(obj.as_string());
    std::string out;
    for (int64_t k : slice_indices(int64_t(cps.size()), a, b, c, line)) out += cps[size_t(k)];
    return Value(std::move(out));
  }
  runtime_error(line, "'" + obj.type_name() + "' object is not subscriptable");
}

Value Renderer::binary(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "~") return Value(a.str() + b.str());
  check_defined(a, line);
  check_defined(b, line);
  auto type_err = [&]() -> Value {
    if (op == "+" && a.is_string())
      runtime_error(line, "can only concatenate str (not \"" + b.type_name() + "\") to str");
    if (op == "+" && a.is_list())
      runtime_error(line, "can only concatenate list (not \"" + b.type_name() + "\") to list");
    runtime_error(line, "unsupported operand type(s) for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
  };
  if (a.is_number() && b.is_number()) {
    const bool fl = a.is_float() || b.is_float();
    if (op == "/") {
      double d = as_double(b);
      if (d == 0) runtime_error(line, "division by zero");
      return Value(as_double(a) / d);
    }
    if (fl) {
      double x = as_double(a), y = as_double(b);
      if (op == "+") return Value(x + y);
      if (op == "-") return Value(x - y);
      if (op == "*") return Value(x * y);
      if (op == "**") return Value(std::pow(x, y));
      if (y == 0) runtime_error(line, "float division by zero");
      if (op == "//") return Value(std::floor(x / y));
      if (op == "%") {
        double r = std::fmod(x, y);
        if (r != 0 && ((r < 0) != (y < 0))) r += y;
        return Value(r);
      }
      return type_err();
    }
    int64_t x = as_int64(a), y = as_int64(b), r = 0;
    auto overflow = [&]() -> Value { runtime_error(line, "integer overflow"); };
    if (op == "+") return __builtin_add_overflow(x, y, &r) ? overflow() : Value(r);
    if (op == "-") return __builtin_sub_overflow(x, y, &r) ? overflow() : Value(r);
    if (op == "*") return __builtin_mul_overflow(x, y, &r) ? overflow() : Value(r);
    if (op == "**") {
      if (y < 0) return Value(std::pow(double(x), double(y)));
      // 0, 1 and -1 never overflow, so their powers are computed, not looped up to y times.
      if (x == 0 || x == 1) return Value(y == 0 ? int64_t(1) : x);
      if (x == -1) return Value(y % 2 == 0 ? int64_t(1) : int64_t(-1));
      r = 1;
      for (int64_t k = 0; k < y; k++)  // |x| >= 2 overflows within 63 steps
        if (__builtin_mul_overflow(r, x, &r)) overflow();
      return Value(r);
    }
    if (y == 0) runtime_error(line, "integer division or modulo by zero");
    if (x == INT64_MIN && y == -1) overflow();
    int64_t q = x / y, m = x % y;
    if (m != 0 && ((m < 0) != (y < 0))) {
      q -= 1;
      m += y;
    }
    if (op == "//") return Value(q);
    if (op == "%") return Value(m);
    return type_err();
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      List l = a.as_list();
      l.insert(l.end(), b.as_list().begin(), b.as_list().end());
      return Value(std::move(l));
    }
  }
  if (op == "*") {
    const Value* seq = (a.is_string() || a.is_list()) ? &a : (b.is_string() || b.is_list()) ? &b : nullptr;
    const Value* cnt = seq == &a ? &b : &a;
    if (seq && (cnt->is_int() || cnt->is_bool())) {
      const uint64_t unit = seq->is_string() ? seq->as_string().size() : seq->as_list().size();
      // Empty times anything is empty (and must not loop k times); else the result's size is checked first.
      const int64_t k = unit == 0 ? 0 : std::max<int64_t>(0, as_int64(*cnt));
      uint64_t total = 0;
      if (__builtin_mul_overflow(unit, uint64_t(k), &total)) total = UINT64_MAX;
      if (seq->is_string()) budget_.check_string(total);
      else budget_.check_items(total);
      if (seq->is_string()) {
        std::string s;
        for (int64_t j = 0; j < k; j++) s += seq->as_string();
        return Value(std::move(s));
      }
      List l;
      for (int64_t j = 0; j < k; j++) l.insert(l.end(), seq->as_list().begin(), seq->as_list().end());
      return Value(std::move(l));
    }
  }
  return type_err();
}

bool Renderer::compare(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "==") return py_eq(a, b);
  if (op == "!=") return !py_eq(a, b);
  if (op == "in" || op == "not in") {
    check_defined(b, line);
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) runtime_error(line, "'in <string>' requires string as left operand, not " + a.type_name());
      found = b.as_string().find(a.as_string()) != std::string::npos;
    } else if (b.is_list()) {
      for (auto& x : b.as_list())
        if (py_eq(a, x)) found = true;
    } else if (b.is_dict()) {
      found = a.is_string() && b.as_dict().find(a.as_string()) != nullptr;
    } else {
      runtime_error(line, "argument of type '" + b.type_name() + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  check_defined(a, line);
  check_defined(b, line);
  // Three-way ordering with Python's rules.
  std::function<int(const Value&, const Value&)> cmp = [&](const Value& x, const Value& y) -> int {
    ValueDepth guard;
    if (x.is_number() && y.is_number()) {
      double p = as_double(x), q = as_double(y);
      if (x.is_int() && y.is_int()) return x.as_int() < y.as_int() ? -1 : x.as_int() > y.as_int() ? 1 : 0;
      return p < q ? -1 : p > q ? 1 : 0;
    }
    if (x.is_string() && y.is_string()) {
      int c = x.as_string().compare(y.as_string());  // UTF-8 byte order is code point order
      return c < 0 ? -1 : c > 0 ? 1 : 0;
    }
    if (x.is_list() && y.is_list()) {
      const List &l = x.as_list(), &m = y.as_list();
      for (size_t k = 0; k < l.size() && k < m.size(); k++)
        if (!py_eq(l[k], m[k])) return cmp(l[k], m[k]);
      return l.size() < m.size() ? -1 : l.size() > m.size() ? 1 : 0;
    }
    runtime_error(line, "'" + op + "' not supported between instances of '" + x.type_name() + "' and '" + y.type_name() + "'");
  };
  int c = cmp(a, b);
  if (op == "<") return c < 0;
  if (op == ">") return c > 0;
  if (op == "<=") return c <= 0;
  return c >= 0;
}

std::vector<Value> Renderer::iterate(const Value& v, int line) {
  std::vector<Value> out;
  if (v.is_undefined()) return out;  // jinja2's Undefined iterates as empty
  if (v.is_list()) {
    out = v.as_list();
  } else if (v.is_dict() && !v.as_dict().is_namespace) {
    for (auto& [k, x] : v.as_dict().items) out.emplace_back(k);
  } else if (v.is_string()) {
    // One string per code point: refused before it is built when that is too many.
    const std::string& s = v.as_string();
    budget_.check_items(uint64_t(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; })));
    for (auto cp : code_points(s)) out.emplace_back(std::string(cp));
  } else {
    runtime_error(line, "'" + v.type_name() + "' object is not iterable");
  }
  budget_.step(int64_t(out.size()));
  return out;
}

Value Renderer::method(const Value& obj, const std::string& name, const std::vector<Value>& args, int line) {
  check_defined(obj, line);
  auto arg_str = [&](size_t k, const char* what) -> const std::string& {
    if (k >= args.size() || !args[k].is_string()) runtime_error(line, std::string(what) + " expects a string argument");
    return args[k].as_string();
  };
  auto nargs = [&](size_t lo, size_t hi) {
    if (args.size() < lo || args.size() > hi) runtime_error(line, name + "() takes " + std::to_string(lo) + " to " + std::to_string(hi) + " arguments");
  };
  if (obj.is_string()) {
    const std::string& s = obj.as_string();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      nargs(0, 1);
      const std::string* chars = (!args.empty() && !args[0].is_none()) ? &arg_str(0, name.c_str()) : nullptr;
      return Value(py_strip(s, name != "rstrip", name != "lstrip", chars));
    }
    if (name == "upper") { nargs(0, 0); return Value(ascii_upper(s)); }
    if (name == "lower") { nargs(0, 0); return Value(ascii_lower(s)); }
    if (name == "title") { nargs(0, 0); return Value(py_title(s)); }
    if (name == "capitalize") { nargs(0, 0); return Value(py_capitalize(s)); }
    if (name == "startswith" || name == "endswith") {
      nargs(1, 1);
      std::vector<std::string> cands;
      if (args[0].is_list()) {
        for (auto& x : args[0].as_list()) {
          if (!x.is_string()) runtime_error(line, name + "() tuple items must be strings");
          cands.push_back(x.as_string());
        }
      } else {
        cands.push_back(arg_str(0, name.c_str()));
      }
      for (auto& c : cands) {
        if (name == "startswith" ? s.compare(0, c.size(), c) == 0
                                 : (s.size() >= c.size() && s.compare(s.size() - c.size(), c.size(), c) == 0))
          return Value(true);
      }
      return Value(false);
    }
    if (name == "split") {
      nargs(0, 2);
      int64_t maxsplit = args.size() > 1 ? (args[1].is_int() ? args[1].as_int() : -1) : -1;
      List l;
      for (auto& p : py_split(s, args.empty() ? Value::none() : args[0], maxsplit, line)) l.emplace_back(p);
      return Value(std::move(l));
    }
    if (name == "replace") {
      nargs(2, 3);
      int64_t count = args.size() > 2 && args[2].is_int() ? args[2].as_int() : -1;
      return Value(py_replace(s, arg_str(0, "replace"), arg_str(1, "replace"), count));
    }
    if (name == "find") {
      nargs(1, 1);
      size_t f = s.find(arg_str(0, "find"));
      return Value(f == std::string::npos ? int64_t(-1) : int64_t(code_point_count(std::string_view(s).substr(0, f))));
    }
    if (name == "count") {
      nargs(1, 1);
      const std::string& sub = arg_str(0, "count");
      if (sub.empty()) return Value(int64_t(code_point_count(s) + 1));
      int64_t c = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) c++;
      return Value(c);
    }
    if (name == "join") {
      nargs(1, 1);
      std::string out;
      bool first = true;
      for (auto& x : iterate(args[0], line)) {
        if (!x.is_string()) runtime_error(line, "join() expects strings, found " + x.type_name());
        if (!first) out += s;
        out += x.as_string();
        first = false;
        check_growing_string(out.size());
      }
      return Value(std::move(out));
    }
  }
  if (obj.is_dict() && !obj.as_dict().is_namespace) {
    const Dict& d = obj.as_dict();
    if (name == "items") {
      nargs(0, 0);
      List l;
      for (auto& [k, v] : d.items) l.emplace_back(List{Value(k), v});
      return Value(std::move(l));
    }
    if (name == "keys") {
      nargs(0, 0);
      List l;
      for (auto& [k, v] : d.items) l.emplace_back(k);
      return Value(std::move(l));
    }
    if (name == "values") {
      nargs(0, 0);
      List l;
      for (auto& [k, v] : d.items) l.push_back(v);
      return Value(std::move(l));
    }
    if (name == "get") {
      nargs(1, 2);
      if (args[0].is_string())
        if (const Value* v = d.find(args[0].as_string())) return *v;
      return args.size() > 1 ? args[1] : Value::none();
    }
  }
  runtime_error(line, "'" + obj.type_name() + "' object has no method '" + name + "'");
}

Value Renderer::call(const Expr& e) {
  const int line = e.line;
  if (e.name[0] == '.') {
    Value obj = operand(*e.args[0]);
    std::vector<Value> args;
    for (size_t k = 1; k < e.args.size(); k++) args.push_back(operand(*e.args[k]));
    if (!e.kwargs.empty()) runtime_error(line, "keyword arguments to " + e.name.substr(1) + "() are not supported");
    return method(obj, e.name.substr(1), args, line);
  }
  std::vector<Value> args;
  for (auto& a : e.args) args.push_back(eval(*a));
  if (e.name == "raise_exception") {
    throw TemplateRaised(args.empty() ? std::string("raise_exception() called") : args[0].str());
  }
  if (e.name == "namespace") {
    Dict d;
    d.is_namespace = true;
    if (!args.empty()) {
      if (args.size() > 1 || !args[0].is_dict()) runtime_error(line, "namespace() takes a dict or keyword arguments");
      for (auto& [k, v] : args[0].as_dict().items) d.set(k, v);
    }
    for (auto& [k, x] : e.kwargs) d.set(k, eval(*x));
    return Value(std::move(d));
  }
  if (e.name == "range") {
    if (args.empty() || args.size() > 3 || !e.kwargs.empty()) runtime_error(line, "range() takes 1 to 3 integers");
    for (auto& a : args)
      if (!a.is_int() && !a.is_bool()) runtime_error(line, "range() arguments must be integers");
    int64_t start = 0, stop = 0, step = 1;
    if (args.size() == 1) stop = as_int64(args[0]);
    else {
      start = as_int64(args[0]);
      stop = as_int64(args[1]);
      if (args.size() == 3) step = as_int64(args[2]);
    }
    if (step == 0) runtime_error(line, "range() arg 3 must not be zero");
    // The length first (in 128 bits: stop - start can overflow), so a huge range is refused, not built.
    const __int128 span = step > 0 ? __int128(stop) - start : __int128(start) - stop;
    const __int128 mag = step > 0 ? __int128(step) : -__int128(step);
    const __int128 count = span <= 0 ? 0 : (span + mag - 1) / mag;
    budget_.check_items(count > __int128(UINT64_MAX) ? UINT64_MAX : uint64_t(count));
    List l;
    l.reserve(size_t(count));
    for (int64_t k = 0; k < int64_t(count); k++) l.emplace_back(int64_t(start + __int128(k) * step));
    return Value(std::move(l));
  }
  if (e.name == "strftime_now") {
    if (args.size() != 1 || !args[0].is_string()) runtime_error(line, "strftime_now() takes a format string");
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, args[0].as_string().c_str(), &tm);
    return Value(std::string(buf, n));
  }
  runtime_error(line, "unsupported function '" + e.name + "'");
}

Value Renderer::filter(const Expr& e) {
  const int line = e.line;
  const std::string& f = e.name;
  Value x = operand(*e.args[0]);
  std::vector<Value> args;
  for (size_t k = 1; k < e.args.size(); k++) args.push_back(operand(*e.args[k]));
  auto kwarg = [&](const char* name, size_t pos, Value dflt) -> Value {
    for (auto& [k, v] : e.kwargs)
      if (k == name) return eval(*v);
    return pos < args.size() ? args[pos] : dflt;
  };
  if (f == "default" || f == "d") {
    Value dflt = kwarg("default_value", 0, Value(std::string()));
    bool boolean = kwarg("boolean", 1, Value(false)).truthy();
    return (x.is_undefined() || (boolean && !x.truthy())) ? dflt : x;
  }
  if (f == "safe" || f == "string") return f == "safe" ? x : Value(x.str());
  if (f == "trim") {
    Value chars = kwarg("chars", 0, Value::none());
    const std::string* cs = chars.is_string() ? &chars.as_string() : nullptr;
    return Value(py_strip(x.str(), true, true, cs));
  }
  if (f == "lower") return Value(ascii_lower(x.str()));
  if (f == "upper") return Value(ascii_upper(x.str()));
  if (f == "capitalize") return Value(py_capitalize(x.str()));
  if (f == "title") return Value(py_title(x.str()));
  if (f == "replace") {
    if (args.size() < 2 || !args[0].is_string() || !args[1].is_string()) runtime_error(line, "replace expects two strings");
    int64_t count = args.size() > 2 && args[2].is_int() ? args[2].as_int() : -1;
    return Value(py_replace(x.str(), args[0].as_string(), args[1].as_string(), count));
  }
  if (f == "length" || f == "count") {
    if (x.is_undefined()) return Value(int64_t(0));
    if (x.is_string()) return Value(int64_t(code_point_count(x.as_string())));
    if (x.is_list()) return Value(int64_t(x.as_list().size()));
    if (x.is_dict()) return Value(int64_t(x.as_dict().items.size()));
    runtime_error(line, "object of type '" + x.type_name() + "' has no len()");
  }
  if (f == "first" || f == "last") {
    std::vector<Value> items = iterate(x, line);
    if (items.empty()) return Value::undefined("No " + f + " item, sequence was empty");
    return f == "first" ? items.front() : items.back();
  }
  if (f == "list") return Value(List(iterate(x, line)));
  if (f == "reverse") {
    if (x.is_string()) {
      std::vector<std::string_view> cps = code_points(x.as_string());
      std::string s;
      for (auto it = cps.rbegin(); it != cps.rend(); ++it) s += *it;
      return Value(std::move(s));
    }
    std::vector<Value> items = iterate(x, line);
    std::reverse(items.begin(), items.end());
    return Value(List(std::move(items)));
  }
  if (f == "join") {
    Value sep = kwarg("d", 0, Value(std::string()));
    std::string out;
    bool first = true;
    for (auto& v : iterate(x, line)) {
      if (!first) out += sep.str();
      out += v.str();
      first = false;
      check_growing_string(out.size());
    }
    return Value(std::move(out));
  }
  if (f == "int") {
    Value dflt = kwarg("default", 0, Value(int64_t(0)));
    if (x.is_int()) return x;
    if (x.is_bool()) return Value(int64_t(x.as_bool()));
    if (x.is_float()) return std::isfinite(x.as_float()) ? Value(int64_t(x.as_float())) : dflt;
    if (x.is_string()) {
      std::string s = py_strip(x.as_string(), true, true);
      int64_t v = 0;
      auto r = std::from_chars(s.data() + (s.size() && s[0] == '+' ? 1 : 0), s.data() + s.size(), v);
      if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) return Value(v);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d)) return Value(int64_t(d));
    }
    return dflt;
  }
  if (f == "float") {
    Value dflt = kwarg("default", 0, Value(0.0));
    if (x.is_number()) return Value(as_double(x));
    if (x.is_string()) {
      std::string s = py_strip(x.as_string(), true, true);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value(d);
    }
    return dflt;
  }
  if (f == "abs") {
    check_defined(x, line);
    if (x.is_float()) return Value(std::fabs(x.as_float()));
    if (x.is_int() || x.is_bool()) {
      int64_t v = as_int64(x);
      if (v == INT64_MIN) runtime_error(line, "integer overflow");
      return Value(v < 0 ? -v : v);
    }
    runtime_error(line, "bad operand type for abs(): '" + x.type_name() + "'");
  }
  if (f == "tojson") {
    Value indent = kwarg("indent", 0, Value::none());
    for (auto& [k, v] : e.kwargs)
      if (k != "indent") runtime_error(line, "tojson: argument '" + k + "' is not supported");
    if (!indent.is_none() && !indent.is_int()) runtime_error(line, "tojson: indent must be an integer");
    std::string out;
    to_json(x, indent.is_int() ? int(std::clamp<int64_t>(indent.as_int(), 0, 64)) : -1, 0, out, line);
    return Value(std::move(out));
  }
  if (f == "items") {
    if (x.is_undefined()) return Value(List{});
    if (!x.is_dict()) runtime_error(line, "items filter expects a mapping");
    return method(x, "items", {}, line);
  }
  runtime_error(line, "unsupported filter '" + f + "'");
}

bool Renderer::test(const Expr& e) {
  const int line = e.line;
  const std::string& t = e.name;
  Value x = operand(*e.args[0]);
  std::vector<Value> args;
  for (size_t k = 1; k < e.args.size(); k++) args.push_back(operand(*e.args[k]));
  auto need_arg = [&]() -> const Value& {
    if (args.empty()) runtime_error(line, "test '" + t + "' needs an argument");
    return args[0];
  };
  bool r;
  if (t == "defined") r = !x.is_undefined();
  else if (t == "undefined") r = x.is_undefined();
  else if (t == "none") r = x.is_none();
  else if (t == "boolean") r = x.is_bool();
  else if (t == "true") r = x.is_bool() && x.as_bool();
  else if (t == "false") r = x.is_bool() && !x.as_bool();
  else if (t == "integer") r = x.is_int();
  else if (t == "float") r = x.is_float();
  else if (t == "number") r = x.is_number();
  else if (t == "string") r = x.is_string();
  else if (t == "mapping") r = x.is_dict();
  else if (t == "iterable") r = x.is_list() || x.is_dict() || x.is_string();
  else if (t == "sequence") r = x.is_list() || x.is_dict() || x.is_string();
  else if (t == "lower") r = x.is_string() && ascii_lower(x.as_string()) == x.as_string();
  else if (t == "upper") r = x.is_string() && ascii_upper(x.as_string()) == x.as_string();
  else if (t == "odd" || t == "even") {
    if (!x.is_int() && !x.is_bool()) runtime_error(line, "test '" + t + "' needs an integer");
    int64_t v = as_int64(x);
    r = (t == "odd") == (v % 2 != 0);
  } else if (t == "divisibleby") {
    const Value& d = need_arg();
    if (!(x.is_int() || x.is_bool()) || !(d.is_int() || d.is_bool()) || as_int64(d) == 0)
      runtime_error(line, "divisibleby needs nonzero integers");
    r = as_int64(x) % as_int64(d) == 0;
  } else if (t == "eq" || t == "equalto") r = py_eq(x, need_arg());
  else if (t == "ne") r = !py_eq(x, need_arg());
  else if (t == "in") r = compare("in", x, need_arg(), line);
  else runtime_error(line, "unsupported test '" + t + "'");
  return e.negated ? !r : r;
}

Value Renderer::eval(const Expr& e) {
  budget_.line = e.line;
  budget_.step();
  Value v = compute(e);
  switch (e.kind) {
    case Expr::Slice:
    case Expr::Call:
    case Expr::Filter:
    case Expr::Binary:
    case Expr::ListLit: charge_built(v, e.line); break;
    default: break;
  }
  return v;
}

Value Renderer::compute(const Expr& e) {
  switch (e.kind) {
    case Expr::Literal: return e.value;
    case Expr::Name: return lookup(e.name);
    case Expr::Attr: return attr(eval(*e.args[0]), e.name, e.line);
    case Expr::Item: return item(operand(*e.args[0]), operand(*e.args[1]), e.line);
    case Expr::Slice: {
      Value obj = operand(*e.args[0]);
      Value p[3];
      for (int k = 0; k < 3; k++)
        if (e.args[size_t(k) + 1]) p[k] = eval(*e.args[size_t(k) + 1]);
      return slice(obj, p[0], p[1], p[2], e.line);
    }
    case Expr::Call: return call(e);
    case Expr::Filter: return filter(e);
    case Expr::Test: return Value(test(e));
    case Expr::Neg:
    case Expr::Pos: {
      Value x = eval(*e.args[0]);
      check_defined(x, e.line);
      if (!x.is_number()) runtime_error(e.line, "bad operand type for unary " + std::string(e.kind == Expr::Neg ? "-" : "+") + ": '" + x.type_name() + "'");
      if (e.kind == Expr::Pos) return x.is_bool() ? Value(as_int64(x)) : x;
      if (x.is_float()) return Value(-x.as_float());
      if (as_int64(x) == INT64_MIN) runtime_error(e.line, "integer overflow");
      return Value(-as_int64(x));
    }
    case Expr::Not: return Value(!eval(*e.args[0]).truthy());
    case Expr::Binary: return binary(e.name, operand(*e.args[0]), operand(*e.args[1]), e.line);
    case Expr::Compare: {
      Value left = operand(*e.args[0]);
      for (size_t k = 0; k < e.ops.size(); k++) {
        Value right = operand(*e.args[k + 1]);
        if (!compare(e.ops[k], left, right, e.line)) return Value(false);
        left = std::move(right);
      }
      return Value(true);
    }
    case Expr::And: {
      Value a = eval(*e.args[0]);
      return a.truthy() ? eval(*e.args[1]) : a;
    }
    case Expr::Or: {
      Value a = eval(*e.args[0]);
      return a.truthy() ? a : eval(*e.args[1]);
    }
    case Expr::Cond:
      if (eval(*e.args[0]).truthy()) return eval(*e.args[1]);
      return e.args[2] ? eval(*e.args[2]) : Value::undefined();
    case Expr::ListLit: {
      List l;
      for (auto& a : e.args) l.push_back(eval(*a));
      return Value(std::move(l));
    }
    case Expr::DictLit: {
      Dict d;
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        Value key = eval(*e.args[k]);
        if (!key.is_string()) runtime_error(e.line, "dict keys must be strings here");
        d.set(key.as_string(), eval(*e.args[k + 1]));
      }
      return Value(std::move(d));
    }
  }
  runtime_error(e.line, "internal error: unknown expression");
}

Flow Renderer::exec(const Node& n, std::string& out) {
  budget_.line = n.line;
  budget_.step();
  switch (n.kind) {
    case Node::Text: emit(out, n.text); break;
    case Node::Output: emit(out, eval(*n.expr).str()); break;
    case Node::If:
      for (auto& [cond, body] : n.branches)
        if (eval(*cond).truthy()) return exec(body, out);
      return exec(n.else_body, out);
    case Node::For: exec_for(n, out); break;
    case Node::Set:
      if (n.targets.size() == 2) {
        Value ns = lookup(n.targets[0]);
        if (!ns.is_dict() || !ns.as_dict().is_namespace)
          runtime_error(n.line, "cannot assign attribute on non-namespace object '" + n.targets[0] + "'");
        ns.as_dict().set(n.targets[1], eval(*n.expr));
      } else {
        assign(n.targets[0], eval(*n.expr));
      }
      break;
    case Node::SetBlock: {
      std::string captured;
      frames_.emplace_back();
      exec(n.body, captured);
      frames_.pop_back();
      assign(n.targets[0], Value(std::move(captured)));
      break;
    }
    case Node::Break: return Flow::Break;
    case Node::Continue: return Flow::Continue;
    case Node::Scope: return exec(n.body, out);
  }
  return Flow::Normal;
}

void Renderer::exec_for(const Node& n, std::string& out) {
  std::vector<Value> items = iterate(eval(*n.expr), n.line);
  auto bind = [&](const Value& item) {
    if (n.targets.size() == 1) {
      assign(n.targets[0], item);
      return;
    }
    std::vector<Value> parts = iterate(item, n.line);
    if (parts.size() != n.targets.size())
      runtime_error(n.line, "cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(n.targets.size()));
    for (size_t k = 0; k < parts.size(); k++) assign(n.targets[k], parts[k]);
  };
  if (n.filter) {  // the filter sees the loop variables but not `loop`
    std::vector<Value> kept;
    for (auto& it : items) {
      frames_.emplace_back();
      bind(it);
      bool keep = eval(*n.filter).truthy();
      frames_.pop_back();
      if (keep) kept.push_back(it);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    frames_.emplace_back();
    exec(n.else_body, out);
    frames_.pop_back();
    return;
  }
  const int64_t len = int64_t(items.size());
  for (int64_t k = 0; k < len; k++) {
    budget_.step(kStepsPerIteration);
    // Each iteration has its own scope: `set` inside a loop does not outlive the iteration (as jinja2).
    frames_.emplace_back();
    Dict loop;
    loop.set("index0", Value(k));
    loop.set("index", Value(k + 1));
    loop.set("revindex", Value(len - k));
    loop.set("revindex0", Value(len - k - 1));
    loop.set("first", Value(k == 0));
    loop.set("last", Value(k == len - 1));
    loop.set("length", Value(len));
    loop.set("previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("'loop.previtem' is undefined"));
    loop.set("nextitem", k + 1 < len ? items[size_t(k + 1)] : Value::undefined("'loop.nextitem' is undefined"));
    assign("loop", Value(std::move(loop)));
    bind(items[size_t(k)]);
    Flow f = exec(n.body, out);
    frames_.pop_back();
    if (f == Flow::Break) break;
  }
}

}  // namespace

Template::Template(std::string_view source) { body_ = Parser(lex(source)).parse_template(); }
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& globals, const RenderLimits& limits) const {
  Budget budget(limits);
  ActiveBudget active(budget);
  Renderer r(globals, budget);
  std::string out;
  r.exec(body_, out);
  return out;
}

}  // namespace oar::jinja
