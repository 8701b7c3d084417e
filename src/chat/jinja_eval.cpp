// The evaluator of the Jinja subset: a tree walk with Python's value semantics, within the render budget.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>

#include "chat/jinja_internal.h"

namespace oar::jinja::detail {
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
  // `set ns.attr` is the only way to change a value once made, so every cycle of shared values passes through
  // a namespace ({% set ns.l = [ns] %}); emptying them all when the render ends frees the cycles.
  ~Renderer() {
    for (auto& ns : namespaces_) ns->items.clear();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

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
  std::vector<Value::DictPtr> namespaces_;  // the namespaces this render made that may still be in use
  size_t namespaces_kept_ = 0;              // how many the last pass of track_namespace() kept

  // A namespace only namespaces_ refers to is unreachable, and in no cycle: dropped, so that a loop that makes
  // namespaces holds no more than those in use. A pass runs each time the list doubles (amortised constant cost).
  Value track_namespace(Dict d) {
    if (namespaces_.size() >= std::max<size_t>(64, 2 * namespaces_kept_)) {
      std::erase_if(namespaces_, [](const Value::DictPtr& ns) { return ns.use_count() == 1; });
      namespaces_kept_ = namespaces_.size();
    }
    Value v(std::move(d));
    namespaces_.push_back(v.dict_ptr());
    return v;
  }
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
    return track_namespace(std::move(d));
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

std::string render(const Body& body, const Value& globals, const RenderLimits& limits) {
  Budget budget(limits);
  ActiveBudget active(budget);
  Renderer r(globals, budget);
  std::string out;
  r.exec(body, out);
  return out;
}

}  // namespace oar::jinja::detail
