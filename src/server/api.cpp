#include "server/api.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/utf8.h"

namespace oar::server {

using nlohmann::json;

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

bool valid_utf8(std::string_view s) { return utf8_is_valid(s); }

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message, const std::string& code = "") {
  throw ApiError(400, message, param, code);
}

// Nesting depth of the JSON text, brackets inside strings excluded (checked before parsing so that nothing
// recursive ever sees a hostile document).
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_str = false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    if (in_str) {
      if (c == '\\') i++;
      else if (c == '"') in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return max_depth;
}

// null counts as absent, as the OpenAI API treats it.
const json* field(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

double number(const json& v, const char* name) {
  if (!v.is_number()) bad(name, std::string("'") + name + "' must be a number");
  double d = v.get<double>();
  if (!std::isfinite(d)) bad(name, std::string("'") + name + "' must be a finite number");
  return d;
}

int64_t integer(const json& v, const char* name) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > uint64_t(INT64_MAX)) bad(name, std::string("'") + name + "' is too large");
    return int64_t(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {  // 16.0 is an integer; 16.5 is not
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
  }
  bad(name, std::string("'") + name + "' must be an integer");
}

bool boolean(const json& v, const char* name) {
  if (!v.is_boolean()) bad(name, std::string("'") + name + "' must be a boolean");
  return v.get<bool>();
}

std::string text_content(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {  // [{"type": "text", "text": "..."}, ...]: the texts joined
    std::string out;
    for (auto& part : content) {
      if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
        bad(param, "each content part must be an object with a 'type'");
      if (part["type"] != "text") bad(param, "content parts of type '" + part["type"].get<std::string>() + "' are not supported (only 'text')");
      if (!part.contains("text") || !part["text"].is_string()) bad(param, "a text content part needs a string 'text'");
      out += part["text"].get<std::string>();
    }
    return out;
  }
  bad(param, "'content' must be a string or a list of text parts");
}

std::vector<int32_t> token_ids(const json& arr, const ParseLimits& lim, const std::string& param) {
  std::vector<int32_t> ids;
  for (auto& t : arr) {
    if (!t.is_number_integer() && !t.is_number_unsigned()) bad(param, "token-id prompts must be lists of integers");
    int64_t v = t.is_number_unsigned() ? (t.get<uint64_t>() > uint64_t(INT32_MAX) ? -1 : int64_t(t.get<uint64_t>())) : t.get<int64_t>();
    if (v < 0 || v > INT32_MAX || (lim.vocab_size > 0 && v >= lim.vocab_size))
      bad(param, "token id " + t.dump() + " is outside the vocabulary" +
                     (lim.vocab_size > 0 ? " (size " + std::to_string(lim.vocab_size) + ")" : std::string()));
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) bad(param, "a token-id prompt must not be empty");
  return ids;
}

// The body as a JSON object: valid UTF-8, not nested too deeply, well-formed.
json parse_body(std::string_view body, const ParseLimits& lim) {
  if (!valid_utf8(body)) bad("", "the request body is not valid UTF-8", "invalid_utf8");
  if (json_depth(body) > lim.max_depth) bad("", "the request body is nested too deeply");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    // nlohmann's message names the position ("syntax error while parsing value - ... at line 1, column 7").
    bad("", std::string("malformed JSON: ") + e.what(), "invalid_json");
  }
  if (!j.is_object()) bad("", "the request body must be a JSON object", "invalid_json");
  return j;
}

void check_model(const json& j, const ParseLimits& lim) {
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("model", "'model' must be a string");
    if (!lim.served_model_name.empty() && m->get<std::string>() != lim.served_model_name)
      bad("model", "The model '" + m->get<std::string>() + "' does not exist (this server serves '" +
                       lim.served_model_name + "')", "model_not_found");
  }
}

// Chat completions: the messages, each a role and its text, and add_generation_prompt.
void parse_messages(const json& j, const ParseLimits& lim, ApiRequest& r) {
  const json* msgs = field(j, "messages");
  if (!msgs) bad("messages", "'messages' is required");
  if (!msgs->is_array() || msgs->empty()) bad("messages", "'messages' must be a non-empty list");
  if (msgs->size() > lim.max_messages) bad("messages", "too many messages (at most " + std::to_string(lim.max_messages) + ")");
  for (size_t i = 0; i < msgs->size(); i++) {
    const json& m = (*msgs)[i];
    const std::string p = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(p, "each message must be an object with 'role' and 'content'");
    const json* role = field(m, "role");
    if (!role || !role->is_string() || role->get<std::string>().empty()) bad(p + ".role", "each message needs a 'role' string");
    const json* content = field(m, "content");
    ChatMessage cm;
    cm.role = role->get<std::string>();
    if (content) cm.content = text_content(*content, i);
    else if (cm.role != "assistant") bad(p + ".content", "each message needs 'content'");
    r.messages.push_back(std::move(cm));
  }
  if (const json* v = field(j, "add_generation_prompt")) r.add_generation_prompt = boolean(*v, "add_generation_prompt");
}

