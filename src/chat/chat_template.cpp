#include "chat/chat_template.h"

#include <algorithm>

#include "core/error.h"

namespace oar {

// Written for oar in the formats Meta documents for its chat models.
const std::string& builtin_llama2_chat_template() {
  static const std::string t = R"({%- if messages and messages[0]['role'] == 'system' -%}
{%- set system_message = messages[0]['content'] | trim -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set system_message = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] not in ['user', 'assistant'] or (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/... after an optional system message') -}}
{%- endif -%}
{%- if message['role'] == 'user' -%}
{%- if loop.first and system_message -%}
{{- bos_token + '[INST] <<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] | trim + ' [/INST]' -}}
{%- else -%}
{{- bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' -}}
{%- endif -%}
{%- else -%}
{{- ' ' + message['content'] | trim + ' ' + eos_token -}}
{%- endif -%}
{%- endfor -%}
)";
  return t;
}

const std::string& builtin_llama3_chat_template() {
  static const std::string t = R"({{- bos_token -}}
{%- for message in messages -%}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
)";
  return t;
}

ChatTemplate::ChatTemplate(std::string source, std::string origin, std::string bos_token, std::string eos_token)
    : source_(std::move(source)), origin_(std::move(origin)), bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)) {
  try {
    tmpl_ = std::make_shared<const jinja::Template>(source_);
  } catch (const jinja::TemplateError& e) {
    fail(origin_, e.what());
  }
}

namespace {

// A special token's text, or "" (the vocabulary has a single special id for exactly that string).
bool has_special_token(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.encode(text, false);
  return ids.size() == 1 && tok.is_special(ids[0]) && tok.id_to_piece(ids[0]) == text;
}

}  // namespace

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok) {
  std::string bos = tok.bos_id() >= 0 ? tok.id_to_piece(tok.bos_id()) : "";
  std::string eos = tok.eos_ids().empty() ? "" : tok.id_to_piece(tok.eos_ids()[0]);
  std::string own = tok.chat_template();
  if (!own.empty()) return ChatTemplate(own, "chat template (tokenizer_config.json)", bos, eos);
  if (has_special_token(tok, "<|start_header_id|>"))
    return ChatTemplate(builtin_llama3_chat_template(), "built-in Llama-3 chat template", bos, eos);
  return ChatTemplate(builtin_llama2_chat_template(), "built-in Llama-2 chat template", bos, eos);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const std::function<bool()>& cancelled) const {
  jinja::RenderLimits limits = limits_;
  limits.cancelled = cancelled;
  // The budget grows with the conversation: a template reads its text a few times and writes it once or
  // twice, escaped at worst (tojson), whatever its length.
  size_t text_bytes = bos_token_.size() + eos_token_.size();
  for (const ChatMessage& m : messages) text_bytes += m.role.size() + m.content.size();
  limits.max_steps += int64_t(text_bytes);
  limits.max_string_bytes = std::max(limits.max_string_bytes, 8 * text_bytes);

  jinja::List msgs;
  for (const ChatMessage& m : messages) {
    jinja::Dict d;
    d.set("role", jinja::Value(m.role));
    d.set("content", jinja::Value(m.content));
    msgs.emplace_back(std::move(d));
  }
  // The variables apply_chat_template passes: messages, tools, documents, add_generation_prompt and the
  // tokenizer's special tokens.
  jinja::Dict g;
  g.set("messages", jinja::Value(std::move(msgs)));
  g.set("tools", jinja::Value::none());
  g.set("documents", jinja::Value::none());
  g.set("add_generation_prompt", jinja::Value(add_generation_prompt));
  g.set("bos_token", jinja::Value(bos_token_));
  g.set("eos_token", jinja::Value(eos_token_));
  return tmpl_->render(jinja::Value(std::move(g)), limits);
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt, const std::function<bool()>& cancelled) const {
  // The BOS/EOS strings the templates write become their tokens: Tokenizer::encode's rule for special-token text.
  return tok.encode(render(messages, add_generation_prompt, cancelled), false);
}

}  // namespace oar
