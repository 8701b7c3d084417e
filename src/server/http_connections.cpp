#include "server/http_connections.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace oar::server {

using Clock = std::chrono::steady_clock;

// ---- request heads ----

size_t find_head_end(std::string_view buf) {
  for (size_t i = buf.find('\n'); i != std::string_view::npos; i = buf.find('\n', i + 1)) {
    if (i + 1 < buf.size() && buf[i + 1] == '\n') return i + 2;
    if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') return i + 3;
  }
  return std::string_view::npos;
}

namespace {

bool is_token_char(unsigned char c) {
  return std::isalnum(c) || std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

ApiError bad_head(const std::string& why) { return ApiError(400, "malformed HTTP request: " + why); }

}  // namespace

std::optional<ApiError> check_request_head(std::string_view head, RequestHead& out) {
  out = RequestHead{};
  // Lines end in CRLF (a bare LF is tolerated); every other control byte but HTAB is refused anywhere.
  std::vector<std::string_view> lines;
  size_t start = 0;
  for (size_t i = 0; i < head.size(); i++) {
    const unsigned char c = static_cast<unsigned char>(head[i]);
    if (c == '\n') {
      std::string_view line = head.substr(start, i - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      lines.push_back(line);
      start = i + 1;
    } else if (c == '\r') {
      if (i + 1 >= head.size() || head[i + 1] != '\n') return bad_head("a CR not followed by LF");
    } else if (c == 0) {
      return bad_head("a NUL byte in the request head");
    } else if ((c < 0x20 && c != '\t') || c == 0x7f) {
      return bad_head("a control character in the request head");
    }
  }
  if (lines.empty() || lines[0].empty()) return bad_head("no request line");
  {
    std::string_view rl = lines[0];
    size_t a = rl.find(' '), b = rl.rfind(' ');
    if (a == std::string_view::npos || a == b) return bad_head("the request line is not METHOD TARGET VERSION");
    out.method = std::string(rl.substr(0, a));
    out.target = std::string(rl.substr(a + 1, b - a - 1));
    out.path = out.target.substr(0, out.target.find_first_of("?#"));
  }
  bool has_te = false, has_cl = false;
  for (size_t k = 1; k < lines.size(); k++) {
    std::string_view line = lines[k];
    if (line.empty()) break;  // the blank line that ends the head
    if (line[0] == ' ' || line[0] == '\t') return bad_head("obsolete line folding");
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return bad_head("a header line without a name");
    std::string_view name = line.substr(0, colon);
    for (char c : name)
      if (!is_token_char(static_cast<unsigned char>(c))) return bad_head("an invalid header name");
    const std::string n = lower(name);
    const std::string_view value = trim(line.substr(colon + 1));
    if (n == "content-length") {
      if (value.empty() || value.size() > 19 ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return bad_head("an invalid Content-Length");
      const uint64_t v = std::stoull(std::string(value));
      if (has_cl && *out.content_length != v) return bad_head("conflicting Content-Length headers");
      has_cl = true;
      out.content_length = v;
    } else if (n == "transfer-encoding") {
      // httplib decodes chunked only; anything else would be read as no body and desynchronise the connection.
      if (has_te || lower(value) != "chunked") return bad_head("unsupported Transfer-Encoding (chunked only)");
      has_te = true;
      out.chunked = true;
    } else if (n == "expect") {
      out.expect_continue = lower(value) == "100-continue";
    } else if (n == "authorization") {
      out.authorization = std::string(value);
    }
  }
  if (has_te && has_cl) return bad_head("both Transfer-Encoding and Content-Length");
  return std::nullopt;
}

bool bearer_matches(std::string_view authorization, std::string_view key) {
  if (key.empty() || authorization.size() < 7 || lower(authorization.substr(0, 7)) != "bearer ") return false;
  std::string_view given = trim(authorization.substr(7));
  // Every byte of the key is compared whatever the input, so the time taken tells nothing of a near match.
  volatile unsigned char diff = given.size() != key.size();
  for (size_t i = 0; i < key.size(); i++) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(key[i]));
  }
  return diff == 0;
}

// ---- connections ----

namespace {

struct Conn {
  int fd = -1;
  std::string buf;          // received and not yet consumed
  size_t served = 0;        // requests answered on this connection
  Clock::time_point since;  // when it last started waiting on its client (accept, or its last response)
  Clock::time_point request_start;  // the first byte of the request being received
  bool got_bytes = false;   // of the request being received
  bool polled = false;      // registered with the reader's epoll
  bool counted = false;     // taken in by the reader: one of stats.open
  size_t head_len = 0;      // once its head is complete
  RequestHead head;
  Clock::time_point body_deadline;
};

const char* reason(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

std::string error_response(const ApiError& e) {
  const std::string body = error_body(e);
  std::string r = "HTTP/1.1 " + std::to_string(e.status) + " " + reason(e.status) +
                  "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                  "\r\nConnection: close\r\n";
  if (e.status == 401) r += "WWW-Authenticate: Bearer\r\n";
  if (e.status == 503) r += "Retry-After: 1\r\n";
  return r + "\r\n" + body;
}

// Answers (when `response` is not empty) and closes, without blocking: the socket's send buffer is empty when a
// connection is refused. What the client already sent is read first, so that closing sends FIN, not RST (an RST
// can make the client drop our answer unread).
void answer_and_close(int fd, const std::string& response) {
  if (!response.empty()) (void)::send(fd, response.data(), response.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  char sink[4096];
  for (int i = 0; i < 64 && ::recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
  }
  ::close(fd);
}

bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, int(std::min<int64_t>(left, 1 << 30)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

void address_of(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if ((peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len)) != 0)
    return;
  char s[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&a);
    inet_ntop(AF_INET, &v4->sin_addr, s, sizeof s);
    port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&a);
    inet_ntop(AF_INET6, &v6->sin6_addr, s, sizeof s);
    port = ntohs(v6->sin6_port);
  }
  ip = s;
}

// httplib's view of a connection for one request: reads come from the connection's buffer first (the reader has
// put the head and usually the body there), and what is read past this request stays there for the next one.
class ConnStream final : public httplib::Stream {
 public:
  ConnStream(Conn& c, Clock::time_point read_deadline, std::chrono::milliseconds write_timeout)
      : c_(c), read_deadline_(read_deadline), write_timeout_(write_timeout) {}
  size_t consumed() const { return off_; }

