// The HTTP server over loopback, driven with a fake engine whose output is a known function of the prompt, so
// that every response can be checked against its own request: completions, chat, streaming (chunks reassemble
// to the non-streamed text), errors, 429 on a full queue, cancellation when a client disconnects, draining for
// shutdown, and 200 concurrent requests. The same server over the real engine is tested end to end by
// tests/cli/serve_*.sh.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <atomic>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "chat/chat_template.h"
#include "core/error.h"
#include "server/http_server.h"
#include "server/load_gen.h"

namespace oar::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Token k of a completion depends only on the prompt and k: a letter a..z.
int32_t fake_token(const std::vector<int32_t>& prompt, int64_t k) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : prompt) h = (h ^ uint32_t(t)) * 1099511628211ull;
  h = (h ^ uint64_t(k + 1)) * 1099511628211ull;
  return int32_t((h >> 33) % 26);
}
std::string fake_completion(const std::vector<int32_t>& prompt, int64_t n) {
  std::string s;
  for (int64_t k = 0; k < n; k++) s += char('a' + fake_token(prompt, k));
  return s;
}

// An engine with the real one's contract (add_request returns 0 when the waiting queue is full, aborted
// requests leave at the next step, blocks are held while running) and no model.
class FakeEngine : public EngineBackend {
 public:
  int64_t max_running = 16, max_waiting = 1024, blocks_total = 4096, tokens_per_block = 16, context = 512;
  std::chrono::microseconds step_time{0};
  mutable std::atomic<int> wrong_thread_calls{0};
  std::atomic<int64_t> aborts{0}, added{0}, shared{0};

  uint64_t add_request(std::vector<int32_t> prompt, const RequestParams& params) override {
    check_thread();
    params.sampling.validate();
    if (prompt.empty()) throw Error("empty prompt");
    if (int64_t(prompt.size()) > context) throw Error("prompt longer than the context");
    if (int64_t(waiting_.size()) >= max_waiting) return 0;
    if (auto it = reqs_.find(params.share_prompt_with); it != reqs_.end() && it->second.prompt == prompt) shared++;
    Req r;
    r.id = next_id_++;
    r.prompt = std::move(prompt);
    r.params = params;
    r.added = std::chrono::steady_clock::now();
    waiting_.push_back(r.id);
    reqs_[r.id] = std::move(r);
    added++;
    return next_id_ - 1;
  }
  void abort_request(uint64_t id) override {
    check_thread();
    auto it = reqs_.find(id);
    if (it == reqs_.end() || it->second.aborted) return;
    it->second.aborted = true;
    pending_abort_.push_back(id);
    aborts++;
  }
  bool has_work() const override {
    check_thread();
    return !waiting_.empty() || !running_.empty() || !pending_abort_.empty();
  }
  std::vector<RequestOutput> step() override {
    check_thread();
    std::vector<RequestOutput> outs;
    for (uint64_t id : pending_abort_) {
      RequestOutput o;
      o.request_id = id;
      o.finished = true;
      o.finish_reason = FinishReason::Aborted;
      outs.push_back(o);
      remove(id);
    }
    pending_abort_.clear();
    while (!waiting_.empty() && int64_t(running_.size()) < max_running) {
      running_.push_back(waiting_.front());
      waiting_.pop_front();
    }
    if (running_.empty()) return outs;
    if (step_time.count() > 0) std::this_thread::sleep_for(step_time);
    std::vector<uint64_t> done;
    for (uint64_t id : running_) {
      Req& r = reqs_[id];
      if (r.params.max_new_tokens == 0) {  // prompt logprobs only
        RequestOutput o;
        o.request_id = id;
        o.finished = true;
        o.finish_reason = FinishReason::Length;
        o.prompt_tokens = int64_t(r.prompt.size());
        o.prompt_logprobs = fake_prompt_logprobs(r);
        outs.push_back(o);
        done.push_back(id);
        continue;
      }
      int32_t tok = fake_token(r.prompt, r.generated);
      if (r.generated == 0) ttft_.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - r.added).count());
      r.generated++;
      generated_++;
      RequestOutput o;
      o.request_id = id;
      o.new_tokens = {tok};
      o.new_text = std::string(1, char('a' + tok));
      o.prompt_tokens = int64_t(r.prompt.size());
      o.completion_tokens = r.generated;
      if (r.params.logprobs >= 0) o.logprobs.push_back(fake_logprob(tok, r.generated, r.params.logprobs));
      if (r.generated == 1) o.prompt_logprobs = fake_prompt_logprobs(r);
      for (auto& s : r.params.stop)
        if (s == o.new_text) {  // single-letter stop strings are enough here: not returned, as the engine does
          o.new_text.clear();
          o.finished = true;
          o.finish_reason = FinishReason::Stop;
        }
      if (!o.finished && r.generated >= r.params.max_new_tokens) {
        o.finished = true;
        o.finish_reason = FinishReason::Length;
      }
      if (o.finished) {
        tpot_.push_back(0.001);
        done.push_back(id);
      }
      outs.push_back(o);
    }
    for (uint64_t id : done) remove(id);
    return outs;
  }
  EngineMetrics metrics() const override {
    check_thread();
    EngineMetrics m;
    m.running = int64_t(running_.size());
    m.waiting = int64_t(waiting_.size());
    m.blocks_total = blocks_total;
    for (uint64_t id : running_) {
      const Req& r = reqs_.at(id);
      m.blocks_used += (int64_t(r.prompt.size()) + r.generated + tokens_per_block - 1) / tokens_per_block;
    }
    m.blocks_free = m.blocks_total - m.blocks_used;
    m.generated_tokens = generated_;
    return m;
  }
  void take_latency_samples(std::vector<double>& ttft, std::vector<double>& tpot) override {
    check_thread();
    ttft = std::move(ttft_);
    tpot = std::move(tpot_);
    ttft_.clear();
    tpot_.clear();
  }

 private:
  struct Req {
    uint64_t id = 0;
    std::vector<int32_t> prompt;
    RequestParams params;
    int64_t generated = 0;
    bool aborted = false;
    std::chrono::steady_clock::time_point added;
  };
  // Logprob -k/8 for the k-th token, top tokens 3, 4, ... with -0.1, -0.2, ...
  static TokenLogprob fake_logprob(int32_t tok, int64_t k, int32_t top) {
    TokenLogprob lp;
    lp.token = tok;
    lp.logprob = -float(k) / 8;
    for (int32_t j = 0; j < top; j++) lp.top.emplace_back(3 + j, -0.1f * float(j + 1));
    return lp;
  }
  static std::vector<TokenLogprob> fake_prompt_logprobs(const Req& r) {
    std::vector<TokenLogprob> out;
    if (!r.params.prompt_logprobs) return out;
    for (size_t t = 1; t < r.prompt.size(); t++) out.push_back(fake_logprob(r.prompt[t], int64_t(t), r.params.logprobs));
    return out;
  }
  // Only the loop thread may call the engine.
  void check_thread() const {
    std::thread::id self = std::this_thread::get_id();
    std::thread::id none;
    owner_.compare_exchange_strong(none, self);
    if (owner_.load() != self) wrong_thread_calls++;
  }
  void remove(uint64_t id) {
    running_.erase(std::remove(running_.begin(), running_.end(), id), running_.end());
    waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), id), waiting_.end());
    reqs_.erase(id);
  }
  mutable std::atomic<std::thread::id> owner_{};
  uint64_t next_id_ = 1;
  std::map<uint64_t, Req> reqs_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;
  std::vector<uint64_t> pending_abort_;
  std::vector<double> ttft_, tpot_;
  int64_t generated_ = 0;
};

