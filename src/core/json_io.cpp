#include "core/json_io.h"

#include "core/error.h"
#include "core/fs.h"

namespace oar {
namespace {

using json = nlohmann::json;

struct TooDeep {};  // thrown out of the parser callback, caught right here

json parse_bounded(std::string_view text, const JsonEventHook* hook = nullptr) {
  // The callback sees each value's depth as it opens; stop before building anything deeper than the limit.
  auto limit_depth = [hook](int depth, json::parse_event_t event, json& value) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth)
      throw TooDeep{};
    if (hook) (*hook)(depth, event, value);
    return true;
  };
  return json::parse(text.begin(), text.end(), limit_depth);
}

std::string too_deep_text() { return "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels"; }

}  // namespace

std::string in_quotes(const std::string& s) {
  std::string d = json(s).dump(-1, ' ', false, json::error_handler_t::replace);
  return "'" + d.substr(1, d.size() - 2) + "'";
}

std::string json_error_text(const json::exception& e) {
  std::string w = e.what();
  if (!w.empty() && w[0] == '[') {
    size_t close = w.find("] ");
    if (close != std::string::npos) w = w.substr(close + 2);
  }
  for (char& ch : w)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return w;
}

json parse_json(std::string_view text, const std::string& where) { return parse_json(text, where, nullptr); }

json parse_json(std::string_view text, const std::string& where, const JsonEventHook& hook) {
  try {
    return parse_bounded(text, hook ? &hook : nullptr);
  } catch (const TooDeep&) {
    fail(where, "invalid JSON: " + too_deep_text());
  } catch (const json::exception& e) {
    fail(where, "invalid JSON: " + json_error_text(e));
  }
}

json parse_json_file(const std::string& path) { return parse_json(read_file(path), path); }

std::optional<json> try_parse_json(std::string_view text, std::string* error, bool* too_deep) {
  if (too_deep) *too_deep = false;
  try {
    return parse_bounded(text);
  } catch (const TooDeep&) {
    if (error) *error = too_deep_text();
    if (too_deep) *too_deep = true;
  } catch (const json::exception& e) {
    if (error) *error = json_error_text(e);
  }
  return std::nullopt;
}

json json_or_discarded(std::string_view text, const std::string& where) {
  std::string error;
  bool too_deep = false;
  std::optional<json> j = try_parse_json(text, &error, &too_deep);
  if (too_deep) fail(where, "invalid JSON: " + error);
  return j ? std::move(*j) : json(json::value_t::discarded);
}

}  // namespace oar
