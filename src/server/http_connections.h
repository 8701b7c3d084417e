// The connection layer under cpp-httplib: who gets a thread, for how long a client may take to send its
// request, and which request heads are refused before httplib parses them.
//
// httplib 0.11 gives every connection a pool thread from accept to close, so clients that send their headers
// slowly hold every thread; it reads the next keep-alive request through a fresh buffer (pipelined requests are
// lost); and it lets conflicting framing headers through. Here instead:
//  - one reader thread (epoll) receives every request head and, when its Content-Length says so, its body, with
//    deadlines (header_timeout, body_timeout, keep_alive_timeout; 408 on expiry). Worker threads only ever get
//    complete requests, so a slow client costs a file descriptor, not a thread.
//  - open connections are capped (max_connections). A connection beyond the cap closes the one that has waited
//    longest on its client, if that has waited evict_after or more, else is answered 503 itself.
//  - request heads are checked (check_request_head): NUL or other control bytes, obsolete line folding,
//    conflicting Content-Length, Transfer-Encoding other than chunked or with Content-Length: 400. Oversized
//    heads get 431, oversized bodies 413, requests without the API key 401, all with OpenAI's JSON error body.
//  - a connection keeps its receive buffer between requests, so pipelined requests are answered in order.
#pragma once
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/api.h"

namespace oar::server {

struct ConnectionLimits {
  size_t workers = 64;            // threads answering requests (a streaming response holds one throughout)
  size_t max_connections = 1024;  // open connections in all; more are refused with 503 (or evict an idle one)
  std::chrono::milliseconds header_timeout{10000};      // a request line and headers must arrive within this
  std::chrono::milliseconds body_timeout{60000};        // and then its body
  std::chrono::milliseconds keep_alive_timeout{5000};   // an idle connection waits this long for its next request
  std::chrono::milliseconds write_timeout{10000};       // a client that reads nothing for this long is dropped
  std::chrono::milliseconds evict_after{1000};          // at the cap, waited this long on its client: evictable
  size_t max_head_bytes = 64 << 10;
  size_t max_body_bytes = 32 << 20;
  size_t max_requests_per_connection = 1000;
  std::string api_key;                          // "": no authentication
  std::vector<std::string> open_paths{"/health"};  // answered without the API key
};

struct ConnectionStats {
  std::atomic<int64_t> open{0};          // connections open now
  std::atomic<int64_t> rejected{0};      // refused at the cap (503)
  std::atomic<int64_t> evicted{0};       // closed to make room for a new connection
  std::atomic<int64_t> timed_out{0};     // header, body or write deadline passed (408)
  std::atomic<int64_t> bad_requests{0};  // refused by the head check (400, 413, 431)
  std::atomic<int64_t> unauthorized{0};  // no or wrong API key (401)
};

// What the connection layer needs of a request head.
struct RequestHead {
  std::string method, target, path;  // path: target without its query
  std::optional<uint64_t> content_length;
  bool chunked = false;          // Transfer-Encoding: chunked
  bool expect_continue = false;  // Expect: 100-continue (the body comes after our interim response)
  std::string authorization;
};

// The offset just past the blank line that ends a request head in `buf`, or npos while incomplete.
size_t find_head_end(std::string_view buf);
// Parses a request head (request line and header fields, up to and including the blank line). Returns the
// 400 to answer when the head is malformed or its framing is ambiguous.
std::optional<ApiError> check_request_head(std::string_view head, RequestHead& out);
// "Bearer KEY" with KEY equal to `key`, compared in time independent of where they differ.
bool bearer_matches(std::string_view authorization, std::string_view key);

// The socket of the request that the calling worker thread is answering, or -1 outside a request: lets a
// handler see a client go away before its response starts (server/client_probe.h).
int current_request_socket();

class ConnectionPool;

// An httplib::Server whose connections are served by a ConnectionPool.
class GuardedServer : public httplib::Server {
 public:
  explicit GuardedServer(ConnectionLimits limits);
  ~GuardedServer() override;
  // cpp-httplib 0.11 listens with a backlog of 5, so a burst of connections beyond that waits for SYN
  // retransmits (a second and more). Listening again on the bound socket raises the backlog (Linux allows it).
  void raise_backlog(int n);
  const ConnectionStats& stats() const { return *stats_; }

 private:
  bool process_and_close_socket(socket_t sock) override;  // called on the accept thread: hands sock over
  std::shared_ptr<ConnectionStats> stats_;
  std::unique_ptr<ConnectionPool> pool_;
};

}  // namespace oar::server