struct TestServer {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/bpe");
  ChatTemplate chat = ChatTemplate::for_tokenizer(*tok);
  FakeEngine fake;
  std::unique_ptr<EngineLoop> loop;
  std::unique_ptr<HttpServer> http;
  int port = 0;

  explicit TestServer(std::function<void(FakeEngine&, ServerOptions&)> setup = {}) {
    ServerOptions opt;
    opt.host = "127.0.0.1";
    opt.port = 0;
    opt.served_model_name = "tiny";
    opt.context_length = fake.context;
    opt.vocab_size = tok->vocab_size();
    opt.http_threads = 256;
    opt.disconnect_poll = 20ms;
    if (setup) setup(fake, opt);
    loop = std::make_unique<EngineLoop>(fake);
    http = std::make_unique<HttpServer>(*loop, *tok, &chat, opt);
    port = http->bind();
    http->start();
  }
  ~TestServer() {
    http->stop();
    loop->stop();
    EXPECT_EQ(fake.wrong_thread_calls.load(), 0) << "the engine was called from a thread other than the loop's";
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_read_timeout(120, 0);
    c->set_connection_timeout(10, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const json& body) const {
    return client()->Post(path.c_str(), body.dump(), "application/json");
  }
  std::vector<int32_t> completion_prompt(const std::string& text) const { return tok->encode(text, true); }
  std::vector<int32_t> chat_prompt(const std::vector<ChatMessage>& m) const { return chat.encode(*tok, m, true); }
  // A value from /metrics (the first sample of that name).
  double metric(const std::string& name) const {
    auto r = client()->Get("/metrics");
    if (!r || r->status != 200) return -1;
    size_t p = r->body.find("\n" + name + "{");
    if (p == std::string::npos) return -1;
    p = r->body.find("} ", p);
    return std::stod(r->body.substr(p + 2));
  }
  bool wait_metric(const std::string& name, double want, std::chrono::milliseconds timeout = 10s) const {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (metric(name) == want) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
};

// The data: payloads of a server-sent-event body, in order.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while ((p = body.find("data: ", p)) != std::string::npos) {
    size_t e = body.find("\n\n", p);
    out.push_back(body.substr(p + 6, e - p - 6));
    p = e + 2;
  }
  return out;
}

