// The load generator behind `oar bench-serve`: N client threads on loopback send streaming completion
// requests (random token-id prompts of a fixed length, a fixed number of new tokens) until a request count or a
// time limit is reached, and measure request and token throughput, time to first token and time per output token.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace oar::server {

struct LoadOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string model;          // "" asks the server (/v1/models)
  int concurrency = 1;        // client threads, each with one request in flight
  int64_t requests = 1;       // requests in all
  int64_t max_tokens = 16;    // new tokens per request
  int64_t prompt_len = 32;    // prompt tokens per request
  double duration_s = 300;    // stop issuing (and cut off running requests) after this long
  bool ignore_eos = true;     // every request generates exactly max_tokens (as PaddleNLP's benchmark)
  int32_t token_lo = 3, token_hi = 259;  // prompt ids are drawn from [lo, hi): valid in any Llama vocabulary
  uint64_t seed = 0;
  std::string api_key;        // sent as "Authorization: Bearer KEY" when not empty
};

struct LoadResult {
  int64_t ok = 0, failed = 0, cut_off = 0;
  int64_t prompt_tokens = 0, output_tokens = 0;
  double elapsed_s = 0;
  std::vector<double> ttft_s, tpot_s, latency_s;  // per successful request
  std::string first_error;
  std::string model;
  double request_throughput() const { return elapsed_s > 0 ? double(ok) / elapsed_s : 0; }
  double output_throughput() const { return elapsed_s > 0 ? double(output_tokens) / elapsed_s : 0; }
};

// Throws oar::Error when the server cannot be reached at all.
LoadResult run_load(const LoadOptions& opt);

// Linear-interpolated percentile (numpy's default), q in [0, 100]; 0 for no samples.
double percentile(std::vector<double> v, double q);

// "http://HOST:PORT" (an optional trailing slash) -> host and port; throws oar::Error otherwise.
void parse_http_url(const std::string& url, std::string& host, int& port);

}  // namespace oar::server
