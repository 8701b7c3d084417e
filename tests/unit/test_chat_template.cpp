// Chat templates: the Jinja subset against Hugging Face's apply_chat_template (fixtures made by
// tests/reference/make_chat_template_fixtures.py), load-time refusal of unsupported constructs, the built-in
// Llama-2 / Llama-3 choice by vocabulary, and tokenization of the rendered text.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace oar {
namespace {

using nlohmann::json;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
json fixture(const std::string& name) { return json::parse(slurp(std::string(OAR_FIXTURES_DIR) + "/chat/" + name + ".json")); }

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

void check_template_fixture(const std::string& name) {
  SCOPED_TRACE(name);
  json fx = fixture(name);
  ChatTemplate t(fx["template"].get<std::string>(), name, fx["bos_token"].get<std::string>(),
                 fx["eos_token"].get<std::string>());
  ASSERT_FALSE(fx["cases"].empty());
  for (auto& c : fx["cases"]) {
    SCOPED_TRACE(c["conversation"].get<std::string>() + (c["add_generation_prompt"].get<bool>() ? " +gen" : ""));
    auto msgs = messages_of(c["messages"]);
    bool gen = c["add_generation_prompt"].get<bool>();
    if (c.contains("expected")) {
      EXPECT_EQ(t.render(msgs, gen), c["expected"].get<std::string>());
    } else {
      // HF reports raise_exception(msg) as exactly msg.
      try {
        t.render(msgs, gen);
        ADD_FAILURE() << "expected an error: " << c["error"];
      } catch (const jinja::TemplateRaised& e) {
        EXPECT_EQ(std::string(e.what()), c["error"].get<std::string>());
      }
    }
  }
}

TEST(ChatTemplate, BuiltinLlama2MatchesTransformers) { check_template_fixture("builtin_llama2"); }
TEST(ChatTemplate, BuiltinLlama3MatchesTransformers) { check_template_fixture("builtin_llama3"); }
TEST(ChatTemplate, MistralStyleMatchesTransformers) { check_template_fixture("mistral_style"); }
TEST(ChatTemplate, Qwen2StyleMatchesTransformers) { check_template_fixture("qwen2_style"); }
TEST(ChatTemplate, ManyConstructsMatchTransformers) { check_template_fixture("features"); }
TEST(ChatTemplate, RealLlama3TemplateMatchesTransformers) { check_template_fixture("llama3_real"); }

TEST(ChatTemplate, FixtureCopiesOfBuiltinsAreCurrent) {
  EXPECT_EQ(fixture("builtin_llama2")["template"].get<std::string>(), builtin_llama2_chat_template());
  EXPECT_EQ(fixture("builtin_llama3")["template"].get<std::string>(), builtin_llama3_chat_template());
}

TEST(Jinja, ExpressionsAndStatementsMatchJinja2) {
  json fx = fixture("semantics");
  int n = 0;
  for (auto& c : fx["cases"]) {
    const std::string src = c["template"].get<std::string>();
    SCOPED_TRACE(src);
    jinja::Value vars = jinja::Value::from_json(c["vars"]);
    if (c.contains("expected")) {
      try {
        EXPECT_EQ(jinja::Template(src).render(vars), c["expected"].get<std::string>());
      } catch (const Error& e) {
        ADD_FAILURE() << "threw " << e.what();
      }
    } else {
      // Errors may surface when parsing (jinja2 also refuses some at compile time) or when rendering.
      EXPECT_THROW(jinja::Template(src).render(vars), jinja::TemplateError) << c["error"];
    }
    n++;
  }
  EXPECT_GT(n, 50);
}

TEST(Jinja, RaiseExceptionCarriesTheTemplatesMessage) {
  jinja::Template t("{% if messages|length == 0 %}{{ raise_exception('need ' ~ 'messages') }}{% endif %}ok");
  jinja::Dict g;
  g.set("messages", jinja::Value(jinja::List{}));
  try {
    t.render(jinja::Value(g));
    FAIL();
  } catch (const jinja::TemplateRaised& e) {
    EXPECT_STREQ(e.what(), "need messages");
  }
}

// Errors reach logs and the CLI as one line: a message the template builds with line breaks, or an empty one,
// must not break that (the fuzzer found raise_exception('a\nb'), and one with a NUL byte that ended what()).
TEST(Jinja, ErrorsAreOneNonEmptyLineWhateverTheTemplateRaises) {
  const std::pair<const char*, const char*> cases[] = {
      {"{{ raise_exception('first\\nsecond\\r') }}", "first\\nsecond\\r"},
      {"{{ raise_exception('') }}", "chat template: error with an empty message"},
      {"{{ raise_exception('\\x00a\\tb\\x7f') }}", "\\x00a\\tb\\x7f"},
  };
  for (const auto& [source, message] : cases) {
    jinja::Template t(source);
    try {
      t.render(jinja::Value(jinja::Dict{}));
      ADD_FAILURE() << source;
    } catch (const jinja::TemplateRaised& e) {
      EXPECT_STREQ(e.what(), message) << source;
    }
  }
}

TEST(Jinja, UnsupportedConstructsAreRefusedWhenParsed) {
  const std::pair<const char*, const char*> cases[] = {
      {"{% macro f() %}x{% endmacro %}", "unsupported tag 'macro'"},
      {"{% include 'x' %}", "unsupported tag 'include'"},
      {"{% raw %}x{% endraw %}", "unsupported tag 'raw'"},
      {"{% filter upper %}x{% endfilter %}", "unsupported tag 'filter'"},
      {"{{ x | wordwrap }}", "unsupported filter 'wordwrap'"},
      {"{{ x is sameas y }}", "unsupported test 'sameas'"},
      {"{{ lipsum() }}", "unsupported function 'lipsum'"},
      {"{{ x.format(1) }}", "unsupported method 'format'"},
      {"{% for x in y recursive %}{% endfor %}", "recursive"},
      {"{{ x", "expected '}}'"},
      {"{% if x %}", "expected 'endif'"},
      {"{% endfor %}", "unexpected 'endfor'"},
      {"{% break %}", "outside of a for loop"},
      {"{{ 'abc }}", "unterminated string"},
      {"{# never closed", "missing end of comment"},
      {"{{ f(*args) }}", "unsupported function 'f'"},
      {"{{ x ? y }}", "unexpected character '?'"},
      {"{{ (1 }}", "expected ')'"},
  };
  for (auto& [src, want] : cases) {
    SCOPED_TRACE(src);
    try {
      jinja::Template t(src);
      ADD_FAILURE() << "parsed";
    } catch (const jinja::TemplateError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "errors are one line";
    }
  }
  // ChatTemplate names where the template came from.
  try {
    ChatTemplate t("{% macro m() %}{% endmacro %}", "model/tokenizer_config.json", "", "");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model/tokenizer_config.json"), std::string::npos) << e.what();
  }
}

TEST(Jinja, DeepNestingIsAnErrorNotACrash) {
  EXPECT_THROW(jinja::Template("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"), jinja::TemplateError);
  EXPECT_THROW(jinja::Template("{{ " + std::string(100000, '[') + std::string(100000, ']') + " }}"), jinja::TemplateError);
  EXPECT_THROW(jinja::Template("{{ " + std::string(100000, '-') + "1 }}"), jinja::TemplateError);
  std::string blocks;
  for (int i = 0; i < 1000; i++) blocks += "{% if true %}";
  EXPECT_THROW(jinja::Template(blocks + "x"), jinja::TemplateError);
  // A value grown deeper and deeper in a loop cannot be printed, but fails cleanly.
  jinja::Template deep("{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                       "{{ ns.x }}");
  EXPECT_THROW(deep.render(jinja::Value(jinja::Dict{})), jinja::TemplateError);
  // Moderate nesting is fine.
  EXPECT_EQ(jinja::Template("{{ " + std::string(15, '(') + "1" + std::string(15, ')') + " }}").render(jinja::Value(jinja::Dict{})), "1");
}

// ---- hardening: nesting limit, render budget, cancellation

// CPU seconds `f` takes on this thread (not wall time: a loaded machine must not fail the test).
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}
template <class F>
double seconds_of(F&& f) {
  double t0 = thread_cpu_seconds();
  f();
  return thread_cpu_seconds() - t0;
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; i++) out += s;
  return out;
}