  bool is_readable() const override { return off_ < c_.buf.size() || wait_fd(c_.fd, POLLIN, read_deadline_); }
  bool is_writable() const override {
    if (!wait_fd(c_.fd, POLLOUT, Clock::now() + write_timeout_)) return false;
    char b;
    const ssize_t n = ::recv(c_.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);  // 0: the client has gone
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
  }
  ssize_t read(char* ptr, size_t size) override {
    if (off_ == c_.buf.size()) {
      char tmp[16384];
      for (;;) {
        if (!wait_fd(c_.fd, POLLIN, read_deadline_)) return -1;
        const ssize_t n = ::recv(c_.fd, tmp, sizeof tmp, 0);
        if (n > 0) {
          c_.buf.append(tmp, size_t(n));
          break;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return n == 0 ? 0 : -1;
      }
    }
    const size_t k = std::min(size, c_.buf.size() - off_);
    std::memcpy(ptr, c_.buf.data() + off_, k);
    off_ += k;
    return ssize_t(k);
  }
  ssize_t write(const char* ptr, size_t size) override {
    const auto deadline = Clock::now() + write_timeout_;
    for (;;) {
      if (!wait_fd(c_.fd, POLLOUT, deadline)) return -1;
      const ssize_t n = ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
      if (n >= 0) return n;
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return -1;
    }
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { address_of(c_.fd, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address_of(c_.fd, false, ip, port); }
  socket_t socket() const override { return c_.fd; }

 private:
  Conn& c_;
  size_t off_ = 0;
  Clock::time_point read_deadline_;
  std::chrono::milliseconds write_timeout_;
};

}  // namespace

// The reader thread and the workers. Connections move reader -> queue -> worker -> reader (or closed); the
// reader alone touches those it holds, a worker alone the one it serves.
class ConnectionPool {
 public:
  using Serve = std::function<bool(httplib::Stream&, bool close_connection, bool& connection_closed)>;
  ConnectionPool(ConnectionLimits lim, std::shared_ptr<ConnectionStats> stats, Serve serve)
      : lim_(std::move(lim)), stats_(std::move(stats)), serve_(std::move(serve)) {}
  ~ConnectionPool() { stop(); }

  void start() {
    std::lock_guard lk(mu_);
    if (running_) return;
    stopping_ = false;
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = wake_;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, wake_, &ev);
    running_ = true;
    reader_ = std::thread([this] { read_loop(); });
    slots_.clear();
    for (size_t i = 0; i < std::max<size_t>(lim_.workers, 1); i++) slots_.push_back(std::make_unique<Slot>());
    for (auto& s : slots_) workers_.emplace_back([this, slot = s.get()] { work_loop(*slot); });
  }

  // On the accept thread.
  void admit(int fd) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->since = c->request_start = Clock::now();
    hand_to_reader(std::move(c), true);
  }

