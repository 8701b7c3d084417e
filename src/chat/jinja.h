// A small Jinja2 interpreter for chat templates: the subset that real chat templates (Llama-2, Llama-3,
// Mistral, Qwen2 and the like) use, rendered exactly as Hugging Face's apply_chat_template renders them
// (jinja2 with trim_blocks, lstrip_blocks and loop controls; Python semantics for values; HF's tojson,
// raise_exception and strftime_now).
//
// Supported: {{ }}, {% if/elif/else %}, {% for x in xs [if cond] %} with {% else %}, loop.index/index0/
// revindex/revindex0/first/last/length/previtem/nextitem, {% break/continue %}, {% set x = ... %} (also
// ns.attr with namespace() and {% set x %}...{% endset %}), {% generation %}, {# comments #}, whitespace
// control ({%- -%} {%+ +%}), literals (strings, numbers, lists, tuples, dicts, true/false/none), arithmetic,
// ~, comparisons (chained), in / not in, and / or / not, x if c else y, attribute and item access, slices,
// a fixed set of filters, tests, string and dict methods and global functions. Anything else (macros,
// includes, unknown filters or methods, ...) is refused by name when the template is parsed, not when a
// request happens to reach it.
//
// Templates are untrusted input (a model's tokenizer_config.json), so every one is bounded twice over: when
// parsed, by one nesting limit (kMaxNestingDepth) on everything that makes the syntax tree deeper, so that
// neither the evaluator nor the tree's destructor can exhaust a thread's stack; when rendered, by a budget
// (RenderLimits) on time and memory, and a cancellation hook.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/error.h"

namespace oar::jinja {

class Value;
using List = std::vector<Value>;
struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python dicts
  bool is_namespace = false;                         // namespace(): the only object `set x.attr` may change
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(const std::string& key, Value v);
};

// A Python-like value. Lists and dicts are shared (reference semantics, as in Python).
class Value {
 public:
  struct Undefined {
    std::string name;  // the error message that using it gives ("'x' is undefined")
  };
  struct None {};
  using ListPtr = std::shared_ptr<List>;
  using DictPtr = std::shared_ptr<Dict>;
  using StrPtr = std::shared_ptr<const std::string>;  // shared: copying a value never copies its text

  Value() : v_(Undefined{}) {}
  static Value undefined(std::string name = "") { return Value(Undefined{std::move(name)}); }
  static Value none() { return Value(None{}); }
  Value(bool b) : v_(b) {}
  Value(int64_t i) : v_(i) {}
  Value(int i) : v_(int64_t(i)) {}
  Value(double d) : v_(d) {}
  Value(std::string s) : v_(std::make_shared<const std::string>(std::move(s))) {}
  Value(const char* s) : Value(std::string(s)) {}
  Value(List l);
  Value(Dict d);
  static Value from_json(const nlohmann::json& j);

  bool is_undefined() const { return std::holds_alternative<Undefined>(v_); }
  bool is_none() const { return std::holds_alternative<None>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_int() const { return std::holds_alternative<int64_t>(v_); }
  bool is_float() const { return std::holds_alternative<double>(v_); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<StrPtr>(v_); }
  bool is_list() const { return std::holds_alternative<ListPtr>(v_); }
  bool is_dict() const { return std::holds_alternative<DictPtr>(v_); }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  const std::string& as_string() const { return *std::get<StrPtr>(v_); }
  List& as_list() const { return *std::get<ListPtr>(v_); }
  Dict& as_dict() const { return *std::get<DictPtr>(v_); }
  const std::string& undefined_name() const { return std::get<Undefined>(v_).name; }
  const DictPtr& dict_ptr() const { return std::get<DictPtr>(v_); }  // the shared dict itself

  bool truthy() const;               // Python's bool()
  std::string str() const;           // Python's str() ("" for undefined), as {{ }} prints it
  std::string repr() const;          // Python's repr()
  std::string type_name() const;     // Python's type name, for error messages

 private:
  explicit Value(Undefined u) : v_(std::move(u)) {}
  explicit Value(None n) : v_(n) {}
  std::variant<Undefined, None, bool, int64_t, double, StrPtr, ListPtr, DictPtr> v_;
};

// A template error: one line, "chat template: line N: ...". TemplateRaised is raise_exception(msg) from the
// template itself (the conversation is what the template refuses). The message is made one non-empty line here
// (line breaks written as \n, \r, a tab as \t, other control bytes such as NUL as \xNN), since raise_exception's
// text and quoted template text may hold them.
class TemplateError : public Error {
 public:
  explicit TemplateError(const std::string& what) : Error(one_line(what)) {}

 private:
  static std::string one_line(const std::string& what);
};
class TemplateRaised : public TemplateError {
 public:
  using TemplateError::TemplateError;
};
// The render needed more than its RenderLimits allow ("chat template: line N: render budget exceeded: ...").
class RenderLimitExceeded : public TemplateError {
 public:
  using TemplateError::TemplateError;
};
// RenderLimits::cancelled asked the render to stop (not the template's fault, so not a TemplateError).
class RenderCancelled : public Error {
 public:
  using Error::Error;
};

// The deepest nesting a template may have: statement blocks, brackets, and every operator, filter, test,
// attribute or item access, call and literal that makes the syntax tree deeper count one level each (a chain
// like x|trim|trim|... or 1+1+... is as deep as it is long). Real chat templates stay below 40.
inline constexpr int kMaxNestingDepth = 200;

// What one render may spend. The defaults take real chat templates a few milliseconds at most, and a hostile
// one under a second and some tens of MiB before it fails with RenderLimitExceeded.
struct RenderLimits {
  // Work: one step per statement executed, expression evaluated and loop iteration, per list element a
  // builtin walks or builds, and per kBytesPerStep bytes of text it reads or writes.
  int64_t max_steps = 4'000'000;
  static constexpr size_t kBytesPerStep = 16;
  size_t max_string_bytes = size_t(16) << 20;  // the longest string, the rendered text included
  size_t max_list_items = 100'000;             // the longest list, and range()'s length (jinja2's sandbox limit)
  // Polled every few thousand steps; returning true stops the render with RenderCancelled (a client that has
  // gone away, a server shutting down).
  std::function<bool()> cancelled;
};

struct Node;

class Template {
 public:
  // Parses the whole template; throws TemplateError for syntax errors and unsupported constructs.
  explicit Template(std::string_view source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;
  // Renders with `globals` (a dict) as the template's variables. Throws TemplateError (TemplateRaised,
  // RenderLimitExceeded) or RenderCancelled.
  std::string render(const Value& globals, const RenderLimits& limits = {}) const;

 private:
  std::vector<std::unique_ptr<Node>> body_;
};

}  // namespace oar::jinja