// `f` run on a thread with only `stack_bytes` of stack (a recursion that the limits let through would crash).
void on_small_stack(size_t stack_bytes, std::function<void()> f) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack_bytes);
  pthread_t th;
  auto body = [](void* p) -> void* {
    (*static_cast<std::function<void()>*>(p))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&th, &attr, body, &f), 0);
  pthread_join(th, nullptr);
  pthread_attr_destroy(&attr);
}

jinja::Value no_vars() { return jinja::Value(jinja::Dict{}); }

// Every construct that makes the syntax tree deeper, chained long: refused when parsed, by the one nesting limit.
std::vector<std::pair<std::string, std::string>> long_chains(int n) {
  return {
      {"filters", "{{ x" + repeat("|trim", n) + " }}"},
      {"binary operators", "{{ 1" + repeat("+1", n) + " }}"},
      {"concatenation", "{{ 'a'" + repeat("~'a'", n) + " }}"},
      {"and", "{{ x" + repeat(" and x", n) + " }}"},
      {"attributes", "{{ a" + repeat(".b", n) + " }}"},
      {"subscripts", "{{ m" + repeat("[0]", n) + " }}"},
      {"method calls", "{{ s" + repeat(".strip()", n) + " }}"},
      {"tests", "{{ x" + repeat(" is defined", n) + " }}"},
      {"not", "{{ " + repeat("not ", n) + "x }}"},
      {"unary minus", "{{ " + repeat("-", n) + "1 }}"},
      {"conditional chain", "{{ 1" + repeat(" if x", n) + " }}"},
      {"else chain", "{{ 1" + repeat(" if x else 1", n) + " }}"},
      {"nested lists", "{{ " + repeat("[", n) + repeat("]", n) + " }}"},
      {"nested dicts", "{{ " + repeat("{'k': ", n) + "1" + repeat("}", n) + " }}"},
      {"nested calls", "{{ " + repeat("namespace(x=", n) + "1" + repeat(")", n) + " }}"},
      {"parentheses", "{{ " + repeat("(", n) + "1" + repeat(")", n) + " }}"},
      {"blocks", repeat("{% if true %}", n) + "x" + repeat("{% endif %}", n)},
  };
}