  // Idle connections are closed; requests being answered are finished first.
  void stop() {
    {
      std::lock_guard lk(mu_);
      if (!running_) return;
      stopping_ = true;
    }
    wake_reader();
    {
      std::lock_guard lk(mu_);
      for (auto& s : slots_) s->cv.notify_all();
    }
    if (reader_.joinable()) reader_.join();
    for (auto& t : workers_) t.join();
    workers_.clear();
    std::lock_guard lk(mu_);
    for (auto& in : inbox_) close_conn(*in.conn, "");
    inbox_.clear();
    for (auto& c : queue_) close_conn(*c, "");
    queue_.clear();
    idle_.clear();
    ::close(epoll_);
    ::close(wake_);
    running_ = false;
  }

 private:
  void wake_reader() {
    uint64_t one = 1;
    (void)!::write(wake_, &one, sizeof one);
  }
  void hand_to_reader(std::unique_ptr<Conn> c, bool fresh) {
    {
      std::lock_guard lk(mu_);
      if (!stopping_) {
        inbox_.push_back({std::move(c), fresh});
        c = nullptr;
      }
    }
    if (!c) wake_reader();
    else close_conn(*c, fresh ? error_response(ApiError(503, "the server is shutting down", "", "shutting_down",
                                                        "service_unavailable"))
                              : "");
  }
  void close_conn(Conn& c, const std::string& response) {
    answer_and_close(c.fd, response);
    c.fd = -1;
    if (c.counted) stats_->open--;
  }

  // ---- the reader thread ----
  void read_loop() {
    std::vector<epoll_event> events(256);
    auto next_scan = Clock::now();
    for (;;) {
      const int n = ::epoll_wait(epoll_, events.data(), int(events.size()), 50);
      for (int i = 0; i < n; i++) {
        if (events[size_t(i)].data.fd == wake_) {
          uint64_t v;
          (void)!::read(wake_, &v, sizeof v);
          continue;
        }
        auto it = held_.find(events[size_t(i)].data.fd);
        if (it != held_.end()) on_readable(it);
      }
      std::vector<Incoming> in;
      {
        std::lock_guard lk(mu_);
        if (stopping_) break;
        in.swap(inbox_);
      }
      for (auto& x : in) take(std::move(x.conn), x.fresh);
      if (Clock::now() >= next_scan) {
        expire();
        next_scan = Clock::now() + std::chrono::milliseconds(50);
      }
    }
    for (auto& [fd, c] : held_) close_conn(*c, "");
    held_.clear();
  }

  void take(std::unique_ptr<Conn> c, bool fresh) {
    if (fresh) {
      if (stats_->open >= int64_t(lim_.max_connections) && !evict_one()) {
        stats_->rejected++;
        close_conn(*c, error_response(ApiError(503, "the server has too many open connections; retry later", "",
                                               "too_many_connections", "service_unavailable")));
        return;
      }
      c->counted = true;
      stats_->open++;
    }
    Conn& ref = *c;
    const int fd = c->fd;
    held_[fd] = std::move(c);
    if (try_dispatch(ref) == Wait) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = ref.fd;
      ::epoll_ctl(epoll_, EPOLL_CTL_ADD, ref.fd, &ev);
      ref.polled = true;
    }
  }

  // Makes room for one more connection: closes the one that has waited longest on its client, if long enough.
  bool evict_one() {
    const auto now = Clock::now();
    Conn* victim = nullptr;
    for (auto& [fd, c] : held_)
      if (now - c->since >= lim_.evict_after && (!victim || c->since < victim->since)) victim = c.get();
    if (!victim) return false;
    stats_->evicted++;
    const bool idle = victim->served > 0 && !victim->got_bytes;  // between requests: close quietly
    drop(*victim, idle ? "" : error_response(ApiError(503, "the server has too many open connections; retry later",
                                                      "", "too_many_connections", "service_unavailable")));
    return true;
  }

  void drop(Conn& c, const std::string& response) {
    const int fd = c.fd;
    unpoll(c);
    close_conn(c, response);
    held_.erase(fd);
  }

