// Whether the client of a request has gone away, for the work a handler does before its response starts
// (rendering a chat template): httplib 0.11 hands its handlers no socket, so the probe takes the socket that the
// connection layer is answering on this thread (server/http_connections.h), or else finds it once by its two
// addresses (it stays open while the handler runs), then polls it.
#pragma once
#include <chrono>
#include <string>

namespace httplib {
struct Request;
}

namespace oar::server {

class ClientProbe {
 public:
  // Polls at most every `every` (finding the socket costs a scan of the process's descriptors).
  ClientProbe(const httplib::Request& req, std::chrono::milliseconds every);
  // True once the peer has closed or reset the connection.
  bool gone();

 private:
  int find_socket() const;
  std::string remote_addr_;
  int remote_port_, local_port_;
  std::chrono::milliseconds every_;
  std::chrono::steady_clock::time_point next_check_;
  int fd_ = -2;  // -2: not looked for yet; -1: not found
  bool gone_ = false;
};

}  // namespace oar::server