TEST(Jinja, LongChainsAreRefusedWhenParsed) {
  for (int n : {jinja::kMaxNestingDepth + 1, 20000, 100000}) {
    for (auto& [what, src] : long_chains(n)) {
      SCOPED_TRACE(what + " x" + std::to_string(n));
      double s = seconds_of([&, &src = src] {
        try {
          jinja::Template t(src);
          ADD_FAILURE() << "parsed";
        } catch (const jinja::TemplateError& e) {
          EXPECT_NE(std::string(e.what()).find("nested too deeply: more than " +
                                               std::to_string(jinja::kMaxNestingDepth) + " levels"),
                    std::string::npos)
              << e.what();
        }
      });
      EXPECT_LT(s, 2.0);
    }
  }
  // Loading names the template's source and the limit.
  try {
    ChatTemplate t("{{ messages" + repeat("|trim", 20000) + " }}", "model/tokenizer_config.json", "", "");
    FAIL() << "loaded";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_EQ(what.rfind("model/tokenizer_config.json: chat template: line 1: nested too deeply: more than 200", 0), 0u)
        << what;
  }
}

// ASan's frames are several times larger than a release build's (8 MiB: the stack of a pool thread), and its
// checks make evaluation about 10x slower.
#ifdef OAR_SANITIZE
constexpr size_t kSmallStack = size_t(8) << 20;
constexpr double kSanitizerSlowdown = 10;
#else
constexpr size_t kSmallStack = size_t(2) << 20;
constexpr double kSanitizerSlowdown = 1;
#endif