// Completions' prompt: a string, a list of strings, one list of token ids, or a list of those.
void parse_prompt(const json& j, const ParseLimits& lim, ApiRequest& r) {
  const json* p = field(j, "prompt");
  if (!p) bad("prompt", "'prompt' is required");
  if (p->is_string()) {
    r.prompts.push_back({p->get<std::string>(), {}, false});
  } else if (p->is_array() && !p->empty()) {
    const json& first = (*p)[0];
    if (first.is_number()) {  // one prompt of token ids
      r.prompts.push_back({"", token_ids(*p, lim, "prompt"), true});
    } else {
      for (auto& e : *p) {
        if (e.is_string()) r.prompts.push_back({e.get<std::string>(), {}, false});
        else if (e.is_array()) r.prompts.push_back({"", token_ids(e, lim, "prompt"), true});
        else bad("prompt", "'prompt' must be a string, a list of strings, or token ids");
      }
    }
  } else {
    bad("prompt", "'prompt' must be a string, a non-empty list of strings, or token ids");
  }
  if (r.prompts.size() > lim.max_prompts) bad("prompt", "too many prompts (at most " + std::to_string(lim.max_prompts) + ")");
}

// Completions: the prompts, echo and suffix.
void parse_completion_input(const json& j, const ParseLimits& lim, ApiRequest& r) {
  parse_prompt(j, lim, r);
  if (const json* v = field(j, "echo")) r.echo = boolean(*v, "echo");
  if (const json* v = field(j, "suffix")) {
    if (!v->is_string()) bad("suffix", "'suffix' must be a string");
    if (!v->get<std::string>().empty()) bad("suffix", "'suffix' is not supported");
  }
}

// How many tokens and choices: max_tokens / max_completion_tokens, n and best_of.
void parse_counts(const json& j, const ParseLimits& lim, bool chat, ApiRequest& r) {
  // max_completion_tokens is the newer name of max_tokens (both endpoints take either; both must agree).
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    if (const json* v = field(j, name)) {
      int64_t n = integer(*v, name);
      if (n < 0 || (n == 0 && !r.echo))
        bad(name, std::string("'") + name + "' must be at least 1" + (chat ? "" : " (0 only with 'echo')"));
      if (r.max_tokens && *r.max_tokens != n)
        bad(name, "'max_tokens' and 'max_completion_tokens' disagree (" + std::to_string(*r.max_tokens) + " vs " +
                      std::to_string(n) + "); give one of them");
      r.max_tokens = n;
    }
  }
  if (const json* v = field(j, "n")) {
    r.n = integer(*v, "n");
    if (r.n < 1 || r.n > lim.max_n) bad("n", "'n' must be within [1, " + std::to_string(lim.max_n) + "]");
    const size_t prompts = chat ? 1 : r.prompts.size();
    if (prompts * size_t(r.n) > lim.max_choices)
      bad("n", "too many choices: " + std::to_string(prompts) + " prompts times n=" + std::to_string(r.n) +
                   " (at most " + std::to_string(lim.max_choices) + ")");
  }
  if (const json* v = field(j, "best_of"); v && !chat && integer(*v, "best_of") != r.n)
    bad("best_of", "'best_of' must equal 'n' (no extra samples are drawn to pick from)");
}

// The sampler: temperature, top_p, top_k, the penalties and the seed.
void parse_sampling(const json& j, ApiRequest& r) {
  if (const json* v = field(j, "temperature")) {
    r.temperature = number(*v, "temperature");
    if (r.temperature < 0 || r.temperature > 2) bad("temperature", "'temperature' must be within [0, 2] (0 is greedy)");
  }
  if (const json* v = field(j, "top_p")) {
    r.top_p = number(*v, "top_p");
    if (!(r.top_p > 0 && r.top_p <= 1)) bad("top_p", "'top_p' must be within (0, 1]");
  }
  if (const json* v = field(j, "top_k")) {
    r.top_k = integer(*v, "top_k");
    if (r.top_k < -1) bad("top_k", "'top_k' must be -1 or 0 (off) or positive");
    if (r.top_k < 0) r.top_k = 0;
  }
  if (const json* v = field(j, "repetition_penalty")) {
    r.repetition_penalty = number(*v, "repetition_penalty");
    if (!(r.repetition_penalty > 0) || r.repetition_penalty > 100)
      bad("repetition_penalty", "'repetition_penalty' must be within (0, 100]");
  }
  for (const char* name : {"frequency_penalty", "presence_penalty"}) {
    if (const json* v = field(j, name)) {
      double d = number(*v, name);
      if (d < -2 || d > 2) bad(name, std::string("'") + name + "' must be within [-2, 2]");
      if (d != 0) bad(name, std::string("'") + name + "' is not supported; use 'repetition_penalty'");
    }
  }
  if (const json* v = field(j, "seed")) {
    if (v->is_number_unsigned()) r.seed = v->get<uint64_t>();
    else r.seed = uint64_t(integer(*v, "seed"));
  }
}

