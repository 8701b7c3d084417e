#include "server/load_gen.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/json_io.h"

namespace oar::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * double(v.size() - 1);
  size_t lo = size_t(pos);
  size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

void parse_http_url(const std::string& url, std::string& host, int& port) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) throw Error("--url " + url + ": expected http://HOST:PORT");
  std::string rest = url.substr(scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || rest.find('/') != std::string::npos)
    throw Error("--url " + url + ": expected http://HOST:PORT");
  host = rest.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  try {
    size_t used = 0;
    port = std::stoi(rest.substr(colon + 1), &used);
    if (used != rest.size() - colon - 1 || port <= 0 || port > 65535) throw std::invalid_argument("port");
  } catch (const std::exception&) {
    throw Error("--url " + url + ": bad port");
  }
}

namespace {

struct Outcome {
  bool ok = false, cut_off = false;
  std::string error;
  int64_t output_tokens = 0, chunks = 0;
  double ttft = 0, tpot = 0, latency = 0;
};

// One streaming request; its server-sent events are parsed as they arrive.
Outcome one_request(const LoadOptions& opt, const std::string& model, uint64_t index, Clock::time_point deadline) {
  Outcome out;
  std::mt19937_64 rng(opt.seed * 1000003u + index);
  std::uniform_int_distribution<int32_t> pick(opt.token_lo, opt.token_hi - 1);
  json prompt = json::array();
  for (int64_t i = 0; i < opt.prompt_len; i++) prompt.push_back(pick(rng));
  json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", opt.max_tokens}, {"temperature", 0},
               {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"ignore_eos", opt.ignore_eos}};

  httplib::Client cli(opt.host, opt.port);
  const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
  cli.set_read_timeout(std::chrono::duration<double>(std::max(1.0, left)));
  cli.set_connection_timeout(std::chrono::seconds(10));
  std::string buf, err_body;
  bool done = false, first = true;
  Clock::time_point t0 = Clock::now(), t_first{}, t_last{};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!opt.api_key.empty()) req.set_header("Authorization", "Bearer " + opt.api_key);
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    if (Clock::now() > deadline) {
      out.cut_off = true;
      return false;  // closing the connection aborts the request on the server
    }
    buf.append(data, len);
    size_t e;
    while ((e = buf.find("\n\n")) != std::string::npos) {
      std::string ev = buf.substr(0, e);
      buf.erase(0, e + 2);
      if (ev.rfind("data: ", 0) != 0) {
        err_body += ev;
        continue;
      }
      std::string payload = ev.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      std::optional<json> parsed = try_parse_json(payload);  // depth-limited: the server is not trusted
      if (!parsed) continue;
      const json& c = *parsed;
      if (c.contains("usage") && c["usage"].is_object()) out.output_tokens = c["usage"].value("completion_tokens", int64_t(0));
      if (c.contains("choices") && c["choices"].is_array() && !c["choices"].empty()) {
        const json& ch = c["choices"][0];
        if (ch.contains("text") && ch["text"].is_string() && !ch["text"].get<std::string>().empty()) {
          t_last = Clock::now();
          if (first) t_first = t_last;
          first = false;
          out.chunks++;
        }
      }
    }
    if (buf.size() > (size_t(1) << 20)) err_body += buf, buf.clear();  // not SSE: keep it for the message
    return true;
  };
  httplib::Result res = cli.send(req);
  if (out.cut_off) return out;
  if (!res) {
    out.error = "connection: " + httplib::to_string(res.error());
    return out;
  }
  if (res->status != 200) {
    out.error = "HTTP " + std::to_string(res->status) + ": " + (err_body + buf).substr(0, 300);
    return out;
  }
  if (!done) {
    out.error = "the stream ended without [DONE]";
    return out;
  }
  out.ok = true;
  const Clock::time_point t_end = Clock::now();
  if (out.output_tokens == 0) out.output_tokens = out.chunks;
  out.latency = std::chrono::duration<double>(t_end - t0).count();
  if (!first) {
    out.ttft = std::chrono::duration<double>(t_first - t0).count();
    if (out.output_tokens > 1) out.tpot = std::chrono::duration<double>(t_last - t_first).count() / double(out.output_tokens - 1);
  }
  return out;
}

std::string ask_model(const LoadOptions& opt) {
  httplib::Client cli(opt.host, opt.port);
  cli.set_connection_timeout(std::chrono::seconds(10));
  if (!opt.api_key.empty()) cli.set_bearer_token_auth(opt.api_key);
  auto r = cli.Get("/v1/models");
  if (!r) throw Error("bench-serve: cannot reach http://" + opt.host + ":" + std::to_string(opt.port) + " (" + httplib::to_string(r.error()) + ")");
  json j = try_parse_json(r->body).value_or(json(json::value_t::discarded));
  if (r->status != 200 || j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string())
    throw Error("bench-serve: /v1/models did not list a model (HTTP " + std::to_string(r->status) + ")");
  return j["data"][0]["id"].get<std::string>();
}

}  // namespace

LoadResult run_load(const LoadOptions& opt) {
  if (opt.concurrency < 1) throw Error("--concurrency must be at least 1");
  if (opt.requests < 1) throw Error("--requests must be at least 1");
  if (opt.max_tokens < 1) throw Error("--max_tokens must be at least 1");
  if (opt.prompt_len < 1) throw Error("--prompt_len must be at least 1");
  if (!(opt.duration_s > 0)) throw Error("--duration_s must be positive");
  if (opt.token_lo < 0 || opt.token_hi <= opt.token_lo) throw Error("bench-serve: bad prompt token range");
  LoadResult res;
  res.model = opt.model.empty() ? ask_model(opt) : opt.model;
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.duration_s));
  std::atomic<int64_t> next{0};
  std::mutex mu;
  auto worker = [&] {
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= opt.requests || Clock::now() >= deadline) return;
      Outcome o = one_request(opt, res.model, uint64_t(i), deadline);
      std::lock_guard lk(mu);
      if (o.cut_off) {
        res.cut_off++;
      } else if (!o.ok) {
        res.failed++;
        if (res.first_error.empty()) res.first_error = o.error;
      } else {
        res.ok++;
        res.prompt_tokens += opt.prompt_len;
        res.output_tokens += o.output_tokens;
        res.ttft_s.push_back(o.ttft);
        if (o.output_tokens > 1) res.tpot_s.push_back(o.tpot);
        res.latency_s.push_back(o.latency);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < opt.concurrency; t++) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  res.elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
  return res;
}

}  // namespace oar::server