TEST(Server, CompletionIsTheEnginesTextWithUsage) {
  TestServer s;
  auto r = s.post("/v1/completions", {{"model", "tiny"}, {"prompt", "hello world"}, {"max_tokens", 5}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  std::vector<int32_t> prompt = s.completion_prompt("hello world");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["text"], fake_completion(prompt, 5));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"], json({{"prompt_tokens", prompt.size()}, {"completion_tokens", 5}, {"total_tokens", prompt.size() + 5}}));
  // max_tokens defaults to 16, as OpenAI's.
  auto d = s.post("/v1/completions", {{"prompt", "hello world"}});
  EXPECT_EQ(json::parse(d->body)["usage"]["completion_tokens"], 16);
}

TEST(Server, ChatCompletionRendersTheTemplate) {
  TestServer s;
  json msgs = json::array({{{"role", "user"}, {"content", "Hi there"}}});
  auto r = s.post("/v1/chat/completions", {{"model", "tiny"}, {"messages", msgs}, {"max_tokens", 6}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  std::vector<int32_t> prompt = s.chat_prompt({{"user", "Hi there"}});
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(j["choices"][0]["message"], json({{"role", "assistant"}, {"content", fake_completion(prompt, 6)}}));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
}

TEST(Server, StreamingChunksReassembleToTheNonStreamedText) {
  TestServer s;
  for (bool chat : {false, true}) {
    SCOPED_TRACE(chat ? "chat" : "completions");
    json body = {{"max_tokens", 12}, {"temperature", 0}};
    if (chat) body["messages"] = json::array({{{"role", "user"}, {"content", "stream me"}}});
    else body["prompt"] = "stream me";
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    auto whole = s.post(path, body);
    ASSERT_EQ(whole->status, 200);
    json w = json::parse(whole->body);
    std::string expected = chat ? w["choices"][0]["message"]["content"] : w["choices"][0]["text"];

    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    auto r = s.post(path, body);
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
    std::vector<std::string> data = sse_data(r->body);
    ASSERT_GE(data.size(), 4u);
    EXPECT_EQ(data.back(), "[DONE]");
    std::string text;
    int finishes = 0;
    std::set<std::string> ids;
    for (size_t i = 0; i + 1 < data.size(); i++) {
      json c = json::parse(data[i]);
      ids.insert(c["id"].get<std::string>());
      EXPECT_EQ(c["object"], chat ? "chat.completion.chunk" : "text_completion");
      if (c["choices"].empty()) {  // the usage chunk, last before [DONE]
        EXPECT_EQ(i + 2, data.size());
        EXPECT_EQ(c["usage"]["completion_tokens"], 12);
        continue;
      }
      const json& ch = c["choices"][0];
      if (chat) {
        if (i == 0) {
          EXPECT_EQ(ch["delta"]["role"], "assistant");
        }
        if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
      } else {
        text += ch["text"].get<std::string>();
      }
      if (!ch["finish_reason"].is_null()) {
        EXPECT_EQ(ch["finish_reason"], "length");
        finishes++;
      }
    }
    EXPECT_EQ(text, expected);
    EXPECT_EQ(finishes, 1);
    EXPECT_EQ(ids.size(), 1u) << "every chunk carries the same id";
  }
}

TEST(Server, SeveralPromptsGetOneChoiceEach) {
  TestServer s;
  auto r = s.post("/v1/completions", {{"prompt", {"first", "second prompt", "third"}}, {"max_tokens", 4}});
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 3u);
  const char* prompts[] = {"first", "second prompt", "third"};
  for (int i = 0; i < 3; i++) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["text"], fake_completion(s.completion_prompt(prompts[i]), 4));
  }
  // Token-id prompts are taken as they are (no BOS added).
  auto ids = s.post("/v1/completions", {{"prompt", {5, 6, 7}}, {"max_tokens", 3}});
  EXPECT_EQ(json::parse(ids->body)["choices"][0]["text"], fake_completion({5, 6, 7}, 3));
}