  void on_readable(std::unordered_map<int, std::unique_ptr<Conn>>::iterator it) {
    Conn& c = *it->second;
    char tmp[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, tmp, sizeof tmp, 0);
      if (n > 0) {
        if (!c.got_bytes) c.request_start = Clock::now();
        c.got_bytes = true;
        c.buf.append(tmp, size_t(n));
        if (c.buf.size() > lim_.max_head_bytes + lim_.max_body_bytes) break;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        drop(c, "");  // the client has gone
        return;
      }
      if (errno == EINTR) continue;
      break;
    }
    try_dispatch(c);
  }

  void unpoll(Conn& c) {
    if (c.polled) ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
    c.polled = false;
  }

  enum Outcome { Wait, Dispatched, Refused };
  // Checks what has arrived: hands a complete request to the workers, refuses a bad one, or waits for more.
  // `c` is gone from held_ unless it waits.
  Outcome try_dispatch(Conn& c) {
    if (c.head_len == 0) {
      const size_t end = find_head_end(c.buf);
      if (end == std::string::npos ? c.buf.size() > lim_.max_head_bytes : end > lim_.max_head_bytes)
        return refuse(c, ApiError(431, "the request head is too large"), stats_->bad_requests);
      if (end == std::string::npos) return Wait;
      if (auto err = check_request_head(std::string_view(c.buf).substr(0, end), c.head))
        return refuse(c, *err, stats_->bad_requests);
      if (!lim_.api_key.empty() &&
          std::find(lim_.open_paths.begin(), lim_.open_paths.end(), c.head.path) == lim_.open_paths.end() &&
          !bearer_matches(c.head.authorization, lim_.api_key)) {
        return refuse(c, ApiError(401, c.head.authorization.empty()
                                           ? "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'."
                                           : "Incorrect API key provided.",
                                  "", "invalid_api_key"),
                      stats_->unauthorized);
      }
      if (c.head.content_length && *c.head.content_length > lim_.max_body_bytes)
        return refuse(c, ApiError(413, "the request body is too large"), stats_->bad_requests);
      c.head_len = end;
      c.body_deadline = Clock::now() + lim_.body_timeout;
    }
    const bool body_here = c.head.chunked || c.head.expect_continue || !c.head.content_length ||
                           c.buf.size() >= c.head_len + *c.head.content_length;
    if (!body_here) return Wait;
    unpoll(c);  // before a worker may touch it
    auto node = held_.extract(c.fd);
    std::lock_guard lk(mu_);
    if (idle_.empty()) {
      queue_.push_back(std::move(node.mapped()));
    } else {
      // The worker that went idle last: its stack and malloc arena are warm, and the memory of workers that
      // only a past peak needed is not touched again (RSS follows concurrency, not the number of threads).
      Slot* w = idle_.back();
      idle_.pop_back();
      w->job = std::move(node.mapped());
      w->cv.notify_one();
    }
    return Dispatched;
  }

  Outcome refuse(Conn& c, const ApiError& e, std::atomic<int64_t>& counter) {
    counter++;
    drop(c, error_response(e));
    return Refused;
  }

  void expire() {
    const auto now = Clock::now();
    std::vector<std::pair<Conn*, bool>> late;  // (connection, answer 408)
    for (auto& [fd, c] : held_) {
      if (c->head_len > 0) {
        if (now >= c->body_deadline) late.push_back({c.get(), true});
      } else if (c->got_bytes) {
        if (now - c->request_start >= lim_.header_timeout) late.push_back({c.get(), true});
      } else if (now - c->since >= (c->served > 0 ? lim_.keep_alive_timeout : lim_.header_timeout)) {
        late.push_back({c.get(), false});  // nothing was asked: close quietly
      }
    }
    for (auto& [c, answer] : late) {
      if (answer) stats_->timed_out++;
      drop(*c, answer ? error_response(ApiError(408, "the request did not arrive in time", "", "request_timeout"))
                      : "");
    }
  }

  // ---- the workers ----
  struct Slot {
    std::condition_variable cv;
    std::unique_ptr<Conn> job;
  };
  void work_loop(Slot& self) {
    for (;;) {
      std::unique_ptr<Conn> c;
      {
        std::unique_lock lk(mu_);
        if (!queue_.empty()) {
          c = std::move(queue_.front());
          queue_.pop_front();
        } else {
          if (stopping_) return;
          idle_.push_back(&self);
          self.cv.wait(lk, [&] { return stopping_ || self.job; });
          if (!self.job) {
            idle_.erase(std::find(idle_.begin(), idle_.end(), &self));
            continue;  // stopping: serve what is queued, then return
          }
          c = std::move(self.job);
        }
      }
      serve_one(std::move(c));
    }
  }