TEST(Jinja, ChainsWithinTheLimitRenderOnASmallStack) {
  // A quarter of the nesting limit deep: real templates stay far below; these render and evaluate right.
  const int n = jinja::kMaxNestingDepth / 4;
  jinja::Dict d;
  d.set("x", jinja::Value("  a  "));
  jinja::Value vars(std::move(d));
  EXPECT_EQ(jinja::Template("{{ x" + repeat("|trim", n) + " }}").render(vars), "a");
  EXPECT_EQ(jinja::Template("{{ 1" + repeat("+1", n) + " }}").render(vars), std::to_string(n + 1));
  EXPECT_EQ(jinja::Template("{{ [" + repeat("[", n / 2) + repeat("]", n / 2) + "]|length }}").render(vars), "1");
  // The deepest trees the limit lets through parse, render and are freed within 2 MiB of stack (a thread of
  // httplib's pool has 8 MiB; a release build needs under 256 KiB, sanitizers a few times that): the
  // evaluator and the destructor recurse no deeper than the limit.
  on_small_stack(kSmallStack, [&] {
    for (int len = jinja::kMaxNestingDepth - 8; len <= jinja::kMaxNestingDepth; len++) {
      for (auto& [what, src] : long_chains(len)) {
        try {
          jinja::Template t(src);
          t.render(vars);
        } catch (const jinja::TemplateError&) {  // over the limit, or an error of the value: either is fine
        }
      }
    }
  });
}

TEST(Jinja, DeeplyNestedValuesAreFreedWithoutRecursion) {
  // 100,000 levels of [[[...]]] built in a loop: freed one after another, not recursively.
  on_small_stack(1 << 20, [] {  // recursively, freeing it would take tens of MiB
    jinja::Template t("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}"
                      "{% endfor %}done");
    EXPECT_EQ(t.render(no_vars()), "done");
  });
}

long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