TEST(Server, StopStringEndsWithFinishReasonStop) {
  TestServer s;
  std::vector<int32_t> p = s.completion_prompt("stop test");
  std::string full = fake_completion(p, 40);
  std::string stop(1, full[5]);
  size_t at = full.find(stop);
  auto r = s.post("/v1/completions", {{"prompt", "stop test"}, {"max_tokens", 40}, {"stop", stop}});
  json j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["text"], full.substr(0, at));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
}

TEST(Server, BadRequestsGetOpenAIErrors) {
  TestServer s;
  struct Case {
    std::string path, body;
    int status;
    const char* param;
  };
  std::string long_prompt;  // > 512 tokens
  for (int i = 0; i < 1000; i++) long_prompt += " x";
  const Case cases[] = {
      {"/v1/completions", "{\"prompt\": ", 400, ""},
      {"/v1/completions", "\"just a string\"", 400, ""},
      {"/v1/completions", "{\"prompt\": \"caf\xe9\"}", 400, ""},
      {"/v1/completions", R"({"prompt": "x", "model": "nope"})", 400, "model"},
      {"/v1/completions", R"({"prompt": "x", "temperature": -1})", 400, "temperature"},
      {"/v1/completions", R"({"prompt": "x", "temperature": NaN})", 400, ""},
      {"/v1/completions", R"({"prompt": "x", "top_p": 0})", 400, "top_p"},
      {"/v1/completions", R"({"prompt": "x", "top_p": 2})", 400, "top_p"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": -1})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": "x", "n": 17})", 400, "n"},
      {"/v1/completions", R"({"prompt": "x", "logprobs": 21})", 400, "logprobs"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 2, "max_completion_tokens": 3})", 400, "max_completion_tokens"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 600})", 400, "max_tokens"},
      {"/v1/completions", "{\"prompt\": \"" + long_prompt + "\"}", 400, "prompt"},
      {"/v1/completions", R"({"prompt": [100000]})", 400, "prompt"},
      {"/v1/chat/completions", R"({"messages": []})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "stop": [1]})", 400, "stop"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body.substr(0, 80));
    auto r = s.client()->Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, c.status);
    json j = json::parse(r->body);
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
    EXPECT_EQ(j["error"]["param"], c.param[0] ? json(c.param) : json(nullptr));
    EXPECT_TRUE(j["error"].contains("code"));
  }
  auto ctx = s.client()->Post("/v1/completions", "{\"prompt\": \"" + long_prompt + "\"}", "application/json");
  EXPECT_EQ(json::parse(ctx->body)["error"]["code"], "context_length_exceeded");
  // Unknown routes and methods are 404 with the same error shape.
  for (int k = 0; k < 3; k++) {
    auto r = k == 0 ? s.client()->Get("/v1/nothing")
           : k == 1 ? s.client()->Get("/v1/completions")
                    : s.client()->Post("/v2/completions", "{}", "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404);
    EXPECT_TRUE(json::parse(r->body)["error"]["message"].is_string());
  }
  EXPECT_EQ(s.fake.added.load(), 0) << "no bad request may reach the engine";
}

// echo + logprobs + n: each choice is the prompt's text then the completion, with the prompt tokens' logprobs
// (the first null) then the generated ones; the n choices of a prompt are requested as sharing it.
TEST(Server, EchoLogprobsAndSamples) {
  TestServer s;
  const std::vector<int32_t> prompt = s.completion_prompt("hello world");
  auto r = s.post("/v1/completions", {{"prompt", {"hello world", "hello world"}}, {"max_tokens", 3}, {"echo", true},
                                      {"logprobs", 2}, {"n", 2}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 4u);
  EXPECT_EQ(s.fake.shared.load(), 2) << "the second sample of each prompt shares the first's prompt";
  for (size_t i = 0; i < 4; i++) {
    const json& c = j["choices"][i];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["text"], "hello world" + fake_completion(prompt, 3));
    const json& lp = c["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), prompt.size() + 3);
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    for (size_t t = 1; t < prompt.size(); t++) EXPECT_FLOAT_EQ(lp["token_logprobs"][t].get<float>(), -float(t) / 8);
    for (size_t k = 0; k < 3; k++) EXPECT_FLOAT_EQ(lp["token_logprobs"][prompt.size() + k].get<float>(), -float(k + 1) / 8);
    for (size_t t = 1; t < lp["tokens"].size(); t++) {
      EXPECT_EQ(lp["top_logprobs"][t].size(), 2u);
      EXPECT_LE(lp["text_offset"][t - 1].get<int>(), lp["text_offset"][t].get<int>());
    }
    EXPECT_EQ(lp["text_offset"][0], 0);
    EXPECT_EQ(lp["tokens"][0], "<|begin_of_text|>");
  }
  EXPECT_EQ(j["usage"]["prompt_tokens"], 2 * prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);

  // max_tokens 0: the prompt alone, as lm-evaluation-harness asks for loglikelihoods.
  r = s.post("/v1/completions", {{"prompt", "hello world"}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}});
  ASSERT_EQ(r->status, 200) << r->body;
  j = json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["text"], "hello world");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"].size(), prompt.size());
  EXPECT_EQ(j["usage"]["completion_tokens"], 0);

  // Streamed: the chunks' logprobs put together are the non-streamed ones.
  json body = {{"prompt", "hello world"}, {"max_tokens", 4}, {"echo", true}, {"logprobs", 1}, {"temperature", 0}};
  json whole = json::parse(s.post("/v1/completions", body)->body)["choices"][0];
  body["stream"] = true;
  r = s.post("/v1/completions", body);
  ASSERT_EQ(r->status, 200) << r->body;
  std::string text;
  json lp = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
             {"text_offset", json::array()}};
  for (auto& d : sse_data(r->body)) {
    if (d == "[DONE]") break;
    json c = json::parse(d)["choices"][0];
    text += c["text"].get<std::string>();
    if (c["logprobs"].is_null()) continue;
    for (auto& [k, v] : lp.items())
      for (auto& x : c["logprobs"][k]) v.push_back(x);
  }
  EXPECT_EQ(text, whole["text"]);
  EXPECT_EQ(lp, whole["logprobs"]);
}

