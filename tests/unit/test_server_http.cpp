// The HTTP transport of `oar serve` over loopback with raw sockets: request-head checks (framing that could be
// read two ways gets 400), pipelined requests answered in order, slow clients that neither hold threads nor
// lock others out (header and body timeouts, 408), the connection cap (503, eviction of the longest-waiting
// connection), the API key (401), and /metrics from the start. The engine is a stand-in that writes "a" per step.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "server/http_connections.h"
#include "server/http_server.h"

namespace oar::server {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Every request generates max_new_tokens letters 'a', one per step.
class LetterEngine : public EngineBackend {
 public:
  uint64_t add_request(std::vector<int32_t>, const RequestParams& p) override {
    reqs_[next_] = {p.max_new_tokens, 0};
    return next_++;
  }
  void abort_request(uint64_t id) override { aborted_.push_back(id); }
  bool has_work() const override { return !reqs_.empty() || !aborted_.empty(); }
  std::vector<RequestOutput> step() override {
    std::vector<RequestOutput> outs;
    for (uint64_t id : aborted_) {
      if (!reqs_.erase(id)) continue;
      RequestOutput o;
      o.request_id = id;
      o.finished = true;
      o.finish_reason = FinishReason::Aborted;
      outs.push_back(o);
    }
    aborted_.clear();
    for (auto it = reqs_.begin(); it != reqs_.end();) {
      RequestOutput o;
      o.request_id = it->first;
      o.new_tokens = {0};
      o.new_text = "a";
      o.completion_tokens = ++it->second.done;
      o.finished = o.completion_tokens >= it->second.want;
      o.finish_reason = FinishReason::Length;
      outs.push_back(o);
      it = o.finished ? reqs_.erase(it) : std::next(it);
    }
    return outs;
  }
  EngineMetrics metrics() const override {
    EngineMetrics m;
    m.blocks_total = 777;
    m.blocks_free = 777;
    return m;
  }
  void take_latency_samples(std::vector<double>&, std::vector<double>&) override {}

 private:
  struct Req {
    int64_t want, done;
  };
  std::map<uint64_t, Req> reqs_;
  std::vector<uint64_t> aborted_;
  uint64_t next_ = 1;
};

struct Server {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(std::string(OAR_FIXTURES_DIR) + "/tokenizers/bpe");
  LetterEngine engine;
  std::unique_ptr<EngineLoop> loop;
  std::unique_ptr<HttpServer> http;
  int port = 0;
  explicit Server(std::function<void(ServerOptions&)> setup = {}) {
    ServerOptions o;
    o.port = 0;
    o.served_model_name = "tiny";
    o.context_length = 512;
    o.vocab_size = tok->vocab_size();
    o.http_threads = 8;
    if (setup) setup(o);
    loop = std::make_unique<EngineLoop>(engine);
    http = std::make_unique<HttpServer>(*loop, *tok, nullptr, o);
    port = http->bind();
    http->start();
  }
  ~Server() {
    http->stop();
    loop->stop();
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_read_timeout(10, 0);
    return c;
  }
  double metric(const std::string& name) const {
    auto r = client()->Get("/metrics");
    if (!r || r->status != 200) return -1;
    size_t p = r->body.find("\n" + name + "{");
    if (p == std::string::npos) return -1;
    return std::stod(r->body.substr(r->body.find("} ", p) + 2));
  }
};

int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) { return send(fd, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size()); }

// Reads until the server closes the connection, `want` bytes of `marker` have been seen, or the timeout.
std::string read_for(int fd, std::chrono::milliseconds timeout, const std::string& marker = "", int want = 1) {
  std::string got;
  const auto until = Clock::now() + timeout;
  char buf[8192];
  auto count = [&] {
    int n = 0;
    for (size_t p = got.find(marker); !marker.empty() && p != std::string::npos; p = got.find(marker, p + 1)) n++;
    return n;
  };
  while (Clock::now() < until && (marker.empty() || count() < want)) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, size_t(n));
  }
  return got;
}

// True once the server has closed the connection (EOF or reset), waiting up to `timeout`.
bool closed_by_server(int fd, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return true;
  }
  return false;
}

int status_of(const std::string& response) {
  if (response.rfind("HTTP/1.1 ", 0) != 0) return -1;
  return std::stoi(response.substr(9, 3));
}

std::string json_body_of(const std::string& response) { return response.substr(response.find("\r\n\r\n") + 4); }

