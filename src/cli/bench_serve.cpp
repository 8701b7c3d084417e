// `oar bench-serve`: drives a running `oar serve` (or any OpenAI-compatible server that takes token-id prompts)
// with N concurrent streaming clients for a bounded number of requests and time, and reports request and
// output-token throughput, time to first token and time per output token (p50, p99).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/flags.h"
#include "core/error.h"
#include "server/load_gen.h"

namespace oar::cli {

Action add_bench_serve(CLI::App& app) {
  auto o = std::make_shared<server::LoadOptions>();
  auto url = std::make_shared<std::string>("http://127.0.0.1:8000");
  auto as_json = std::make_shared<bool>(false);
  app.add_option("--url", *url, "the server, http://HOST:PORT");
  app.add_option("--concurrency", o->concurrency, "client threads, one request in flight each")->check(positive_int(100000));
  app.add_option("--requests", o->requests, "requests in all")->check(positive_int());
  app.add_option("--max_tokens", o->max_tokens, "new tokens per request")->check(positive_int());
  app.add_option("--prompt_len", o->prompt_len, "prompt tokens per request (random ids)")->check(positive_int());
  app.add_option("--duration_s", o->duration_s, "time limit: no new requests after it, running ones are cut off")
      ->check(positive_real());
  app.add_option("--model", o->model, "model name to send (default: the first of /v1/models)");
  app.add_option("--seed", o->seed, "seed of the random prompts")->check(non_negative_int());
  app.add_flag("--json", *as_json, "print the results as one JSON object");
  app.add_option("--api_key", o->api_key, "sent as 'Authorization: Bearer KEY' (oar serve --api_key)")
      ->envname("OAR_API_KEY");
  return [o, url, as_json]() -> int {
    server::parse_http_url(*url, o->host, o->port);
    server::LoadResult r = server::run_load(*o);
    if (r.ok == 0)
      throw Error("bench-serve: no request succeeded (" + std::to_string(r.failed) + " failed, " +
                  std::to_string(r.cut_off) + " cut off by --duration_s)" +
                  (r.first_error.empty() ? std::string() : ": " + r.first_error));
    const double ttft50 = server::percentile(r.ttft_s, 50), ttft99 = server::percentile(r.ttft_s, 99);
    const double tpot50 = server::percentile(r.tpot_s, 50), tpot99 = server::percentile(r.tpot_s, 99);
    if (*as_json) {
      nlohmann::json j = {{"model", r.model}, {"concurrency", o->concurrency}, {"requests_ok", r.ok},
                          {"requests_failed", r.failed}, {"requests_cut_off", r.cut_off}, {"elapsed_s", r.elapsed_s},
                          {"prompt_tokens", r.prompt_tokens}, {"output_tokens", r.output_tokens},
                          {"request_throughput", r.request_throughput()}, {"output_throughput", r.output_throughput()},
                          {"ttft_p50_s", ttft50}, {"ttft_p99_s", ttft99}, {"tpot_p50_s", tpot50}, {"tpot_p99_s", tpot99}};
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    std::printf("bench-serve: %lld requests ok, %lld failed, %lld cut off, in %.2f s (%d clients, %lld prompt + %lld new tokens each, model '%s')\n",
                (long long)r.ok, (long long)r.failed, (long long)r.cut_off, r.elapsed_s, o->concurrency,
                (long long)o->prompt_len, (long long)o->max_tokens, r.model.c_str());
    if (!r.first_error.empty()) std::printf("bench-serve: first error: %s\n", r.first_error.c_str());
    std::printf("request throughput: %.3f requests/s\n", r.request_throughput());
    std::printf("output token throughput: %.2f tokens/s (%lld tokens)\n", r.output_throughput(), (long long)r.output_tokens);
    std::printf("time to first token: p50 %.4f s, p99 %.4f s\n", ttft50, ttft99);
    std::printf("time per output token: p50 %.5f s, p99 %.5f s\n", tpot50, tpot99);
    return 0;
  };
}

}  // namespace oar::cli