TEST(Server, ChatLogprobs) {
  TestServer s;
  auto r = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3},
                                           {"logprobs", true}, {"top_logprobs", 2}});
  ASSERT_EQ(r->status, 200) << r->body;
  json c = json::parse(r->body)["choices"][0];
  ASSERT_EQ(c["logprobs"]["content"].size(), 3u);
  for (size_t k = 0; k < 3; k++) {
    const json& e = c["logprobs"]["content"][k];
    EXPECT_FLOAT_EQ(e["logprob"].get<float>(), -float(k + 1) / 8);
    EXPECT_TRUE(e["token"].is_string());
    EXPECT_TRUE(e["bytes"].is_array());
    ASSERT_EQ(e["top_logprobs"].size(), 2u);
    EXPECT_FLOAT_EQ(e["top_logprobs"][1]["logprob"].get<float>(), -0.2f);
  }
  r = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}});
  EXPECT_TRUE(json::parse(r->body)["choices"][0]["logprobs"].is_null());
}

TEST(Server, MaxCompletionTokensAndModelById) {
  TestServer s;
  auto r = s.post("/v1/completions", {{"prompt", "hello"}, {"max_completion_tokens", 3}});
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], 3);
  r = s.post("/v1/completions", {{"prompt", "hello"}, {"max_completion_tokens", 3}, {"max_tokens", 4}});
  EXPECT_EQ(r->status, 400);
  auto m = s.client()->Get("/v1/models/tiny");
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(json::parse(m->body)["id"], "tiny");
  EXPECT_EQ(json::parse(m->body)["object"], "model");
  m = s.client()->Get("/v1/models/gpt-4");
  ASSERT_EQ(m->status, 404);
  json e = json::parse(m->body)["error"];
  EXPECT_EQ(e["code"], "model_not_found");
  EXPECT_EQ(e["type"], "invalid_request_error");
  EXPECT_NE(e["message"].get<std::string>().find("gpt-4"), std::string::npos);
}

TEST(Server, ModelsHealthAndMetrics) {
  TestServer s;
  auto m = s.client()->Get("/v1/models");
  ASSERT_EQ(m->status, 200);
  json j = json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
  auto h = s.client()->Get("/health");
  EXPECT_EQ(h->status, 200);
  ASSERT_EQ(s.post("/v1/completions", {{"prompt", "count me"}, {"max_tokens", 3}})->status, 200);
  auto r = s.client()->Get("/metrics");
  ASSERT_EQ(r->status, 200);
  const std::string& t = r->body;
  for (const char* want :
       {"# TYPE oar_num_requests_running gauge", "# TYPE oar_num_requests_waiting gauge",
        "# TYPE oar_kv_cache_blocks_used gauge", "# TYPE oar_kv_cache_blocks_free gauge",
        "# TYPE oar_prefix_cache_hits_total counter", "# TYPE oar_prefix_cache_queries_total counter",
        "# TYPE oar_generation_tokens_total counter", "# TYPE oar_prompt_tokens_total counter",
        "# TYPE oar_request_success_total counter", "# TYPE oar_time_to_first_token_seconds histogram",
        "# TYPE oar_time_per_output_token_seconds histogram",
        "oar_time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"+Inf\"} 1\n",
        "oar_time_to_first_token_seconds_count{model_name=\"tiny\"} 1\n",
        "oar_time_per_output_token_seconds_sum{model_name=\"tiny\"} ",
        "oar_request_success_total{model_name=\"tiny\"} 1\n",
        "oar_generation_tokens_total{model_name=\"tiny\"} 3\n"}) {
    EXPECT_NE(t.find(want), std::string::npos) << want << "\n" << t;
  }
  // Every sample line is "name{labels} number".
  std::istringstream lines(t);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    EXPECT_NO_THROW((void)std::stod(line.substr(sp + 1))) << line;
    EXPECT_EQ(line.rfind("oar_", 0), 0u) << line;
  }
}

