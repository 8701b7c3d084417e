// The OpenAI-compatible HTTP server over an EngineLoop (cpp-httplib: one pool thread per connection).
//   POST /v1/completions, POST /v1/chat/completions  (streaming by server-sent events when "stream": true)
//   GET /v1/models, GET /v1/models/{id} (404 for another id), GET /health, GET /metrics (Prometheus text)
// Errors are OpenAI's {"error": {...}} bodies: 400 for bad requests, 401 without the API key (when one is set),
// 404 for unknown routes, 408 for requests that arrive too slowly, 429 when the engine's waiting queue is full,
// 503 while shutting down or beyond the connection cap. A client that disconnects has its requests aborted (also
// while its chat template is still rendering). Connections, timeouts and the checks on request heads:
// server/http_connections.h.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "chat/chat_template.h"
#include "server/engine_loop.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace oar::server {

class GuardedServer;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0: any free port (see bind())
  std::string served_model_name = "oar";
  int64_t context_length = 2048;    // the model's positions: prompt + completion must fit
  int64_t vocab_size = 0;           // for token-id prompts
  size_t http_threads = 64;         // requests answered at once (more wait for a thread)
  size_t max_connections = 1024;    // open connections; more get 503 (or close one idle for evict_after)
  std::chrono::milliseconds header_timeout{10000}, body_timeout{60000}, keep_alive_timeout{5000};
  std::chrono::milliseconds evict_after{1000};
  std::string api_key;              // "": none; else "Authorization: Bearer KEY" on all but /health
  int listen_backlog = 1024;
  std::chrono::milliseconds disconnect_poll{50};  // how often a waiting response checks that its client is there
  bool log_requests = false;
};

class HttpServer {
 public:
  // `chat` may be null: /v1/chat/completions then answers 400.
  HttpServer(EngineLoop& loop, const Tokenizer& tok, const ChatTemplate* chat, ServerOptions opt);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int bind();    // throws oar::Error when the address cannot be bound; returns the port
  void start();  // serves on a background thread
  // Shutdown, step 1: new generation requests get 503 (and /health reports it); running ones go on.
  void begin_drain();
  bool draining() const { return draining_; }
  // Generation requests still being answered (admitted, or on their way to the engine).
  int64_t in_flight() const { return in_flight_; }
  // Shutdown, after a second signal: chat templates still rendering stop (their requests get 503). stop()
  // does this too.
  void abort_renders() { aborting_ = true; }
  // Step 2: stop listening, close idle connections, join the server thread.
  void stop();

 private:
  void handle_generate(const httplib::Request& req, httplib::Response& res, int endpoint);
  void handle_models(httplib::Response& res);
  void handle_model(const std::string& id, httplib::Response& res);  // GET /v1/models/{id}
  void handle_health(httplib::Response& res);
  void handle_metrics(httplib::Response& res);
  uint64_t next_seed();

  EngineLoop& loop_;
  const Tokenizer& tok_;
  const ChatTemplate* chat_;
  ServerOptions opt_;
  std::unique_ptr<GuardedServer> http_;
  std::thread thread_;
  std::atomic<bool> draining_{false}, listen_returned_{false}, aborting_{false};
  std::atomic<int64_t> in_flight_{0}, rejected_draining_{0};
  std::atomic<uint64_t> seed_counter_;
  const int64_t created_;  // start time, for /v1/models
};

}  // namespace oar::server