TEST(Jinja, HostileTemplatesExhaustTheBudgetQuicklyAndInBoundedMemory) {
  const std::string big = "{% set s = 'x' * 4000000 %}";  // 4 MB, within the string limit
  const std::string doubling = "{% set ns = namespace(l=['xxxxxxxx']) %}{% for i in range(60) %}"
                               "{% set ns.l = [ns.l, ns.l] %}{% endfor %}";  // 2^60 leaves, shared
  const std::pair<std::string, std::string> cases[] = {
      {"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "evaluation steps"},
      {"{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}", "evaluation steps"},
      {"{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
       "render budget exceeded"},
      {"{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
       "render budget exceeded"},
      {"{% set ns = namespace(l=[1]) %}{% for i in range(100) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
       "a list of more than"},
      {"{{ 'x' * 100000000000 }}", "a string of more than"},
      {"{{ [1, 2] * 100000000000 }}", "a list of more than"},
      {"{{ range(1000000)|length }}", "a list of more than"},
      {"{{ range(-9223372036854775807, 9223372036854775807)|length }}", "a list of more than"},
      {big + "{% for c in s %}{% endfor %}", "a list of more than"},
      {big + "{{ s.split('x')|length }}", "a list of more than"},
      {big + "{{ s|replace('x', 'yyyyy') }}", "a string of more than"},
      {big + "{{ s.replace('', 'yyyy') }}", "a string of more than"},
      {big + "{{ [s, s, s, s, s]|join }}", "a string of more than"},
      {big + "{{ [s, s, s, s, s]|tojson }}", "a string of more than"},
      {big + "{{ [s, s, s, s, s] }}", "a string of more than"},
      {big + "{% for i in range(100000) %}{{ s|length }}{% endfor %}", "evaluation steps"},
      {big + "{% for i in range(100000) %}{% if 'y' in s %}{% endif %}{% endfor %}", "evaluation steps"},
      {big + "{% for i in range(100000) %}{{ s[0] }}{% endfor %}", "evaluation steps"},
      {big + "{% for i in range(10) %}{{ s }}{% endfor %}", "a string of more than"},
      {doubling + "{{ ns.l }}", "render budget exceeded"},
      {doubling + "{{ ns.l|tojson }}", "render budget exceeded"},
      {doubling + "{{ ns.l == ns.l }}", "evaluation steps"},
      {doubling + "{{ ns.l|string|length }}", "render budget exceeded"},
  };
  const long rss_before = peak_rss_kib();
  for (auto& [src, want] : cases) {
    SCOPED_TRACE(src);
    jinja::Template t(src);
    double s = seconds_of([&, &want = want] {
      try {
        t.render(no_vars());
        ADD_FAILURE() << "rendered";
      } catch (const jinja::RenderLimitExceeded& e) {
        std::string what = e.what();
        EXPECT_EQ(what.rfind("chat template: line 1: render budget exceeded: ", 0), 0u) << what;
        EXPECT_NE(what.find(want), std::string::npos) << what;
      }
    });
    EXPECT_LT(s, 2.0 * kSanitizerSlowdown);
  }
  // Memory stays bounded: the peak grew by less than 512 MiB over all of them (ASan's shadow and redzones: 2 GiB).
  EXPECT_LT(peak_rss_kib() - rss_before, (512L << 10) * (kSanitizerSlowdown > 1 ? 4 : 1));

  // What used to hang or copy without end now completes at once: powers of 0, 1, -1, empty sequences times
  // anything, and a long string passed around (values share their text).
  for (const std::pair<const char*, const char*>& ok : {
           std::pair{"{{ 1 ** 9223372036854775807 }}", "1"},
           {"{{ (-1) ** 9223372036854775807 }}", "-1"},
           {"{{ 0 ** 9223372036854775807 }}", "0"},
           {"{{ '' * 9223372036854775807 }}{{ [] * 9223372036854775807 }}", "[]"},
           {"{% set s = 'x' * 4000000 %}{% for i in range(100000) %}{% set t = s %}{% set u = [t] %}{% endfor %}ok",
            "ok"}}) {
    SCOPED_TRACE(ok.first);
    double s = seconds_of([&] { EXPECT_EQ(jinja::Template(ok.first).render(no_vars()), ok.second); });
    EXPECT_LT(s, 2.0);
  }
}

// A namespace that holds itself, directly or through lists and other namespaces, makes a cycle of shared
// values; the render frees it all the same, also when it ends in an error (the ASan build's leak check fails
// this test otherwise; the chat-template fuzzer found it).
TEST(Jinja, CyclesThroughNamespacesAreFreed) {
  const jinja::Value none(jinja::Dict{});
  EXPECT_EQ(jinja::Template("{% set ns = namespace(x=1) %}{% set ns.me = ns %}{{ ns.me.me.me.x }}").render(none), "1");
  EXPECT_EQ(jinja::Template("{% set a = namespace(x=2) %}{% set b = namespace(a=a) %}{% set a.b = [b] %}"
                            "{{ a.b[0].a.b[0].a.x }}").render(none),
            "2");
  EXPECT_EQ(jinja::Template("{% set ns = namespace(l=['x']) %}{% for i in range(60) %}{% set ns.l = [ns.l, ns] %}"
                            "{% endfor %}{{ ns.l|length }}{{ ns.l == ns.l }}")
                .render(none),
            "2True");
  EXPECT_THROW(jinja::Template("{% set ns = namespace() %}{% set ns.me = {'d': [ns]} %}{{ raise_exception('no') }}")
                   .render(none),
               jinja::TemplateRaised);
}

// Resident memory of this process now, in KiB (/proc/self/statm).
long rss_kib() {
  long pages = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> pages >> resident;
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

// The render keeps the namespaces it made, to free their cycles at the end, but not those out of use: a loop
// making a namespace of 1,500 items in each of 2,000 iterations (120 MB were they all kept) holds a few at a time.
TEST(Jinja, NamespacesOutOfUseAreFreedDuringTheRender) {
  if (kSanitizerSlowdown > 1) GTEST_SKIP() << "ASan's quarantine keeps freed memory resident";
  const long before = rss_kib();
  long most = before;
  int polls = 0;
  jinja::RenderLimits watch;
  watch.cancelled = [&] {  // polled every few thousand steps
    most = std::max(most, rss_kib());
    polls++;
    return false;
  };
  jinja::Template t("{% for i in range(2000) %}{% set ns = namespace(l=range(1500)) %}"
                    "{% if loop.last %}{{ ns.l|length }}{% endif %}{% endfor %}");
  EXPECT_EQ(t.render(no_vars(), watch), "1500");
  EXPECT_GT(polls, 100);
  EXPECT_LT(most - before, 40L << 10);
}

TEST(Jinja, RenderLimitsAreTheCallers) {
  jinja::Template t("{% for i in range(100) %}{{ i }}{% endfor %}");
  jinja::RenderLimits tight;
  tight.max_steps = 50;
  EXPECT_THROW(t.render(no_vars(), tight), jinja::RenderLimitExceeded);
  jinja::RenderLimits short_strings;
  short_strings.max_string_bytes = 100;
  EXPECT_THROW(t.render(no_vars(), short_strings), jinja::RenderLimitExceeded);
  jinja::RenderLimits short_lists;
  short_lists.max_list_items = 99;
  EXPECT_THROW(t.render(no_vars(), short_lists), jinja::RenderLimitExceeded);
  std::string all;
  for (int i = 0; i < 100; i++) all += std::to_string(i);
  EXPECT_EQ(t.render(no_vars()), all);
}

TEST(Jinja, CancellationStopsARenderInProgress) {
  jinja::Template t("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}");
  jinja::RenderLimits unbounded;
  unbounded.max_steps = INT64_MAX / 2;
  unbounded.max_string_bytes = size_t(1) << 40;
  std::atomic<bool> stop{false};
  int64_t polls = 0;
  unbounded.cancelled = [&] {
    polls++;
    return stop.load();
  };
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop = true;
  });
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(t.render(no_vars(), unbounded), jinja::RenderCancelled);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  canceller.join();
  EXPECT_GE(s, 0.09);
  EXPECT_LT(s, 1.0);
  EXPECT_GT(polls, 1);
  // ChatTemplate passes its caller's hook on; a cancellation is not a template error.
  ChatTemplate ct(builtin_llama3_chat_template(), "test", "", "");
  try {
    ct.render({{"user", std::string(100000, 'x')}}, true, [] { return true; });
    FAIL() << "rendered";
  } catch (const jinja::TemplateError&) {
    FAIL() << "a cancellation reported as a template error";
  } catch (const jinja::RenderCancelled& e) {
    EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos);
  }
}

