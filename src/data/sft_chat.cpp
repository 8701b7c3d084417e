#include "data/sft_chat.h"

#include <algorithm>

#include "chat/jinja.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json_io.h"

namespace oar {

ChatRenderer paddlenlp_chat_renderer(std::shared_ptr<const ChatTemplate> tmpl) {
  if (!tmpl) fail("chat_template", "no template");
  return [tmpl](const std::vector<std::pair<std::string, std::string>>& conv, const nlohmann::json&) {
    const std::string& where = tmpl->origin();
    std::vector<ChatMessage> all;
    std::vector<std::string> answers;
    for (const auto& [user, bot] : conv) {
      // The answer of one round on its own: what the assistant message adds after the generation prompt.
      const std::string with = tmpl->render({{"user", user}, {"assistant", bot}}, false);
      const std::string without = tmpl->render({{"user", user}}, true);
      if (with.compare(0, without.size(), without) != 0)
        fail(where, "the rendered prompt is not a prefix of the rendered round, so the answer cannot be found");
      answers.push_back(with.substr(without.size()));
      all.push_back({"user", user});
      all.push_back({"assistant", bot});
    }
    // The whole conversation cut at each answer in turn: what lies between answers is never learned.
    const std::string whole = tmpl->render(all, false);
    ChatSegments seg;
    size_t pos = 0;
    for (const std::string& ans : answers) {
      const size_t at = ans.empty() ? pos : whole.find(ans, pos);
      if (at == std::string::npos)
        fail(where, "an answer rendered alone does not appear in the rendered conversation");
      seg.rounds.emplace_back(whole.substr(pos, at - pos), ans);
      pos = at + ans.size();
    }
    if (pos != whole.size())
      fail(where, "the rendered conversation has text after the last answer, which no round owns");
    return seg;
  };
}

namespace {

std::shared_ptr<const jinja::Template> compile(const std::string& source, const std::string& origin) {
  try {
    return std::make_shared<const jinja::Template>(source);
  } catch (const jinja::TemplateError& e) {
    fail(origin, e.what());
  }
}

}  // namespace

ChatRenderer legacy_chat_renderer(const nlohmann::json& spec, const std::string& origin) {
  if (!spec.is_object()) fail(origin, "a chat_template.json must be a JSON object");
  auto conv_it = spec.find("conversation");
  if (conv_it == spec.end() || !conv_it->is_array() || conv_it->size() != 2 || !(*conv_it)[0].is_string() ||
      !(*conv_it)[1].is_string())
    fail(origin, "\"conversation\" must be a list of two strings (the user and the bot template)");
  std::shared_ptr<const jinja::Template> system;
  if (spec.contains("system") && !spec["system"].is_null()) {
    if (!spec["system"].is_string()) fail(origin, "\"system\" must be a string");
    system = compile(spec["system"].get<std::string>(), origin);
  }
  auto user_t = compile((*conv_it)[0].get<std::string>(), origin);
  auto bot_t = compile((*conv_it)[1].get<std::string>(), origin);
  return [system, user_t, bot_t, origin](const std::vector<std::pair<std::string, std::string>>& conv,
                                         const nlohmann::json& context) {
    // The record's context, plus what PaddleNLP adds while training.
    auto globals = [&](const char* key, const std::string& value, int64_t index) {
      jinja::Value v = jinja::Value::from_json(context.is_object() ? context : nlohmann::json::object());
      jinja::Dict& d = v.as_dict();
      d.set("is_training", jinja::Value(true));
      if (key) {
        d.set(key, jinja::Value(value));
        d.set("index", jinja::Value(index));
      }
      return v;
    };
    ChatSegments seg;
    try {
      if (system) seg.system = system->render(globals(nullptr, "", 0));
      for (size_t i = 0; i < conv.size(); i++)
        seg.rounds.emplace_back(user_t->render(globals("user", conv[i].first, int64_t(i))),
                                bot_t->render(globals("bot", conv[i].second, int64_t(i))));
    } catch (const jinja::TemplateError& e) {
      fail(origin, e.what());
    }
    return seg;
  };
}

namespace {

std::string token_text(const Tokenizer& tok, int32_t id) { return id >= 0 ? tok.id_to_piece(id) : ""; }

// A chat template file: PaddleNLP's JSON object, HF's {"chat_template": "..."}, or Jinja text.
SftChatChoice load_template_file(const std::string& path, const Tokenizer& tok) {
  const std::string text = read_file(path);
  nlohmann::json j = json_or_discarded(text, path);
  SftChatChoice c;
  c.origin = path;
  if (!j.is_discarded() && j.is_object() && j.contains("chat_template")) {
    if (!j["chat_template"].is_string()) fail(path, "\"chat_template\" must be a string");
    j = j["chat_template"].get<std::string>();
  }
  if (!j.is_discarded() && j.is_object()) {
    c.render = legacy_chat_renderer(j, path);
    return c;
  }
  const std::string source = (!j.is_discarded() && j.is_string()) ? j.get<std::string>() : text;
  auto tmpl = std::make_shared<const ChatTemplate>(source, path, token_text(tok, tok.bos_id()),
                                                   tok.eos_ids().empty() ? "" : token_text(tok, tok.eos_ids()[0]));
  c.render = paddlenlp_chat_renderer(tmpl);
  return c;
}

SftChatChoice default_template(const std::string& tokenizer_dir, const Tokenizer& tok) {
  const std::string beside = join_path(tokenizer_dir, "chat_template.json");
  if (!tokenizer_dir.empty() && file_exists(beside)) return load_template_file(beside, tok);
  SftChatChoice c;
  if (!tok.chat_template().empty()) {
    c.origin = "chat template (tokenizer_config.json)";
    auto tmpl = std::make_shared<const ChatTemplate>(tok.chat_template(), c.origin, token_text(tok, tok.bos_id()),
                                                     tok.eos_ids().empty() ? "" : token_text(tok, tok.eos_ids()[0]));
    c.render = paddlenlp_chat_renderer(tmpl);
  }
  return c;
}

}  // namespace

SftChatChoice choose_sft_chat_template(const std::string& chat_template, const std::string& model_name_or_path,
                                       const std::string& tokenizer_dir, const Tokenizer& tok) {
  std::string lower = chat_template;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  if (lower == "none") return {};
  if (chat_template.empty() || chat_template == model_name_or_path) return default_template(tokenizer_dir, tok);
  std::string path = chat_template;
  if (dir_exists(path)) path = join_path(path, "chat_template.json");
  if (!file_exists(path)) {
    SftChatChoice c = default_template(tokenizer_dir, tok);
    c.warning = "chat_template: " + path + " not found; using " + (c.render ? c.origin : "no chat template");
    return c;
  }
  return load_template_file(path, tok);
}

}  // namespace oar
