// libFuzzer target: arbitrary bytes as the body of a completions or chat-completions request. parse_request
// must either return a request whose every field is within the limits it promises, or throw ApiError with
// status 400 and a one-line message, and the error body must be valid JSON (any other exception, crash,
// sanitizer report or leak is a bug). The first byte picks the endpoint.
//   seed corpus: fuzz/corpus/request/
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "server/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace oar::server;
  if (size == 0) return 0;
  const Endpoint ep = (data[0] & 1) ? Endpoint::ChatCompletions : Endpoint::Completions;
  std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  ParseLimits lim;
  lim.served_model_name = "tiny";
  lim.vocab_size = 512;
  try {
    ApiRequest r = parse_request(body, ep, lim);
    if (ep == Endpoint::Completions) {
      if (r.prompts.empty() || r.prompts.size() > lim.max_prompts) __builtin_trap();
      for (auto& p : r.prompts) {
        if (!valid_utf8(p.text)) __builtin_trap();
        if (p.is_ids && p.ids.empty()) __builtin_trap();
        for (int32_t id : p.ids)
          if (id < 0 || id >= lim.vocab_size) __builtin_trap();
      }
    } else {
      if (r.messages.empty() || r.messages.size() > lim.max_messages) __builtin_trap();
      for (auto& m : r.messages)
        if (m.role.empty() || !valid_utf8(m.role) || !valid_utf8(m.content)) __builtin_trap();
    }
    if (r.max_tokens && *r.max_tokens < 1) __builtin_trap();
    if (!(r.temperature >= 0 && r.temperature <= 2)) __builtin_trap();
    if (!(r.top_p > 0 && r.top_p <= 1)) __builtin_trap();
    if (r.top_k < 0) __builtin_trap();
    if (r.stop.size() > lim.max_stop) __builtin_trap();
    for (auto& s : r.stop)
      if (s.empty() || !valid_utf8(s)) __builtin_trap();
    if (r.include_usage && !r.stream) __builtin_trap();
    oar::SamplingParams p = sampling_params(r, 7);
    p.validate();  // what the engine checks: must hold for every accepted request
  } catch (const ApiError& e) {
    if (e.status != 400) __builtin_trap();
    std::string_view msg = e.what();
    if (msg.empty() || msg.find('\n') != std::string_view::npos) __builtin_trap();
    if (nlohmann::json::parse(error_body(e), nullptr, false).is_discarded()) __builtin_trap();
  }
  return 0;
}