TEST(Server, FullQueueGets429) {
  TestServer s([](FakeEngine& f, ServerOptions&) {
    f.max_running = 1;
    f.max_waiting = 1;
    f.step_time = 2ms;
  });
  // One request runs, one waits: the queue is full.
  std::thread a([&] { s.post("/v1/completions", {{"prompt", "first"}, {"max_tokens", 300}}); });
  ASSERT_TRUE(s.wait_metric("oar_num_requests_running", 1));
  std::thread b([&] { s.post("/v1/completions", {{"prompt", "second"}, {"max_tokens", 5}}); });
  ASSERT_TRUE(s.wait_metric("oar_num_requests_waiting", 1));
  auto r = s.post("/v1/completions", {{"prompt", "third"}, {"max_tokens", 5}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  json j = json::parse(r->body);
  EXPECT_EQ(j["error"]["code"], "queue_full");
  EXPECT_TRUE(j["error"]["message"].is_string());
  a.join();
  b.join();
  EXPECT_EQ(s.metric("oar_request_rejected_total"), 1);
  // Once the queue has room again requests are accepted.
  EXPECT_EQ(s.post("/v1/completions", {{"prompt", "fourth"}, {"max_tokens", 2}})->status, 200);
}

// A raw HTTP/1.1 request over a socket that the test closes when it wants (a client that goes away).
int raw_post(int port, const std::string& path, const std::string& body) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body;
  if (send(fd, req.data(), req.size(), MSG_NOSIGNAL) != ssize_t(req.size())) return -1;
  return fd;
}

std::string read_until(int fd, const std::string& marker, std::chrono::milliseconds timeout) {
  std::string got;
  auto until = std::chrono::steady_clock::now() + timeout;
  timeval tv{0, 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  while (got.find(marker) == std::string::npos && std::chrono::steady_clock::now() < until) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) got.append(buf, size_t(n));
    else if (n == 0) break;
  }
  return got;
}

TEST(Server, ClientDisconnectAbortsAndFreesBlocks) {
  TestServer s([](FakeEngine& f, ServerOptions& o) {
    f.step_time = 2ms;
    f.context = o.context_length = 1 << 20;  // room for requests that would run far longer than the test
  });
  // Streaming: read a few chunks, then hang up.
  int fd = raw_post(s.port, "/v1/completions", R"({"prompt": "a long story", "max_tokens": 100000, "stream": true})");
  ASSERT_GE(fd, 0);
  std::string got = read_until(fd, "data: ", 10s);
  ASSERT_NE(got.find("200 OK"), std::string::npos) << got;
  ASSERT_NE(got.find("data: "), std::string::npos);
  EXPECT_GT(s.metric("oar_kv_cache_blocks_used"), 0);
  close(fd);
  EXPECT_TRUE(s.wait_metric("oar_request_aborted_total", 1)) << "the request was not aborted";
  EXPECT_TRUE(s.wait_metric("oar_kv_cache_blocks_used", 0));
  EXPECT_TRUE(s.wait_metric("oar_num_requests_running", 0));
  EXPECT_EQ(s.fake.aborts.load(), 1);

  // Not streaming: the client gives up while waiting for the whole answer.
  fd = raw_post(s.port, "/v1/chat/completions",
                R"({"messages": [{"role": "user", "content": "long"}], "max_tokens": 100000})");
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(s.wait_metric("oar_num_requests_running", 1));
  close(fd);
  EXPECT_TRUE(s.wait_metric("oar_request_aborted_total", 2));
  EXPECT_TRUE(s.wait_metric("oar_kv_cache_blocks_used", 0));
  EXPECT_TRUE(s.wait_metric("oar_http_requests_in_flight", 0));
  // The server is unaffected.
  EXPECT_EQ(s.post("/v1/completions", {{"prompt", "after"}, {"max_tokens", 2}})->status, 200);
}

