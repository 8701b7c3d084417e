// The request parser (parse_request): what a valid request becomes, and every malformed request refused with
// a 400 naming the parameter. Pure: no model, no server.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "server/api.h"

namespace oar::server {
namespace {

using nlohmann::json;

ParseLimits limits() {
  ParseLimits l;
  l.served_model_name = "tiny";
  l.vocab_size = 512;
  return l;
}

ApiRequest parse(const std::string& body, Endpoint ep = Endpoint::Completions) { return parse_request(body, ep, limits()); }

// The ApiError a body gives (fails the test if it parses).
ApiError refusal(const std::string& body, Endpoint ep = Endpoint::Completions) {
  try {
    parse(body, ep);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

TEST(ServerRequest, CompletionDefaultsAreOpenAIs) {
  ApiRequest r = parse(R"({"model": "tiny", "prompt": "Once upon a time"})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Once upon a time");
  EXPECT_FALSE(r.prompts[0].is_ids);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.temperature, 1.0);
  EXPECT_EQ(r.top_p, 1.0);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.seed.has_value());
  SamplingParams p = sampling_params(r, 99);
  EXPECT_FALSE(p.greedy);
  EXPECT_EQ(p.seed, 99u);
  EXPECT_NO_THROW(p.validate());
}

// n, echo, logprobs (both endpoints' forms) and max_completion_tokens as the same thing as max_tokens.
TEST(ServerRequest, SamplesEchoLogprobsAndMaxCompletionTokens) {
  ApiRequest r = parse(R"({"prompt": ["a", "b"], "n": 3, "best_of": 3, "echo": true, "logprobs": 5, "max_tokens": 0})");
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.logprobs, 5);
  EXPECT_EQ(*r.max_tokens, 0);
  EXPECT_EQ(sampling_params(r, 10, 2).seed, 12u);  // sample 2 of a prompt
  r = parse(R"({"prompt": "a", "logprobs": 0, "max_completion_tokens": 9})");
  EXPECT_EQ(r.logprobs, 0);
  EXPECT_EQ(*r.max_tokens, 9);
  EXPECT_EQ(*parse(R"({"prompt": "a", "max_tokens": 9, "max_completion_tokens": 9})").max_tokens, 9);
  EXPECT_EQ(parse(R"({"prompt": "a", "logprobs": false})").logprobs, -1);
  EXPECT_EQ(parse(R"({"prompt": "a"})").logprobs, -1);
  const char* chat = R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 4, "n": 2})";
  r = parse_request(chat, Endpoint::ChatCompletions, ParseLimits{});
  EXPECT_EQ(r.logprobs, 4);
  EXPECT_EQ(r.n, 2);
  r = parse_request(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})", Endpoint::ChatCompletions, ParseLimits{});
  EXPECT_EQ(r.logprobs, 0);
  r = parse_request(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": false, "top_logprobs": 0})",
                    Endpoint::ChatCompletions, ParseLimits{});
  EXPECT_EQ(r.logprobs, -1);
}

TEST(ServerRequest, AllFieldsAreRead) {
  ApiRequest r = parse(R"({"model": "tiny", "prompt": ["a", "b"], "max_tokens": 7, "temperature": 0, "top_p": 0.5,
                          "top_k": 40, "seed": 18446744073709551615, "stop": ["x", "yz"], "stream": true,
                          "stream_options": {"include_usage": true}, "n": 1, "repetition_penalty": 1.1,
                          "frequency_penalty": 0, "presence_penalty": 0.0, "ignore_eos": true, "user": "u",
                          "logprobs": null, "echo": false, "best_of": 1, "suffix": "", "logit_bias": {},
                          "unknown_extension": {"ignored": [1, 2]}})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].text, "b");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.top_k, 40);
  EXPECT_EQ(*r.seed, 18446744073709551615ull);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.stream && r.include_usage && r.ignore_eos);
  SamplingParams p = sampling_params(r, 1);
  EXPECT_TRUE(p.greedy);  // temperature 0
  EXPECT_EQ(p.seed, 18446744073709551615ull);
  EXPECT_DOUBLE_EQ(p.repetition_penalty, 1.1);
  EXPECT_NO_THROW(p.validate());
}

TEST(ServerRequest, PromptForms) {
  EXPECT_EQ(parse(R"({"prompt": [1, 2, 3]})").prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  ApiRequest two = parse(R"({"prompt": [[5], [6, 7]]})");
  ASSERT_EQ(two.prompts.size(), 2u);
  EXPECT_TRUE(two.prompts[1].is_ids);
  EXPECT_EQ(parse(R"({"prompt": ""})").prompts[0].text, "");
  EXPECT_EQ(parse(R"({"prompt": "x", "top_k": -1})").top_k, 0);     // vLLM's "off"
  EXPECT_EQ(*parse(R"({"prompt": "x", "max_tokens": 3.0})").max_tokens, 3);
  EXPECT_EQ(parse(R"({"prompt": "x", "stop": "\n"})").stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(parse(R"({"prompt": "x", "model": null, "temperature": null})").temperature, 1.0);  // null is absent
}

TEST(ServerRequest, ChatMessages) {
  ApiRequest r = parse(R"({"model": "tiny", "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null},
      {"role": "user", "content": "ok"}], "max_completion_tokens": 9, "add_generation_prompt": false})",
                       Endpoint::ChatCompletions);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(*r.max_tokens, 9);
  EXPECT_FALSE(r.add_generation_prompt);
}

struct Bad {
  const char* body;
  const char* param;  // "" for none
  Endpoint ep = Endpoint::Completions;
};