  void serve_one(std::unique_ptr<Conn> c) {
    const RequestHead head = c->head;
    // httplib reads a body only for these methods; an unread body would be taken for the next request.
    const bool body_read = head.method == "POST" || head.method == "PUT" || head.method == "PATCH" ||
                           (head.method == "DELETE" && head.content_length);
    const bool has_body = head.chunked || (head.content_length && *head.content_length > 0);
    bool stopping;
    {
      std::lock_guard lk(mu_);
      stopping = stopping_;
    }
    const bool close_after = ++c->served >= lim_.max_requests_per_connection || stopping || head.chunked ||
                             (has_body && !body_read);
    ConnStream strm(*c, c->body_deadline, lim_.write_timeout);
    bool closed = false;
    const bool ok = serve_(strm, close_after, closed);
    // The request's bytes must all have been read, or what is left of it would be parsed as the next request.
    const bool whole = head.chunked || strm.consumed() == c->head_len + head.content_length.value_or(0);
    if (!ok || closed || close_after || !whole) {
      close_conn(*c, "");
      return;
    }
    c->buf.erase(0, strm.consumed());
    if (c->buf.capacity() > (size_t(64) << 10) && c->buf.size() < (size_t(64) << 10)) c->buf.shrink_to_fit();
    c->head_len = 0;
    c->head = RequestHead{};
    c->since = c->request_start = Clock::now();
    c->got_bytes = !c->buf.empty();  // a pipelined request
    hand_to_reader(std::move(c), false);
  }

  struct Incoming {
    std::unique_ptr<Conn> conn;
    bool fresh;
  };

  const ConnectionLimits lim_;
  std::shared_ptr<ConnectionStats> stats_;
  Serve serve_;
  std::mutex mu_;  // guards inbox_, queue_, idle_, the slots' jobs, stopping_, running_
  std::vector<Incoming> inbox_;            // for the reader: new connections, and those back from a worker
  std::deque<std::unique_ptr<Conn>> queue_;  // complete requests, for the workers
  bool stopping_ = false, running_ = false;
  int epoll_ = -1, wake_ = -1;
  std::thread reader_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> idle_;  // waiting for a job, the most recently idle last
  std::vector<std::thread> workers_;
  std::unordered_map<int, std::unique_ptr<Conn>> held_;  // reader thread only
};

namespace {

thread_local int t_request_socket = -1;

// httplib's accept loop hands every accepted socket to its task queue; this one passes it straight to the pool.
class PoolQueue final : public httplib::TaskQueue {
 public:
  explicit PoolQueue(ConnectionPool& pool) : pool_(pool) { pool_.start(); }
  void enqueue(std::function<void()> fn) override { fn(); }  // process_and_close_socket: a quick hand-over
  void shutdown() override { pool_.stop(); }

 private:
  ConnectionPool& pool_;
};

}  // namespace

GuardedServer::GuardedServer(ConnectionLimits limits) : stats_(std::make_shared<ConnectionStats>()) {
  set_read_timeout(std::chrono::duration_cast<std::chrono::seconds>(limits.body_timeout).count() + 1);
  set_write_timeout(std::chrono::duration_cast<std::chrono::seconds>(limits.write_timeout).count() + 1);
  set_payload_max_length(limits.max_body_bytes);
  set_keep_alive_max_count(limits.max_requests_per_connection);
  pool_ = std::make_unique<ConnectionPool>(std::move(limits), stats_,
                                           [this](httplib::Stream& s, bool close_connection, bool& closed) {
                                             t_request_socket = s.socket();
                                             const bool ok = process_request(s, close_connection, closed, nullptr);
                                             t_request_socket = -1;
                                             return ok;
                                           });
  new_task_queue = [this] { return new PoolQueue(*pool_); };
}

GuardedServer::~GuardedServer() { pool_->stop(); }

int current_request_socket() { return t_request_socket; }

void GuardedServer::raise_backlog(int n) {
  if (svr_sock_ != INVALID_SOCKET) ::listen(svr_sock_, n);
}

bool GuardedServer::process_and_close_socket(socket_t sock) {
  pool_->admit(sock);
  return true;
}

}  // namespace oar::server