TEST(ChatTemplate, BudgetGrowsWithTheConversation) {
  ChatTemplate t(builtin_llama3_chat_template(), "test", "<s>", "</s>");
  jinja::RenderLimits small;
  small.max_steps = 2000;
  small.max_string_bytes = 1000;
  t.set_render_limits(small);
  std::vector<ChatMessage> msgs;
  for (int i = 0; i < 100; i++) msgs.push_back({i % 2 ? "assistant" : "user", std::string(10000, 'a' + i % 26)});
  std::string text = t.render(msgs, true);  // 1 MB: far over the small limits, which grow with it
  EXPECT_GT(text.size(), 1000000u);
  EXPECT_NE(text.find(std::string(10000, 'z')), std::string::npos);
  // The template itself gets no more than its limits: a loop is still stopped.
  ChatTemplate loop("{% for i in range(100000) %}{% for m in messages %}{{ m.content|length }}{% endfor %}{% endfor %}",
                    "test", "", "");
  loop.set_render_limits(small);
  EXPECT_THROW(loop.render(msgs, true), jinja::RenderLimitExceeded);
}

TEST(Jinja, RuntimeErrorsAreTemplateErrors) {
  jinja::Value none = jinja::Value(jinja::Dict{});
  for (const char* src : {"{{ x.y }}", "{{ 1 + 'a' }}", "{{ 1 // 0 }}", "{{ range(1000000)|length }}",
                          "{% for a, b in [[1]] %}{% endfor %}", "{{ none.x.y }}", "{{ 'a' * 100000000000 }}",
                          "{{ 9223372036854775807 + 1 }}", "{{ {}|tojson(sort_keys=true) }}"}) {
    SCOPED_TRACE(src);
    EXPECT_THROW(jinja::Template(src).render(none), jinja::TemplateError);
  }
}

