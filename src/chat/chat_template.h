// Chat templates: a conversation (role, content messages) rendered into the prompt text the model was tuned on.
// The template comes from the tokenizer (tokenizer_config.json's "chat_template", rendered by the Jinja subset
// in jinja.h exactly as Hugging Face's apply_chat_template renders it), else a built-in Llama-2 or Llama-3
// format chosen by the vocabulary.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat/jinja.h"
#include "tokenizer/tokenizer.h"

namespace oar {

struct ChatMessage {
  std::string role;
  std::string content;
};

// The built-in templates (used when the tokenizer has none).
const std::string& builtin_llama2_chat_template();  // <s>[INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] ... </s>
const std::string& builtin_llama3_chat_template();  // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>

class ChatTemplate {
 public:
  // Parses `source`; throws oar::Error naming `origin` for a syntax error or an unsupported construct.
  ChatTemplate(std::string source, std::string origin, std::string bos_token, std::string eos_token);
  // The tokenizer's own template when it has one; else Llama-3's format when the vocabulary has the special
  // token <|start_header_id|>, else Llama-2's.
  static ChatTemplate for_tokenizer(const Tokenizer& tok);

  // The prompt text. add_generation_prompt asks the template to open the assistant's turn. Throws
  // jinja::TemplateRaised when the template refuses the conversation (raise_exception),
  // jinja::RenderLimitExceeded when it needs more than its budget, TemplateError otherwise, and
  // jinja::RenderCancelled once `cancelled` (polled while rendering) returns true.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const std::function<bool()>& cancelled = {}) const;
  // render() then tokenize as apply_chat_template(tokenize=True) does: no BOS added (templates write their
  // own bos_token); special-token strings in the text become their ids.
  std::vector<int32_t> encode(const Tokenizer& tok, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt, const std::function<bool()>& cancelled = {}) const;

  // Each render's budget (jinja::RenderLimits; its `cancelled` is render()'s). Steps and the string limit
  // grow with the conversation's size, so that a long conversation never runs out of budget.
  void set_render_limits(const jinja::RenderLimits& limits) { limits_ = limits; }

  const std::string& origin() const { return origin_; }
  const std::string& source() const { return source_; }

 private:
  std::string source_, origin_, bos_token_, eos_token_;
  std::shared_ptr<const jinja::Template> tmpl_;  // shared: templates are immutable once parsed
  jinja::RenderLimits limits_;
};

}  // namespace oar
