// The Jinja2 subset of jinja.h: values with Python's semantics, the string helpers the other parts share, the
// render budget's per-thread state, and the Template API over the lexer (jinja_lexer.cpp), the parser
// (jinja_parser.cpp) and the evaluator (jinja_eval.cpp).
#include "chat/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "chat/jinja_internal.h"

namespace oar::jinja {

std::string TemplateError::one_line(const std::string& what) {
  if (what.empty()) return "chat template: error with an empty message";
  std::string out;
  out.reserve(what.size());
  for (char c : what) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if ((unsigned char)c < 0x20 || c == 0x7f) {  // a NUL would end what() early; others garble a terminal
      static const char hex[] = "0123456789abcdef";
      out += "\\x";
      out += hex[(unsigned char)c >> 4];
      out += hex[c & 15];
    } else {
      out += c;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------ string helpers
namespace detail {

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
std::string py_strip(std::string_view s, bool left, bool right, const std::string* chars) {
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

Budget*& active_budget() {
  static thread_local Budget* budget = nullptr;
  return budget;
}
int& ValueDepth::depth() {
  static thread_local int depth = 0;
  return depth;
}

}  // namespace detail

using namespace detail;

namespace {

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
  if (active_budget()) active_budget()->check_string(out.size());
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

// ------------------------------------------------------------------------------------------------ Template
Template::Template(std::string_view source) { body_ = parse(lex(source)); }
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& globals, const RenderLimits& limits) const {
  return detail::render(body_, globals, limits);
}


}  // namespace oar::jinja
