#include "server/client_probe.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>

#include "server/http_connections.h"

namespace oar::server {

namespace {

// The numeric host and port of a socket address, as httplib writes them into its Request.
bool host_and_port(const sockaddr_storage& a, socklen_t len, std::string& host, int& port) {
  char h[NI_MAXHOST], p[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, h, sizeof h, p, sizeof p,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return false;
  host = h;
  port = std::atoi(p);
  return true;
}

}  // namespace

ClientProbe::ClientProbe(const httplib::Request& req, std::chrono::milliseconds every)
    : remote_addr_(req.remote_addr), remote_port_(req.remote_port), local_port_(req.local_port), every_(every),
      next_check_(std::chrono::steady_clock::now() + every) {
  if (current_request_socket() >= 0) fd_ = current_request_socket();
}

int ClientProbe::find_socket() const {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    sockaddr_storage local{}, peer{};
    socklen_t llen = sizeof local, plen = sizeof peer;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &llen) != 0) continue;
    if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &plen) != 0) continue;
    std::string lhost, phost;
    int lport = 0, pport = 0;
    if (!host_and_port(local, llen, lhost, lport) || !host_and_port(peer, plen, phost, pport)) continue;
    if (lport == local_port_ && pport == remote_port_ && phost == remote_addr_) {
      found = int(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

bool ClientProbe::gone() {
  if (gone_) return true;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_check_) return false;
  next_check_ = now + every_;
  if (fd_ == -2) fd_ = find_socket();
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return gone_ = true;
  // Readable: a pipelined request, or the end of the stream (recv 0) or a reset (-1).
  char c;
  const ssize_t n = recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  gone_ = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  return gone_;
}

}  // namespace oar::server
