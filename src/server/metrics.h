// /metrics: the loop's counters and histograms in Prometheus' text exposition format (version 0.0.4).
#pragma once
#include <cstdint>
#include <string>

#include "server/engine_loop.h"

namespace oar::server {

struct HttpCounters {
  int64_t in_flight = 0;        // generation requests being answered now
  int64_t rejected_draining = 0;  // answered 503 while shutting down
  int64_t connections_open = 0;
  int64_t connections_rejected = 0;  // 503 at the connection cap
  int64_t connections_evicted = 0;   // closed to make room at the cap
  int64_t request_timeouts = 0;      // 408
  int64_t bad_requests = 0;          // refused by the request-head checks (400, 413, 431)
  int64_t unauthorized = 0;          // 401
};

std::string prometheus_text(const LoopMetrics& m, const HttpCounters& http, const std::string& model_name);

}  // namespace oar::server