std::string completion_request(int max_tokens, const std::string& extra_headers = "") {
  const std::string body = R"({"prompt": "hi", "max_tokens": )" + std::to_string(max_tokens) + "}";
  return "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

TEST(HttpHead, FindsTheEndOfTheHead) {
  EXPECT_EQ(find_head_end("GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY"), 27u);
  EXPECT_EQ(find_head_end("GET / HTTP/1.1\nHost: x\n\n"), 24u);
  EXPECT_EQ(find_head_end("GET / HTTP/1.1\r\nHost: x\r\n"), std::string::npos);
}

TEST(HttpHead, RefusesAmbiguousFramingAndControlBytes) {
  RequestHead h;
  const std::string ok = "POST /v1/completions?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nExpect: 100-continue\r\n"
                         "Authorization: Bearer k\r\n\r\n";
  ASSERT_FALSE(check_request_head(ok, h));
  EXPECT_EQ(h.method, "POST");
  EXPECT_EQ(h.path, "/v1/completions");
  EXPECT_EQ(h.content_length, 12u);
  EXPECT_TRUE(h.expect_continue);
  EXPECT_EQ(h.authorization, "Bearer k");
  EXPECT_FALSE(check_request_head("POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n", h))
      << "repeating the same length is not ambiguous";
  ASSERT_FALSE(check_request_head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n", h));
  EXPECT_TRUE(h.chunked);
  for (const char* bad : {
           "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
           "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length: 3 3\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length : 3\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: a\x01" "b\r\n\r\n",
           "GARBAGE\r\n\r\n",
       }) {
    auto e = check_request_head(bad, h);
    ASSERT_TRUE(e) << bad;
    EXPECT_EQ(e->status, 400);
  }
  const std::string nul = std::string("GET / HTTP/1.1\r\nHost: a") + '\0' + "b\r\n\r\n";
  ASSERT_TRUE(check_request_head(nul, h));
}

TEST(HttpHead, BearerKeyMatchesExactly) {
  EXPECT_TRUE(bearer_matches("Bearer sk-secret", "sk-secret"));
  EXPECT_TRUE(bearer_matches("bearer sk-secret", "sk-secret"));
  for (const char* bad : {"Bearer sk-secreT", "Bearer sk-secret2", "Bearer sk-secre", "Bearer ", "sk-secret",
                          "Basic sk-secret", ""})
    EXPECT_FALSE(bearer_matches(bad, "sk-secret")) << bad;
  EXPECT_FALSE(bearer_matches("Bearer ", "")) << "an empty key never matches";
}

TEST(ServerHttp, AmbiguousFramingGets400OnTheWire) {
  Server s;
  const std::string body = R"({"prompt": "hi", "max_tokens": 2})";
  const std::string cl = std::to_string(body.size());
  for (const std::string& req : {
           "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + cl + "\r\nContent-Length: 5\r\n\r\n" + body,
           "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: " + cl +
               "\r\n\r\n" + body,
           "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-A: a" + std::string(1, '\0') + "b\r\nContent-Length: " + cl +
               "\r\n\r\n" + body,
       }) {
    int fd = connect_to(s.port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, req));
    std::string got = read_for(fd, 5s);
    EXPECT_EQ(status_of(got), 400) << got;
    json j = json::parse(json_body_of(got));
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(closed_by_server(fd, 2s));
    close(fd);
  }
  EXPECT_EQ(s.metric("oar_request_success_total"), 0) << "no request may reach the engine";
  EXPECT_EQ(s.metric("oar_http_bad_requests_total"), 3);
  // An oversized body is refused from its Content-Length, before it is read.
  int fd = connect_to(s.port);
  ASSERT_TRUE(send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{"));
  EXPECT_EQ(status_of(read_for(fd, 5s)), 413);
  close(fd);
}

TEST(ServerHttp, PipelinedRequestsAreAnsweredInOrder) {
  Server s;
  int fd = connect_to(s.port);
  ASSERT_GE(fd, 0);
  // Three requests in one write: each must be answered, in order, on the same connection.
  ASSERT_TRUE(send_all(fd, completion_request(2) + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + completion_request(5)));
  std::string got = read_for(fd, 10s, "\r\n0\r\n\r\n", 2);  // the ends of both chunked completions
  std::vector<std::string> bodies;
  for (size_t p = got.find("HTTP/1.1 "); p != std::string::npos; p = got.find("HTTP/1.1 ", p + 1)) {
    EXPECT_EQ(status_of(got.substr(p)), 200);
    bodies.push_back(got.substr(p, got.find("HTTP/1.1 ", p + 1) - p));
  }
  ASSERT_EQ(bodies.size(), 3u) << got;
  EXPECT_NE(bodies[0].find(R"("text":"aa")"), std::string::npos) << bodies[0];
  EXPECT_NE(bodies[1].find(R"({"status":"ok"})"), std::string::npos) << bodies[1];
  EXPECT_NE(bodies[2].find(R"("text":"aaaaa")"), std::string::npos) << bodies[2];
  // And the connection still serves a later request.
  ASSERT_TRUE(send_all(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_EQ(status_of(read_for(fd, 5s, "}")), 200);
  close(fd);
}

// Connections that send a header line now and then and never finish their request.
struct SlowClients {
  std::vector<int> fds;
  void open(int port, int n) {
    for (int i = 0; i < n; i++) {
      int fd = connect_to(port);
      ASSERT_GE(fd, 0);
      ASSERT_TRUE(send_all(fd, "GET /health HTTP/1.1\r\n"));
      fds.push_back(fd);
    }
  }
  void drip() {
    for (int fd : fds) (void)send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
  }
  ~SlowClients() {
    for (int fd : fds) close(fd);
  }
};

TEST(ServerHttp, SlowClientsHoldNoThreadsAndTimeOut) {
  Server s([](ServerOptions& o) {
    o.http_threads = 2;
    o.header_timeout = 1500ms;
  });
  SlowClients slow;
  slow.open(s.port, 40);  // twenty times the threads
  std::this_thread::sleep_for(200ms);
  slow.drip();
  auto t0 = Clock::now();
  auto h = s.client()->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto c = s.client()->Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 3})", "application/json");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->status, 200) << c->body;
  EXPECT_LT(Clock::now() - t0, 1s) << "slow clients delayed others";
  // Past the header timeout every slow client has been answered 408 and closed.
  std::this_thread::sleep_for(1500ms);
  for (int fd : slow.fds) {
    std::string got = read_for(fd, 1s);
    EXPECT_EQ(status_of(got), 408) << got;
    EXPECT_TRUE(closed_by_server(fd, 1s));
  }
  EXPECT_EQ(s.metric("oar_http_request_timeouts_total"), 40);
}

TEST(ServerHttp, ConnectionCapAnswers503AndEvictsTheLongestWaiting) {
  Server s([](ServerOptions& o) {
    o.max_connections = 8;
    o.evict_after = 300ms;
    o.header_timeout = 3s;
  });
  SlowClients slow;
  slow.open(s.port, 12);  // 4 past the cap, none waiting long enough to give way yet
  std::this_thread::sleep_for(400ms);
  std::vector<int> refused;
  for (size_t i = 0; i < slow.fds.size(); i++) {
    std::string got = read_for(slow.fds[i], 10ms);
    if (!got.empty()) {
      EXPECT_EQ(status_of(got), 503) << got;
      EXPECT_EQ(json::parse(json_body_of(got))["error"]["code"], "too_many_connections");
      refused.push_back(int(i));
    }
  }
  EXPECT_EQ(refused, std::vector<int>({8, 9, 10, 11}));
  // Now the slow ones have waited past evict_after: a new client takes the place of the longest-waiting one.
  auto t0 = Clock::now();
  auto h = s.client()->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto c = s.client()->Post("/v1/completions", R"({"prompt": "hi", "max_tokens": 3})", "application/json");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->status, 200);
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(status_of(read_for(slow.fds[0], 1s)), 503) << "the longest-waiting connection makes room";
  EXPECT_GE(s.metric("oar_http_connections_evicted_total"), 1);
  EXPECT_EQ(s.metric("oar_http_connections_rejected_total"), 4);
}

TEST(ServerHttp, SlowBodyGets408) {
  Server s([](ServerOptions& o) { o.body_timeout = 500ms; });
  int fd = connect_to(s.port);
  ASSERT_TRUE(send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\""));
  auto t0 = Clock::now();
  std::string got = read_for(fd, 5s);
  EXPECT_EQ(status_of(got), 408) << got;
  EXPECT_LT(Clock::now() - t0, 2s);
  close(fd);
}

TEST(ServerHttp, ApiKeyIsRequiredExceptForHealth) {
  Server s([](ServerOptions& o) { o.api_key = "sk-test-123"; });
  auto c = s.client();
  const std::string body = R"({"prompt": "hi", "max_tokens": 2})";
  auto none = c->Post("/v1/completions", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(c->Get("/v1/models")->status, 401);
  EXPECT_EQ(c->Get("/metrics")->status, 401);
  EXPECT_EQ(c->Get("/health")->status, 200) << "load balancers probe /health without a key";
  httplib::Headers wrong = {{"Authorization", "Bearer sk-test-124"}};
  EXPECT_EQ(c->Post("/v1/completions", wrong, body, "application/json")->status, 401);
  httplib::Headers right = {{"Authorization", "Bearer sk-test-123"}};
  auto ok = c->Post("/v1/completions", right, body, "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(json::parse(ok->body)["choices"][0]["text"], "aa");
  EXPECT_EQ(c->Get("/v1/models", right)->status, 200);
}

TEST(ServerHttp, MetricsShowTheKVCapacityBeforeAnyRequest) {
  Server s;
  EXPECT_EQ(s.metric("oar_kv_cache_blocks_total"), 777);
  EXPECT_EQ(s.metric("oar_kv_cache_blocks_free"), 777);
  EXPECT_GE(s.metric("oar_http_connections_open"), 1);  // this request's own, at least
}

}  // namespace
}  // namespace oar::server