// Stop sequences: a string or a list of non-empty strings.
void parse_stop(const json& j, const ParseLimits& lim, ApiRequest& r) {
  const json* v = field(j, "stop");
  if (!v) return;
  if (v->is_string()) {
    r.stop.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (auto& s : *v) {
      if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings");
      r.stop.push_back(s.get<std::string>());
    }
  } else {
    bad("stop", "'stop' must be a string or a list of strings");
  }
  if (r.stop.size() > lim.max_stop) bad("stop", "at most " + std::to_string(lim.max_stop) + " stop sequences");
  for (auto& s : r.stop)
    if (s.empty()) bad("stop", "stop sequences must not be empty");
}

// Streaming and the output's form: stream, stream_options, ignore_eos, return_tokens_as_token_ids.
void parse_output_options(const json& j, ApiRequest& r) {
  if (const json* v = field(j, "stream")) r.stream = boolean(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (const json* u = field(*v, "include_usage")) r.include_usage = boolean(*u, "stream_options.include_usage");
  }
  if (const json* v = field(j, "ignore_eos")) r.ignore_eos = boolean(*v, "ignore_eos");
  if (const json* v = field(j, "return_tokens_as_token_ids")) r.tokens_as_ids = boolean(*v, "return_tokens_as_token_ids");
}

std::string logprobs_range(const ParseLimits& lim) { return "within [0, " + std::to_string(lim.max_logprobs) + "]"; }

// OpenAI's chat form: "logprobs": true, "top_logprobs": k.
void parse_chat_logprobs(const json& j, const ParseLimits& lim, ApiRequest& r) {
  const json* lp = field(j, "logprobs");
  const bool want = lp && boolean(*lp, "logprobs");
  if (const json* v = field(j, "top_logprobs")) {
    int64_t k = integer(*v, "top_logprobs");
    if (k < 0 || k > lim.max_logprobs) bad("top_logprobs", "'top_logprobs' must be " + logprobs_range(lim));
    if (!want && k > 0) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (want) r.logprobs = int32_t(k);
  } else if (want) {
    r.logprobs = 0;
  }
}

// The completions form: "logprobs": k, the number of top tokens (0: only the chosen token's logprob).
void parse_completion_logprobs(const json& j, const ParseLimits& lim, ApiRequest& r) {
  if (const json* v = field(j, "logprobs"); v && !(v->is_boolean() && !v->get<bool>())) {
    int64_t k = integer(*v, "logprobs");
    if (k < 0 || k > lim.max_logprobs) bad("logprobs", "'logprobs' must be " + logprobs_range(lim));
    r.logprobs = int32_t(k);
  }
  if (field(j, "top_logprobs")) bad("top_logprobs", "'top_logprobs' is a chat parameter; completions take 'logprobs': k");
}

// Parameters oar does not implement are refused unless they hold their no-op value.
void refuse_unsupported(const json& j) {
  if (const json* v = field(j, "logit_bias"); v && !(v->is_object() && v->empty()))
    bad("logit_bias", "'logit_bias' is not supported");
  for (const char* name : {"tools", "functions"})
    if (const json* v = field(j, name); v && !(v->is_array() && v->empty()))
      bad(name, std::string("'") + name + "' (function calling) is not supported");
  if (const json* v = field(j, "response_format")) {
    if (!v->is_object() || !v->contains("type") || (*v)["type"] != "text")
      bad("response_format", "only response_format {\"type\": \"text\"} is supported");
  }
}

}  // namespace

// Checks in a fixed order (the first problem found is the one reported).
ApiRequest parse_request(std::string_view body, Endpoint endpoint, const ParseLimits& lim) {
  const json j = parse_body(body, lim);
  ApiRequest r;
  r.endpoint = endpoint;
  const bool chat = endpoint == Endpoint::ChatCompletions;
  check_model(j, lim);
  if (chat) parse_messages(j, lim, r);
  else parse_completion_input(j, lim, r);
  parse_counts(j, lim, chat, r);
  parse_sampling(j, r);
  parse_stop(j, lim, r);
  parse_output_options(j, r);
  if (chat) parse_chat_logprobs(j, lim, r);
  else parse_completion_logprobs(j, lim, r);
  refuse_unsupported(j);
  return r;
}

SamplingParams sampling_params(const ApiRequest& r, uint64_t seed, int64_t sample) {
  SamplingParams p;
  if (r.temperature == 0) {
    p.greedy = true;  // OpenAI's temperature 0: the most likely token every time
    p.temperature = 1.0;
    p.top_p = 1.0;
    p.top_k = 0;
  } else {
    p.temperature = r.temperature;
    p.top_p = r.top_p;
    p.top_k = r.top_k;
  }
  p.repetition_penalty = r.repetition_penalty;
  p.seed = (r.seed ? *r.seed : seed) + uint64_t(sample);
  return p;
}

}  // namespace oar::server