// A byte-level BPE tokenizer.json from the tokenizer fixtures, with extra special tokens.
std::unique_ptr<Tokenizer> bpe_with_specials(const std::vector<std::string>& extra) {
  json j = json::parse(slurp(std::string(OAR_FIXTURES_DIR) + "/tokenizers/bpe/tokenizer.json"));
  int32_t next = 0;
  for (auto& [k, v] : j["model"]["vocab"].items()) next = std::max(next, v.get<int32_t>() + 1);
  for (auto& t : j["added_tokens"]) next = std::max(next, t["id"].get<int32_t>() + 1);
  for (auto& s : extra)
    j["added_tokens"].push_back({{"id", next++}, {"content", s}, {"single_word", false}, {"lstrip", false},
                                 {"rstrip", false}, {"normalized", false}, {"special", true}});
  return parse_bpe_json(j.dump(), "test tokenizer.json");
}

TEST(ChatTemplate, BuiltinChosenByVocabulary) {
  auto plain = bpe_with_specials({});
  EXPECT_EQ(plain->chat_template(), "");
  EXPECT_EQ(ChatTemplate::for_tokenizer(*plain).source(), builtin_llama2_chat_template());
  auto l3 = bpe_with_specials({"<|start_header_id|>", "<|end_header_id|>"});
  ChatTemplate t = ChatTemplate::for_tokenizer(*l3);
  EXPECT_EQ(t.source(), builtin_llama3_chat_template());
  EXPECT_NE(t.origin().find("Llama-3"), std::string::npos);
  // The Llama-3 header tokens come out as single special ids.
  std::vector<int32_t> ids = t.encode(*l3, {{"user", "hi"}}, true);
  std::vector<int32_t> head = l3->encode("<|start_header_id|>", false);
  ASSERT_EQ(head.size(), 1u);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), head[0]), 2);
}

TEST(ChatTemplate, TokenizerTemplateWinsAndEncodesWithoutAddedBos) {
  auto tok = load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/bpe");
  ASSERT_FALSE(tok->chat_template().empty());
  ChatTemplate t = ChatTemplate::for_tokenizer(*tok);
  EXPECT_EQ(t.source(), tok->chat_template());
  std::vector<ChatMessage> msgs = {{"user", "Hello there"}, {"assistant", "Hi!"}};
  std::string text = t.render(msgs, true);
  EXPECT_EQ(text, "<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\nHi!<|eot_id|>");
  EXPECT_EQ(t.encode(*tok, msgs, true), tok->encode(text, false));
}

TEST(ChatTemplate, SentencePieceMapsBosAndEosStrings) {
  auto tok = load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/spm/tokenizer.model");
  ASSERT_GE(tok->bos_id(), 0);
  ASSERT_FALSE(tok->eos_ids().empty());
  ChatTemplate t = ChatTemplate::for_tokenizer(*tok);
  EXPECT_EQ(t.source(), builtin_llama2_chat_template());
  std::vector<ChatMessage> msgs = {{"user", "hello"}, {"assistant", "world"}, {"user", "again"}};
  std::vector<int32_t> ids = t.encode(*tok, msgs, true);
  // <s> [INST] hello [/INST] world </s> <s> [INST] again [/INST]
  std::vector<int32_t> want = {tok->bos_id()};
  for (int32_t id : tok->encode("[INST] hello [/INST] world ", false)) want.push_back(id);
  want.push_back(tok->eos_ids()[0]);
  want.push_back(tok->bos_id());
  for (int32_t id : tok->encode("[INST] again [/INST]", false)) want.push_back(id);
  EXPECT_EQ(ids, want);
}

}  // namespace
}  // namespace oar
