// Chat templates: the Jinja subset against Hugging Face's apply_chat_template (fixtures made by
// tests/reference/make_chat_template_fixtures.py), load-time refusal of unsupported constructs, the built-in
// Llama-2 / Llama-3 choice by vocabulary, and tokenization of the rendered text.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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
