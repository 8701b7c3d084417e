// The one way oar parses JSON: with a nesting-depth limit, and errors as one line naming the file.
//
// nlohmann's parser is iterative, but copying, comparing or dumping a value recurses once per level, so a
// document nested 70,000 deep (a hostile tokenizer.json, request body or data line) would overflow the stack
// long after parsing. No real config, tokenizer or data line comes close to kMaxJsonDepth.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace oar {

constexpr int kMaxJsonDepth = 256;

// Throws oar::Error "WHERE: invalid JSON: <problem>" (WHERE is a file name, "file:line", or a flag).
nlohmann::json parse_json(std::string_view text, const std::string& where);
// Also calls `hook` for every parse event (nlohmann's callback arguments), e.g. to catch duplicate keys.
using JsonEventHook = std::function<void(int depth, nlohmann::json::parse_event_t event, const nlohmann::json& value)>;
nlohmann::json parse_json(std::string_view text, const std::string& where, const JsonEventHook& hook);
// read_file + parse_json, naming the path.
nlohmann::json parse_json_file(const std::string& path);
// For callers that treat bad JSON as "not JSON": no value, the problem in *error and, when the text was JSON
// nested past kMaxJsonDepth (bad input, not "some other format"), *too_deep = true.
std::optional<nlohmann::json> try_parse_json(std::string_view text, std::string* error = nullptr,
                                             bool* too_deep = nullptr);

// A file that may be JSON or another format (a chat template: JSON or Jinja text): the value, or a discarded
// value when the text is not JSON. JSON nested too deep is still an error naming `where`.
nlohmann::json json_or_discarded(std::string_view text, const std::string& where);

// A string from a file, quoted for a one-line message: 'text', control characters escaped, invalid UTF-8 replaced.
std::string in_quotes(const std::string& s);

// A JSON parse error as one line, without nlohmann's "[json.exception.parse_error.101] " prefix.
std::string json_error_text(const nlohmann::json::exception& e);

}  // namespace oar
