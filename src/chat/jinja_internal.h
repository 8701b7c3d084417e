// Internals of the Jinja subset of jinja.h, shared by its parts: jinja_lexer.cpp (template text to tokens),
// jinja_parser.cpp (tokens to the syntax tree below), jinja_eval.cpp (rendering a tree) and jinja.cpp (values,
// string helpers, the render budget and the public API). Only those files include it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja.h"

namespace oar::jinja {

// ---- the syntax tree
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

namespace detail {

// ---- UTF-8 and Python string helpers (jinja.cpp)
// Byte length of the UTF-8 sequence starting at s[i] (1 for a stray byte: strings stay walkable).
size_t u8len(std::string_view s, size_t i);
uint32_t u8decode(std::string_view s, size_t i, size_t n);
// The code points of s, each as its byte substring (Python indexes, slices and iterates strings by code point).
std::vector<std::string_view> code_points(std::string_view s);
size_t code_point_count(std::string_view s);  // len()
bool py_space(uint32_t c);                     // str.isspace()
// str.strip / lstrip / rstrip; `chars` null means whitespace.
std::string py_strip(std::string_view s, bool left, bool right, const std::string* chars = nullptr);
std::string ascii_lower(std::string s);
std::string ascii_upper(std::string s);
bool ascii_alpha(char c);
std::string py_float_repr(double x);          // repr() of a float
std::string py_str_repr(const std::string& s);  // repr() of a str
std::string json_str(const std::string& s);   // json.dumps() of a str, ensure_ascii=False

// ---- the render budget
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
// This thread's budget, or null. An accessor rather than an extern thread_local: GCC 12's UBSan reports stores to
// an extern thread_local defined in another file as stores through a null pointer.
Budget*& active_budget();


// Builders that loop check as they grow, so that a result far over the limit is never built.
inline void check_growing_string(size_t n) {
  if (active_budget()) active_budget()->check_string(n);
}
inline void check_growing_list(size_t n) {
  if (active_budget()) active_budget()->check_items(n);
}

// Makes `b` this thread's budget for the lifetime of the guard.
class ActiveBudget {
 public:
  explicit ActiveBudget(Budget& b) : prev_(active_budget()) { active_budget() = &b; }
  ~ActiveBudget() { active_budget() = prev_; }
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
    if (++depth() > 512) {
      --depth();
      throw TemplateError("chat template: a value is nested too deeply");
    }
    if (active_budget()) {
      try {
        active_budget()->step();
      } catch (...) {
        --depth();
        throw;
      }
    }
  }
  ~ValueDepth() { --depth(); }

 private:
  static int& depth();  // this thread's nesting (an accessor, as active_budget())
};

// ---- lexer (jinja_lexer.cpp)
enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // data, name, operator, or the unescaped string
  int line = 1;
  int64_t ival = 0;
  double fval = 0;
};

[[noreturn]] inline void syntax_error(int line, const std::string& what) {
  throw TemplateError("chat template: line " + std::to_string(line) + ": " + what);
}

// The tokens of a template, with Jinja's whitespace rules applied to its text.
std::vector<Token> lex(std::string_view source);

// ---- parser (jinja_parser.cpp)
// The template's statements; throws TemplateError for syntax errors, unsupported constructs and nesting
// deeper than kMaxNestingDepth.
Body parse(std::vector<Token> tokens);

// ---- evaluator (jinja_eval.cpp)
std::string render(const Body& body, const Value& globals, const RenderLimits& limits);

}  // namespace detail
}  // namespace oar::jinja