TEST(Server, DrainFinishesRunningRequestsAndRefusesNewOnes) {
  TestServer s([](FakeEngine& f, ServerOptions&) { f.step_time = 2ms; });
  std::vector<int32_t> prompt = s.completion_prompt("in flight");
  int running_status = 0;
  std::string running_body;
  std::thread t([&] {
    auto r = s.post("/v1/completions", {{"prompt", "in flight"}, {"max_tokens", 150}});
    running_status = r ? r->status : -1;
    running_body = r ? r->body : "";
  });
  ASSERT_TRUE(s.wait_metric("oar_num_requests_running", 1));
  s.http->begin_drain();
  auto refused = s.post("/v1/completions", {{"prompt", "late"}, {"max_tokens", 2}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(json::parse(refused->body)["error"]["code"], "shutting_down");
  EXPECT_EQ(s.client()->Get("/health")->status, 503);
  t.join();
  ASSERT_EQ(running_status, 200);
  EXPECT_EQ(json::parse(running_body)["choices"][0]["text"], fake_completion(prompt, 150));
  auto until = std::chrono::steady_clock::now() + 5s;
  while (s.http->in_flight() > 0 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(s.http->in_flight(), 0);
}

// A chat template that never ends (within a huge budget) stops when its client goes away, and when the server
// aborts for shutdown; with the default budget it is a 400 at once. None of them reaches the engine.
TEST(Server, ChatTemplateRenderStopsOnDisconnectAbortAndBudget) {
  TestServer s;
  const std::string endless = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
  s.chat = ChatTemplate(endless, "test template", "", "");
  jinja::RenderLimits huge;
  huge.max_steps = INT64_MAX / 2;
  huge.max_string_bytes = size_t(1) << 40;
  s.chat.set_render_limits(huge);
  const json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}};
  auto wait_in_flight = [&](int64_t want, std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (s.http->in_flight() != want && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    return s.http->in_flight() == want;
  };

  // The client gives up after 300 ms: the render stops soon after (the server polls every 20 ms here).
  {
    auto c = s.client();
    c->set_read_timeout(0, 300000);
    auto r = c->Post("/v1/chat/completions", body.dump(), "application/json");
    EXPECT_FALSE(r);
  }
  EXPECT_TRUE(wait_in_flight(0, 5s)) << "the render goes on after its client left";

  // A shutdown's abort stops a render whose client is still waiting: it gets 503.
  int status = 0;
  std::string error_code;
  std::thread waiting([&] {
    auto r = s.post("/v1/chat/completions", body);
    status = r ? r->status : -1;
    if (r) error_code = json::parse(r->body)["error"]["code"];
  });
  ASSERT_TRUE(wait_in_flight(1, 5s));
  std::this_thread::sleep_for(100ms);
  s.http->begin_drain();
  EXPECT_EQ(s.http->in_flight(), 1) << "draining alone does not cut a render short";
  auto t0 = std::chrono::steady_clock::now();
  s.http->abort_renders();
  waiting.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(error_code, "shutting_down");
  EXPECT_TRUE(wait_in_flight(0, 5s));
  EXPECT_EQ(s.fake.added.load(), 0);
}

TEST(Server, ChatTemplateOverItsBudgetIs400) {
#ifdef OAR_SANITIZE
  constexpr auto kLimit = 60s;  // the 4M render steps run about 10x slower under ASan + UBSan
#else
  constexpr auto kLimit = 10s;
#endif
  TestServer s;
  s.chat = ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                        "test template", "", "");
  auto t0 = std::chrono::steady_clock::now();
  auto r = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kLimit);  // about 0.5 s of CPU; wall time on a loaded machine
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  json e = json::parse(r->body)["error"];
  EXPECT_EQ(e["code"], "chat_template_budget_exceeded");
  EXPECT_EQ(e["param"], "messages");
  // 4,000,000 steps, plus one per byte of the conversation.
  EXPECT_NE(e["message"].get<std::string>().find("render budget exceeded: more than 40000"), std::string::npos)
      << e["message"];
  EXPECT_EQ(s.client()->Get("/health")->status, 200);
}

