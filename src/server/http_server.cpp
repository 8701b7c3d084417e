#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "server/api.h"
#include "server/http_connections.h"
#include "server/client_probe.h"
#include "server/metrics.h"

namespace oar::server {

using nlohmann::json;

namespace {

ConnectionLimits connection_limits(const ServerOptions& o) {
  ConnectionLimits l;
  l.workers = std::max<size_t>(o.http_threads, 2);
  l.max_connections = std::max<size_t>(o.max_connections, 1);
  l.header_timeout = o.header_timeout;
  l.body_timeout = o.body_timeout;
  l.keep_alive_timeout = o.keep_alive_timeout;
  l.evict_after = o.evict_after;
  l.max_body_bytes = size_t(32) << 20;
  l.api_key = o.api_key;
  return l;
}

// Counts a generation request from its arrival until its response has been written (the guard travels into the
// content provider, which httplib destroys after the last byte).
class InFlight {
 public:
  explicit InFlight(std::atomic<int64_t>& n) : n_(n) { n_++; }
  ~InFlight() { n_--; }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  std::atomic<int64_t>& n_;
};

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  for (int i = 0; i < 24; i++) s += hex[rng() & 15];
  return s;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

json finish_json(FinishReason r) {
  switch (r) {
    case FinishReason::Eos:
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Aborted: return "abort";
    default: return nullptr;
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// Code points in valid UTF-8 text (the unit of OpenAI's text_offset, as Python strings count).
int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The logprobs of a prompt (1..n-1) as the engine returns them; the first prompt token has none (null).
using PromptLogprobs = std::vector<TokenLogprob>;

// Builds the "logprobs" object of a choice (or of one stream chunk) in the endpoint's form. Completions:
// {tokens, token_logprobs, top_logprobs, text_offset} (text_offset in code points of the choice's text). Chat:
// {content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
class LogprobsJson {
 public:
  LogprobsJson(const Tokenizer& tok, bool chat, bool ids) : tok_(tok), chat_(chat), ids_(ids) {}
  // One token; lp null: no logprob (the first prompt token).
  void add(int32_t token, const TokenLogprob* lp, int64_t text_offset) {
    const std::string text = name(token);
    if (chat_) {
      json top = json::array();
      if (lp)
        for (auto& [id, v] : lp->top) top.push_back(entry(name(id), id, v));
      json e = entry(text, token, lp ? lp->logprob : 0.0f);
      e["top_logprobs"] = std::move(top);
      content_.push_back(std::move(e));
      return;
    }
    tokens_.push_back(text);
    token_logprobs_.push_back(lp ? json(clamp(lp->logprob)) : json(nullptr));
    if (lp) {
      json top = json::object();
      // Most likely first: where two tokens print the same, the key keeps the larger logprob.
      for (auto& [id, v] : lp->top) {
        std::string key = name(id);
        if (!top.contains(key)) top[key] = clamp(v);
      }
      top_.push_back(std::move(top));
    } else {
      top_.push_back(nullptr);
    }
    offsets_.push_back(text_offset);
  }
  bool empty() const { return chat_ ? content_.empty() : tokens_.empty(); }
  json build() const {
    if (chat_) return {{"content", content_}};
    return {{"tokens", tokens_}, {"token_logprobs", token_logprobs_}, {"top_logprobs", top_}, {"text_offset", offsets_}};
  }

 private:
  std::string name(int32_t id) const { return ids_ ? "token_id:" + std::to_string(id) : openai_token_text(tok_, id); }
  static double clamp(float v) { return std::max(double(v), -9999.0); }  // -inf is not JSON (vLLM's floor)
  json entry(const std::string& text, int32_t id, float v) const {
    json bytes = json::array();
    for (unsigned char c : tok_.token_bytes(id, true)) bytes.push_back(int(c));
    return {{"token", text}, {"logprob", clamp(v)}, {"bytes", std::move(bytes)}};
  }
  const Tokenizer& tok_;
  bool chat_, ids_;
  json tokens_ = json::array(), token_logprobs_ = json::array(), top_ = json::array(), offsets_ = json::array();
  json content_ = json::array();
};

// What a response needs between the handler and its content provider.
struct ResponseState {
  struct Prompt {
    std::vector<int32_t> ids;
    std::string text;  // its decoding, for echo
  };
  struct Choice {
    size_t prompt = 0;
    std::string text;
    json finish = nullptr;
    int64_t completion_tokens = 0;
    bool started = false;
    std::unique_ptr<StreamDecoder> offsets;  // text_offset of the generated tokens (logprobs only)
    int64_t offset = 0;                      // code points of text before the next token
    std::unique_ptr<LogprobsJson> logprobs;  // non-stream: everything so far
  };
  std::shared_ptr<RequestGroup> group;
  std::shared_ptr<InFlight> guard;
  const Tokenizer* tok = nullptr;
  bool chat = false, stream = false, include_usage = false, echo = false, logprobs = false, tokens_as_ids = false;
  std::string id, model;
  int64_t created = 0;
  std::vector<Prompt> prompts;
  std::vector<Choice> choices;
  bool started = false;
  std::chrono::steady_clock::time_point last_check = std::chrono::steady_clock::now();

  void init(std::vector<std::vector<int32_t>> prompt_ids, int64_t n) {
    for (auto& ids : prompt_ids) {
      Prompt p;
      if (echo) p.text = decode_continuation(*tok, {}, ids);
      p.ids = std::move(ids);
      prompts.push_back(std::move(p));
    }
    choices.resize(prompts.size() * size_t(n));
    for (size_t i = 0; i < choices.size(); i++) {
      Choice& c = choices[i];
      c.prompt = i / size_t(n);
      if (!logprobs) continue;
      c.offsets = std::make_unique<StreamDecoder>(*tok, prompts[c.prompt].ids);
      if (echo) c.offset = code_points(prompts[c.prompt].text);
      if (!stream) c.logprobs = std::make_unique<LogprobsJson>(*tok, chat, tokens_as_ids);
    }
  }

  json usage() const {
    int64_t p = 0, c = 0;
    for (auto& pr : prompts) p += int64_t(pr.ids.size());
    for (auto& ch : choices) c += ch.completion_tokens;
    return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
  }
  json chunk(json choices_json) const {
    return {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
            {"model", model}, {"choices", std::move(choices_json)}};
  }
  json choice_delta(size_t i, const std::string& t, const json& fin, json lp = nullptr) const {
    if (chat) {
      json delta = json::object();
      if (!t.empty()) delta["content"] = t;
      return {{"index", i}, {"delta", delta}, {"logprobs", std::move(lp)}, {"finish_reason", fin}};
    }
    return {{"index", i}, {"text", t}, {"logprobs", std::move(lp)}, {"finish_reason", fin}};
  }
  std::string event(size_t i, const std::string& t, const json& fin, json lp = nullptr) const {
    return "data: " + dump(chunk(json::array({choice_delta(i, t, fin, std::move(lp))}))) + "\n\n";
  }
  // The echoed prompt: its text, and its tokens' logprobs (the first token's null) when asked for.
  void add_prompt_logprobs(const Prompt& p, const PromptLogprobs& lps, LogprobsJson& out) const {
    StreamDecoder d(*tok);
    int64_t offset = 0;
    for (size_t k = 0; k < p.ids.size(); k++) {
      const TokenLogprob* lp = k >= 1 && k - 1 < lps.size() ? &lps[k - 1] : nullptr;
      out.add(p.ids[k], lp, offset);
      offset += code_points(d.push(p.ids[k]));
    }
  }
  // Takes an output: counts its tokens, and returns its SSE events when streaming.
  std::string absorb(const RequestGroup::Event& ev) {
    const size_t i = ev.index;
    Choice& c = choices[i];
    const RequestOutput& o = ev.out;
    c.completion_tokens = std::max(c.completion_tokens + int64_t(o.new_tokens.size()), o.completion_tokens);
    std::string sse;
    if (!c.started) {
      c.started = true;
      if (echo) {
        const Prompt& p = prompts[c.prompt];
        std::unique_ptr<LogprobsJson> lp;
        if (logprobs) {
          lp = std::make_unique<LogprobsJson>(*tok, chat, tokens_as_ids);
          add_prompt_logprobs(p, o.prompt_logprobs, stream ? *lp : *c.logprobs);
        }
        if (stream) sse += event(i, p.text, nullptr, lp ? lp->build() : json(nullptr));
        else c.text += p.text;
      }
    }
    std::unique_ptr<LogprobsJson> step_lp;
    if (logprobs && !o.new_tokens.empty()) {
      LogprobsJson& lp = stream ? *(step_lp = std::make_unique<LogprobsJson>(*tok, chat, tokens_as_ids)) : *c.logprobs;
      for (size_t k = 0; k < o.new_tokens.size(); k++) {
        lp.add(o.new_tokens[k], k < o.logprobs.size() ? &o.logprobs[k] : nullptr, c.offset);
        c.offset += code_points(c.offsets->push(o.new_tokens[k]));
      }
    }
    if (!o.new_text.empty() || step_lp) {
      if (stream) sse += event(i, o.new_text, nullptr, step_lp ? step_lp->build() : json(nullptr));
      else c.text += o.new_text;
    }
    if (o.finished) {
      c.finish = finish_json(o.finish_reason);
      if (stream) sse += event(i, "", c.finish);
    }
    return sse;
  }
  std::string final_body() const {
    json out = json::array();
    for (size_t i = 0; i < choices.size(); i++) {
      const Choice& c = choices[i];
      json lp = c.logprobs ? c.logprobs->build() : json(nullptr);
      if (chat)
        out.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", c.text}}},
                       {"logprobs", std::move(lp)}, {"finish_reason", c.finish}});
      else
        out.push_back({{"index", i}, {"text", c.text}, {"logprobs", std::move(lp)}, {"finish_reason", c.finish}});
    }
    return dump({{"id", id}, {"object", chat ? "chat.completion" : "text_completion"}, {"created", created},
                 {"model", model}, {"choices", out}, {"usage", usage()}});
  }
  // True when it is time to look whether the client is still connected.
  bool check_due(std::chrono::milliseconds every) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_check < every) return false;
    last_check = now;
    return true;
  }
};

}  // namespace

