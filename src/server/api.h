// The OpenAI-compatible API's request side, with no model involved: parsing and validating a request body into
// an ApiRequest (a pure function, also the fuzz target), the OpenAI error body, and the sampling parameters a
// request asks for.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat/chat_template.h"
#include "core/error.h"
#include "infer/sampler.h"

namespace oar::server {

// An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status.
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : Error(message), status(status), param(std::move(param)), code(std::move(code)),
        type(std::move(type)) {}
  int status;
  std::string param, code, type;  // "" is null in the body
};
std::string error_body(const ApiError& e);

enum class Endpoint { Completions, ChatCompletions };

struct PromptInput {
  std::string text;          // when !is_ids
  std::vector<int32_t> ids;  // when is_ids: token ids as given (no BOS added)
  bool is_ids = false;
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::vector<PromptInput> prompts;   // completions: one choice per prompt
  std::vector<ChatMessage> messages;  // chat completions
  bool add_generation_prompt = true;  // chat (vLLM's extension)
  // max_tokens, or max_completion_tokens (the same; both given must agree). Absent: 16 for completions (as
  // OpenAI), the rest of the context for chat. 0 only for completions with echo (prompt logprobs only).
  std::optional<int64_t> max_tokens;
  double temperature = 1.0;           // OpenAI's defaults; 0 means greedy
  double top_p = 1.0;
  int64_t top_k = 0;                  // extension; 0 or -1: off
  double repetition_penalty = 1.0;    // extension (multiplicative, as PaddleNLP and Hugging Face apply it)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  bool ignore_eos = false;            // extension
  int64_t n = 1;                      // choices per prompt (they share the prompt's KV blocks)
  bool echo = false;                  // completions: the prompt before the completion (and its logprobs)
  // Top tokens per position when logprobs are asked for, else -1. Completions: "logprobs": k (0 = only the
  // chosen token's). Chat: "logprobs": true with "top_logprobs": k (default 0).
  int32_t logprobs = -1;
  bool tokens_as_ids = false;         // vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:N"
};

struct ParseLimits {
  std::string served_model_name;  // a request naming another model is refused ("" accepts any)
  int64_t vocab_size = 0;         // token-id prompts must lie in [0, vocab_size) (0: unchecked)
  size_t max_prompts = 32;        // prompts in one completions request
  size_t max_messages = 1024;
  size_t max_stop = 4;            // as OpenAI
  int64_t max_n = 16;             // choices per prompt
  size_t max_choices = 128;       // prompts * n
  int32_t max_logprobs = 20;      // top tokens per position (OpenAI's chat limit; vLLM's default)
  int max_depth = 32;             // JSON nesting
};

// Parses and validates a request body. Throws ApiError (status 400) naming the offending parameter. Never throws
// anything else for any input (fuzzed).
ApiRequest parse_request(std::string_view body, Endpoint endpoint, const ParseLimits& limits);

// The sampler settings of a request; `seed` is used when the request gave none. Sample `sample` (0..n-1) of a
// prompt draws from seed + sample, so that the n choices differ yet a given seed reproduces them.
SamplingParams sampling_params(const ApiRequest& r, uint64_t seed, int64_t sample = 0);

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool valid_utf8(std::string_view s);

}  // namespace oar::server