TEST(Server, TwoHundredConcurrentRequestsEachGetTheirOwnOutput) {
  TestServer s([](FakeEngine& f, ServerOptions&) {
    f.max_running = 32;
    f.step_time = 200us;
  });
  const int N = 200;
  std::vector<std::string> errors(N);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < N; i++) {
    threads.emplace_back([&, i] {
      const std::string text = "request number " + std::to_string(i) + " says " + std::to_string(i * 7919 % 1000);
      const int64_t n = 3 + i % 13;
      const bool chat = i % 3 == 0, stream = i % 2 == 0;
      json body = {{"max_tokens", n}, {"temperature", 0}, {"stream", stream}};
      std::vector<int32_t> prompt;
      if (chat) {
        body["messages"] = json::array({{{"role", "user"}, {"content", text}}});
        prompt = s.chat_prompt({{"user", text}});
      } else {
        body["prompt"] = text;
        prompt = s.completion_prompt(text);
      }
      auto r = s.post(chat ? "/v1/chat/completions" : "/v1/completions", body);
      if (!r || r->status != 200) {
        errors[size_t(i)] = "status " + std::to_string(r ? r->status : -1);
        return;
      }
      std::string got;
      if (stream) {
        for (auto& d : sse_data(r->body)) {
          if (d == "[DONE]") break;
          json c = json::parse(d);
          if (c["choices"].empty()) continue;
          const json& ch = c["choices"][0];
          if (chat && ch["delta"].contains("content")) got += ch["delta"]["content"].get<std::string>();
          if (!chat) got += ch["text"].get<std::string>();
        }
      } else {
        json j = json::parse(r->body);
        got = chat ? j["choices"][0]["message"]["content"].get<std::string>() : j["choices"][0]["text"].get<std::string>();
      }
      if (got != fake_completion(prompt, n)) errors[size_t(i)] = "got '" + got + "' want '" + fake_completion(prompt, n) + "'";
      else ok++;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < N; i++) EXPECT_EQ(errors[size_t(i)], "") << "request " << i;
  EXPECT_EQ(ok.load(), N);
  EXPECT_EQ(s.metric("oar_request_success_total"), N);
  EXPECT_EQ(s.metric("oar_request_aborted_total"), 0);
}

TEST(Server, PortInUseIsAClearError) {
  TestServer s;
  auto tok = load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/bpe");
  FakeEngine f;
  EngineLoop loop(f);
  ServerOptions opt;
  opt.port = s.port;
  HttpServer other(loop, *tok, nullptr, opt);
  try {
    other.bind();
    FAIL() << "bound a port in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(s.port)), std::string::npos) << e.what();
  }
}

TEST(LoadGen, DrivesAServerAndMeasures) {
  TestServer s([](FakeEngine& f, ServerOptions&) {
    f.max_running = 4;
    f.step_time = 1ms;
  });
  LoadOptions o;
  o.port = s.port;
  o.concurrency = 4;
  o.requests = 20;
  o.max_tokens = 5;
  o.prompt_len = 8;
  o.token_hi = 100;
  LoadResult r = run_load(o);
  EXPECT_EQ(r.model, "tiny");  // asked from /v1/models
  EXPECT_EQ(r.ok, 20) << r.first_error;
  EXPECT_EQ(r.failed, 0);
  EXPECT_EQ(r.output_tokens, 100);
  EXPECT_EQ(r.prompt_tokens, 160);
  ASSERT_EQ(r.ttft_s.size(), 20u);
  ASSERT_EQ(r.tpot_s.size(), 20u);
  for (double t : r.ttft_s) EXPECT_GT(t, 0);
  EXPECT_GT(r.output_throughput(), 0);
  EXPECT_EQ(s.metric("oar_request_success_total"), 20);
}

TEST(LoadGen, TimeLimitCutsOffRunningRequests) {
  TestServer s([](FakeEngine& f, ServerOptions& o) {
    f.step_time = 1ms;
    f.context = o.context_length = 1 << 20;
  });
  LoadOptions o;
  o.port = s.port;
  o.concurrency = 4;
  o.requests = 100;
  o.max_tokens = 100000;
  o.token_hi = 100;
  o.duration_s = 0.3;
  auto t0 = std::chrono::steady_clock::now();
  LoadResult r = run_load(o);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_EQ(r.ok, 0);
  EXPECT_EQ(r.failed, 0) << r.first_error;
  EXPECT_EQ(r.cut_off, 4);  // one per client: no new request starts after the limit
  EXPECT_TRUE(s.wait_metric("oar_request_aborted_total", 4)) << "the server must abort what the clients dropped";
  EXPECT_TRUE(s.wait_metric("oar_kv_cache_blocks_used", 0));
}

TEST(LoadGen, PercentilesAndUrls) {
  EXPECT_EQ(percentile({}, 50), 0);
  EXPECT_DOUBLE_EQ(percentile({3, 1, 2}, 50), 2);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 50), 2.5);
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 99), 10.9);
  std::string host;
  int port = 0;
  parse_http_url("http://127.0.0.1:8123/", host, port);
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 8123);
  for (const char* bad : {"127.0.0.1:80", "https://x:1", "http://x", "http://x:0", "http://x:99999", "http://x:80/v1"})
    EXPECT_THROW(parse_http_url(bad, host, port), Error) << bad;
}

}  // namespace
}  // namespace oar::server