TEST(ServerRequest, MalformedRequestsAre400WithTheParameter) {
  const Bad cases[] = {
      {"{\"prompt\": \"x\"", ""},                       // truncated JSON
      {"not json", ""},
      {"", ""},
      {"[1, 2]", ""},                                    // not an object
      {"{\"prompt\": \"\xff\xfe\"}", ""},                // invalid UTF-8
      {"{\"prompt\": \"\xed\xa0\x80\"}", ""},            // an encoded surrogate
      {"{\"prompt\": \"\\ud800\"}", ""},                  // a lone escaped surrogate
      {R"({"prompt": "x", "model": "gpt-4"})", "model"},
      {R"({"prompt": "x", "model": 3})", "model"},
      {R"({"prompt": "x", "temperature": -0.5})", "temperature"},
      {R"({"prompt": "x", "temperature": 2.5})", "temperature"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "temperature": 1e999})", ""},  // a number JSON cannot hold: malformed
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "top_p": 1.01})", "top_p"},
      {R"({"prompt": "x", "top_p": -1})", "top_p"},
      {R"({"prompt": "x", "top_k": -2})", "top_k"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": -5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 2.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": "10"})", "max_tokens"},
      {R"({"prompt": "x", "n": 17})", "n"},
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": ["a", "b", "c", "d", "e", "f", "g", "h", "i"], "n": 16})", "n"},  // 144 choices
      {R"({"prompt": "x", "best_of": 3})", "best_of"},
      {R"({"prompt": "x", "n": 2, "best_of": 1})", "best_of"},
      {R"({"prompt": "x", "max_tokens": 0, "echo": false})", "max_tokens"},
      {R"({"prompt": "x", "max_completion_tokens": 0})", "max_completion_tokens"},
      {R"({"prompt": "x", "max_tokens": 5, "max_completion_tokens": 6})", "max_completion_tokens"},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5, "max_completion_tokens": 6})",
       "max_completion_tokens", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", "max_tokens", Endpoint::ChatCompletions},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "logprobs": -1})", "logprobs"},
      {R"({"prompt": "x", "logprobs": true})", "logprobs"},
      {R"({"prompt": "x", "top_logprobs": 2})", "top_logprobs"},
      {R"({"prompt": "x", "echo": 1})", "echo"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 3})", "logprobs", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs",
       Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", "top_logprobs",
       Endpoint::ChatCompletions},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", "stop"},
      {R"({"prompt": "x", "stop": [""]})", "stop"},
      {R"({"prompt": "x", "stop": 5})", "stop"},
      {R"({"prompt": "x", "seed": "s"})", "seed"},
      {R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty"},
      {R"({"prompt": "x", "frequency_penalty": 3})", "frequency_penalty"},
      {R"({"prompt": "x", "presence_penalty": 0.5})", "presence_penalty"},
      {R"({"prompt": "x", "suffix": "s"})", "suffix"},
      {R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias"},
      {R"({"prompt": "x", "tools": [{"type": "function"}]})", "tools"},
      {R"({"max_tokens": 5})", "prompt"},
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": []})", "prompt"},
      {R"({"prompt": [1, -1]})", "prompt"},
      {R"({"prompt": [1, 512]})", "prompt"},             // outside the vocabulary
      {R"({"prompt": [1, "a"]})", "prompt"},
      {R"({"prompt": [[]]})", "prompt"},
      {R"({"prompt": [{"a": 1}]})", "prompt"},
      {R"({"prompt": "x"})", "messages", Endpoint::ChatCompletions},
      {R"({"messages": []})", "messages", Endpoint::ChatCompletions},
      {R"({"messages": "hi"})", "messages", Endpoint::ChatCompletions},
      {R"({"messages": [{"content": "hi"}]})", "messages[0].role", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": 1, "content": "hi"}]})", "messages[0].role", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content",
       Endpoint::ChatCompletions},
      {R"({"messages": [1]})", "messages[0]", Endpoint::ChatCompletions},
      {R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})",
       "response_format", Endpoint::ChatCompletions},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.body);
    ApiError e = refusal(c.body, c.ep);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, c.param);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_FALSE(std::string(e.what()).empty());
    json body = json::parse(error_body(e));  // the error body is itself valid JSON of OpenAI's shape
    EXPECT_EQ(body["error"]["type"], "invalid_request_error");
    EXPECT_EQ(body["error"]["param"], c.param[0] ? json(c.param) : json(nullptr));
  }
  EXPECT_EQ(refusal(R"({"prompt": "x", "model": "other"})").code, "model_not_found");
  EXPECT_EQ(refusal("{\"prompt\": \"\xc3\"}").code, "invalid_utf8");
}

TEST(ServerRequest, HostileBodiesAreRefusedNotCrashed) {
  std::string deep(100000, '[');
  EXPECT_EQ(refusal(deep).status, 400);
  std::string deep_obj;
  for (int i = 0; i < 5000; i++) deep_obj += "{\"a\":";
  EXPECT_EQ(refusal(deep_obj).status, 400);
  std::string many = "{\"prompt\": [";
  for (int i = 0; i < 100; i++) many += std::string(i ? "," : "") + "\"p\"";
  EXPECT_EQ(refusal(many + "]}").param, "prompt");  // more prompts than allowed
  EXPECT_EQ(refusal(std::string("{\"prompt\": \"a\0b\"}", 17)).status, 400);  // a raw NUL inside a string
}

TEST(ServerRequest, ErrorBodyHasOpenAIsShape) {
  json j = json::parse(error_body(ApiError(429, "busy", "", "queue_full", "rate_limit_error")));
  EXPECT_EQ(j, json::parse(R"({"error": {"message": "busy", "type": "rate_limit_error", "param": null, "code": "queue_full"}})"));
}

}  // namespace
}  // namespace oar::server