HttpServer::HttpServer(EngineLoop& loop, const Tokenizer& tok, const ChatTemplate* chat, ServerOptions opt)
    : loop_(loop), tok_(tok), chat_(chat), opt_(std::move(opt)),
      http_(std::make_unique<GuardedServer>(connection_limits(opt_))),
      seed_counter_(std::random_device{}()),
      created_(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count()) {
  httplib::Server& s = *http_;
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server share the port.
  s.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  // What the Keep-Alive response header announces; the connection layer enforces it.
  s.set_keep_alive_timeout(std::max<time_t>(1, time_t(opt_.keep_alive_timeout.count() / 1000)));
  s.set_tcp_nodelay(true);  // stream tokens as they come

  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, int(Endpoint::Completions));
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generate(req, res, int(Endpoint::ChatCompletions));
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) { handle_models(res); });
  s.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    handle_model(req.matches[1].str(), res);
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) { handle_health(res); });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) { handle_metrics(res); });

  // Every error without a body of ours (unknown route, payload too large, unparsable HTTP) gets OpenAI's shape.
  s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string msg = res.status == 404   ? "Invalid URL (" + req.method + " " + req.path + ")"
                      : res.status == 413 ? std::string("the request body is too large")
                                          : "HTTP error " + std::to_string(res.status);
    res.set_content(error_body(ApiError(res.status, msg)), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = std::string("internal error: ") + e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what, "", "", "server_error"));
  });
  if (opt_.log_requests) {
    s.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "oar serve: %s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
    });
  }
}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind() {
  errno = 0;
  int port = opt_.port == 0 ? http_->bind_to_any_port(opt_.host) : (http_->bind_to_port(opt_.host, opt_.port) ? opt_.port : -1);
  if (port < 0) {
    throw Error("--host " + opt_.host + " --port " + std::to_string(opt_.port) + ": cannot listen there" +
                (errno ? std::string(" (") + std::strerror(errno) + ")" : std::string()));
  }
  http_->raise_backlog(opt_.listen_backlog);
  return port;
}

