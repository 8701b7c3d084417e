// The parser of the Jinja subset: recursive descent with Jinja's operator precedence, refusing unsupported
// constructs by name and nesting deeper than kMaxNestingDepth.
#include <algorithm>
#include <set>

#include "chat/jinja_internal.h"

namespace oar::jinja::detail {
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

Body parse(std::vector<Token> tokens) { return Parser(std::move(tokens)).parse_template(); }

}  // namespace oar::jinja::detail
