#include "server/metrics.h"

#include <cstdio>

namespace oar::server {

namespace {

std::string label_value(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string num(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

class Writer {
 public:
  explicit Writer(const std::string& model) : labels_("model_name=\"" + label_value(model) + "\"") {}
  void metric(const char* name, const char* type, const char* help, double value) {
    head(name, type, help);
    out_ += std::string(name) + "{" + labels_ + "} " + num(value) + "\n";
  }
  void histogram(const char* name, const char* help, const Histogram& h) {
    head(name, "histogram", help);
    uint64_t cum = 0;
    for (size_t i = 0; i < h.counts.size(); i++) {
      cum += h.counts[i];
      std::string le = i < h.bounds.size() ? num(h.bounds[i]) : "+Inf";
      out_ += std::string(name) + "_bucket{" + labels_ + ",le=\"" + le + "\"} " + std::to_string(cum) + "\n";
    }
    out_ += std::string(name) + "_sum{" + labels_ + "} " + num(h.sum) + "\n";
    out_ += std::string(name) + "_count{" + labels_ + "} " + std::to_string(h.count) + "\n";
  }
  std::string take() { return std::move(out_); }

 private:
  void head(const char* name, const char* type, const char* help) {
    out_ += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  std::string labels_, out_;
};

}  // namespace

std::string prometheus_text(const LoopMetrics& m, const HttpCounters& http, const std::string& model_name) {
  Writer w(model_name);
  const EngineMetrics& e = m.engine;
  w.metric("oar_num_requests_running", "gauge", "Requests in the running batch.", double(e.running));
  w.metric("oar_num_requests_waiting", "gauge", "Requests waiting to be scheduled.", double(e.waiting));
  w.metric("oar_http_requests_in_flight", "gauge", "Generation requests being answered.", double(http.in_flight));
  w.metric("oar_kv_cache_blocks_total", "gauge", "KV cache blocks.", double(e.blocks_total));
  w.metric("oar_kv_cache_blocks_used", "gauge", "KV cache blocks in use.", double(e.blocks_used));
  w.metric("oar_kv_cache_blocks_free", "gauge", "KV cache blocks free.", double(e.blocks_free));
  w.metric("oar_kv_cache_usage_ratio", "gauge", "Fraction of KV cache blocks in use.",
           e.blocks_total > 0 ? double(e.blocks_used) / double(e.blocks_total) : 0.0);
  w.metric("oar_prefix_cache_queries_total", "counter", "Prompt blocks looked up in the prefix cache.",
           double(e.prefix_cache_queries));
  w.metric("oar_prefix_cache_hits_total", "counter", "Prompt blocks found in the prefix cache.",
           double(e.prefix_cache_hits));
  w.metric("oar_prefix_cache_hit_rate", "gauge", "Prefix cache hits over lookups since start (0 before any).",
           e.prefix_cache_queries ? double(e.prefix_cache_hits) / double(e.prefix_cache_queries) : 0.0);
  w.metric("oar_prompt_tokens_total", "counter", "Prompt tokens prefilled.", double(e.prompt_tokens));
  w.metric("oar_generation_tokens_total", "counter", "Tokens generated.", double(e.generated_tokens));
  w.metric("oar_num_preemptions_total", "counter", "Requests preempted (to be recomputed).", double(e.preemptions));
  w.metric("oar_request_success_total", "counter", "Requests finished (stop or length).", double(m.requests_finished));
  w.metric("oar_request_aborted_total", "counter", "Requests aborted (client disconnected or shutdown).",
           double(m.requests_aborted));
  w.metric("oar_request_rejected_total", "counter", "Requests refused because the waiting queue was full (429).",
           double(m.requests_rejected_full));
  w.metric("oar_request_rejected_draining_total", "counter", "Requests refused while shutting down (503).",
           double(http.rejected_draining));
  w.metric("oar_http_connections_open", "gauge", "HTTP connections open.", double(http.connections_open));
  w.metric("oar_http_connections_rejected_total", "counter", "Connections refused at the connection cap (503).",
           double(http.connections_rejected));
  w.metric("oar_http_connections_evicted_total", "counter",
           "Connections waiting on their client closed to make room at the cap.", double(http.connections_evicted));
  w.metric("oar_http_request_timeouts_total", "counter", "Requests whose head or body came too slowly (408).",
           double(http.request_timeouts));
  w.metric("oar_http_bad_requests_total", "counter", "Requests refused for their HTTP framing (400, 413, 431).",
           double(http.bad_requests));
  w.metric("oar_http_unauthorized_total", "counter", "Requests without the right API key (401).",
           double(http.unauthorized));
  w.metric("oar_engine_steps_total", "counter", "Engine steps run.", double(m.steps));
  w.histogram("oar_time_to_first_token_seconds", "Time from a request's arrival at the engine to its first token.",
              m.ttft);
  w.histogram("oar_time_per_output_token_seconds", "Mean time between output tokens, per finished request.", m.tpot);
  return w.take();
}

}  // namespace oar::server