void HttpServer::start() {
  thread_ = std::thread([this] {
    http_->listen_after_bind();
    listen_returned_ = true;
  });
}

void HttpServer::begin_drain() { draining_ = true; }

void HttpServer::stop() {
  abort_renders();  // a handler still rendering a chat template would hold up the thread pool's join
  if (!thread_.joinable()) return;
  // listen_after_bind may not have started yet, and httplib's stop() only acts on a running server.
  while (!http_->is_running() && !listen_returned_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  http_->stop();
  thread_.join();
}

uint64_t HttpServer::next_seed() { return splitmix64(seed_counter_.fetch_add(1)); }

namespace {
json model_json(const ServerOptions& opt, int64_t created) {
  return {{"id", opt.served_model_name}, {"object", "model"}, {"created", created}, {"owned_by", "oar"},
          {"max_model_len", opt.context_length}};
}
}  // namespace

void HttpServer::handle_models(httplib::Response& res) {
  res.set_content(dump({{"object", "list"}, {"data", json::array({model_json(opt_, created_)})}}), "application/json");
}

void HttpServer::handle_model(const std::string& id, httplib::Response& res) {
  if (id != opt_.served_model_name) {
    send_error(res, ApiError(404, "The model '" + id + "' does not exist", "model", "model_not_found"));
    return;
  }
  res.set_content(dump(model_json(opt_, created_)), "application/json");
}

void HttpServer::handle_health(httplib::Response& res) {
  if (draining_) {
    res.status = 503;
    res.set_content(R"({"status":"draining"})", "application/json");
  } else {
    res.set_content(R"({"status":"ok"})", "application/json");
  }
}

void HttpServer::handle_metrics(httplib::Response& res) {
  HttpCounters http;
  http.in_flight = in_flight_;
  http.rejected_draining = rejected_draining_;
  const ConnectionStats& cs = http_->stats();
  http.connections_open = cs.open;
  http.connections_rejected = cs.rejected;
  http.connections_evicted = cs.evicted;
  http.request_timeouts = cs.timed_out;
  http.bad_requests = cs.bad_requests;
  http.unauthorized = cs.unauthorized;
  res.set_content(prometheus_text(loop_.metrics(), http, opt_.served_model_name), "text/plain; version=0.0.4");
}

void HttpServer::handle_generate(const httplib::Request& req, httplib::Response& res, int endpoint_int) {
  const Endpoint endpoint = Endpoint(endpoint_int);
  const bool chat = endpoint == Endpoint::ChatCompletions;
  if (draining_) {
    rejected_draining_++;
    send_error(res, ApiError(503, "the server is shutting down", "", "shutting_down", "service_unavailable"));
    return;
  }
  auto guard = std::make_shared<InFlight>(in_flight_);
  ApiRequest r;
  std::vector<EngineLoop::Submission> subs;
  std::vector<std::vector<int32_t>> prompts;
  const char* prompt_param = chat ? "messages" : "prompt";
  try {
    ParseLimits lim;
    lim.served_model_name = opt_.served_model_name;
    lim.vocab_size = opt_.vocab_size;
    r = parse_request(req.body, endpoint, lim);
    if (chat) {
      if (!chat_) throw ApiError(400, "this model has no chat template", "messages");
      // The render stops when the client goes away or the server aborts (its budget bounds it otherwise).
      ClientProbe client(req, opt_.disconnect_poll);
      auto cancelled = [this, &client] { return aborting_.load() || client.gone(); };
      try {
        prompts.push_back(chat_->encode(tok_, r.messages, r.add_generation_prompt, cancelled));
      } catch (const jinja::TemplateRaised& e) {
        throw ApiError(400, e.what(), "messages");  // the template's own words, e.g. roles must alternate
      } catch (const jinja::RenderCancelled&) {  // only a shutting-down server has anyone to tell
        throw ApiError(503, "the server is shutting down", "", "shutting_down", "service_unavailable");
      } catch (const jinja::RenderLimitExceeded& e) {
        throw ApiError(400, std::string("the chat template cannot render these messages: ") + e.what(), "messages",
                       "chat_template_budget_exceeded");
      } catch (const jinja::TemplateError& e) {
        throw ApiError(400, std::string("the chat template cannot render these messages: ") + e.what(), "messages");
      }
    } else {
      for (auto& p : r.prompts) prompts.push_back(p.is_ids ? p.ids : tok_.encode(p.text, true));
    }
    const int64_t ctx = opt_.context_length;
    const uint64_t seed = next_seed();
    const bool prompt_only = r.max_tokens && *r.max_tokens == 0;  // echo with max_tokens 0
    for (size_t i = 0; i < prompts.size(); i++) {
      const int64_t n = int64_t(prompts[i].size());
      if (n == 0) throw ApiError(400, "the prompt is empty", prompt_param);
      if (n > ctx || (n == ctx && !prompt_only))
        throw ApiError(400, "This model's maximum context length is " + std::to_string(ctx) +
                                " tokens. However, your prompt has " + std::to_string(n) +
                                " tokens, leaving no room for the completion.",
                       prompt_param, "context_length_exceeded");
      int64_t max_new;
      if (r.max_tokens) {
        if (n + *r.max_tokens > ctx)
          throw ApiError(400, "This model's maximum context length is " + std::to_string(ctx) +
                                  " tokens. However, you requested " + std::to_string(n + *r.max_tokens) + " tokens (" +
                                  std::to_string(n) + " in the prompt, " + std::to_string(*r.max_tokens) +
                                  " for the completion). Please reduce the prompt or the completion length.",
                         "max_tokens", "context_length_exceeded");
        max_new = *r.max_tokens;
      } else {
        // OpenAI's defaults: 16 tokens for completions; for chat, as much as the context leaves.
        max_new = chat ? ctx - n : std::min<int64_t>(16, ctx - n);
      }
      RequestParams p;
      p.max_new_tokens = max_new;
      p.stop = r.stop;
      p.ignore_eos = r.ignore_eos;
      p.logprobs = r.logprobs;
      p.prompt_logprobs = r.echo && r.logprobs >= 0;
      // The n choices of a prompt: the first runs the prompt, the others share its KV blocks.
      const size_t first = subs.size();
      for (int64_t j = 0; j < r.n; j++) {
        p.sampling = sampling_params(r, seed + i, j);
        EngineLoop::Submission sub{prompts[i], p};
        if (j > 0) sub.same_prompt_as = first;
        subs.push_back(std::move(sub));
      }
    }
  } catch (const ApiError& e) {
    send_error(res, e);
    return;
  } catch (const Error& e) {  // e.g. a tokenizer refusing its input
    send_error(res, ApiError(400, e.what(), prompt_param));
    return;
  }

  auto group = loop_.submit(std::move(subs));
  switch (group->wait_admission()) {
    case RequestGroup::Admission::Accepted: break;
    case RequestGroup::Admission::QueueFull:
      send_error(res, ApiError(429, "the server is busy (its waiting queue is full); retry later", "", "queue_full",
                               "rate_limit_error"));
      return;
    case RequestGroup::Admission::Invalid: send_error(res, ApiError(400, group->error(), prompt_param)); return;
    default:
      rejected_draining_++;
      send_error(res, ApiError(503, "the server is shutting down", "", "shutting_down", "service_unavailable"));
      return;
  }

  auto st = std::make_shared<ResponseState>();
  st->group = group;
  st->guard = guard;
  st->chat = chat;
  st->stream = r.stream;
  st->include_usage = r.include_usage;
  st->id = random_id(chat ? "chatcmpl-" : "cmpl-");
  st->model = opt_.served_model_name;
  st->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  st->tok = &tok_;
  st->echo = r.echo;
  st->logprobs = r.logprobs >= 0;
  st->tokens_as_ids = r.tokens_as_ids;
  st->init(std::move(prompts), r.n);
  const auto poll = opt_.disconnect_poll;
  EngineLoop* loop = &loop_;

  // Both kinds of response come from a provider that waits for the engine's outputs, polling the socket
  // meanwhile: a client that has gone away makes it return false, and the releaser aborts the requests.
  auto provider = [st, poll](size_t, httplib::DataSink& sink) -> bool {
    std::string out;
    if (st->stream && !st->started && st->chat) {
      for (size_t i = 0; i < st->choices.size(); i++)  // OpenAI's first chunk: the role, empty content
        out += "data: " + dump(st->chunk(json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}},
                                                       {"logprobs", nullptr}, {"finish_reason", nullptr}}}))) + "\n\n";
    }
    st->started = true;
    std::vector<RequestGroup::Event> events;
    const bool more = st->group->wait_events(events, out.empty() ? poll : std::chrono::milliseconds(0));
    for (auto& ev : events) out += st->absorb(ev);
    if (!more) {
      if (st->stream) {
        if (st->include_usage) {  // OpenAI's last chunk with stream_options.include_usage: no choices, the usage
          json u = st->chunk(json::array());
          u["usage"] = st->usage();
          out += "data: " + dump(u) + "\n\n";
        }
        out += "data: [DONE]\n\n";
      } else {
        out = st->final_body();
      }
    }
    if (!out.empty() && !sink.write(out.data(), out.size())) return false;
    if (!more) {
      sink.done();
      return true;
    }
    if (st->check_due(poll) && !sink.is_writable()) return false;
    return true;
  };
  auto releaser = [st, loop](bool success) {
    if (!success || !st->group->finished()) loop->cancel(st->group);
  };
  if (r.stream) {
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", provider, releaser);
  } else {
    res.set_chunked_content_provider("application/json", provider, releaser);
  }
}

}  // namespace oar::server
