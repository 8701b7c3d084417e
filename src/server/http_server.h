// The OpenAI-compatible HTTP server over an EngineLoop (cpp-httplib: one pool thread per connection).
//   POST /v1/completions, POST /v1/chat/completions  (streaming by server-sent events when "stream": true)
//   GET /v1/models, GET /v1/models/{id} (404 for another id), GET /health, GET /metrics (Prometheus text)
// Errors are OpenAI's {"error": {...}} bodies: 400 for bad requests, 404 for unknown routes, 429 when the
// engine's waiting queue is full, 503 while shutting down. A client that disconnects has its requests aborted.
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

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0: any free port (see bind())
  std::string served_model_name = "oar";
  int64_t context_length = 2048;    // the model's positions: prompt + completion must fit
  int64_t vocab_size = 0;           // for token-id prompts
  size_t http_threads = 64;         // connections served at once (more wait for a thread)
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
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::atomic<bool> draining_{false}, listen_returned_{false};
  std::atomic<int64_t> in_flight_{0}, rejected_draining_{0};
  std::atomic<uint64_t> seed_counter_;
  const int64_t created_;  // start time, for /v1/models
};

}  // namespace oar::server
