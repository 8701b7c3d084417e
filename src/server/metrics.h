// /metrics: the loop's counters and histograms in Prometheus' text exposition format (version 0.0.4).
#pragma once
#include <cstdint>
#include <string>

#include "server/engine_loop.h"

namespace oar::server {

struct HttpCounters {
  int64_t in_flight = 0;        // generation requests being answered now
  int64_t rejected_draining = 0;  // answered 503 while shutting down
};

std::string prometheus_text(const LoopMetrics& m, const HttpCounters& http, const std::string& model_name);

}  // namespace oar::server
