// Chat templates for fine-tuning data (notes/paddlenlp.md §2.3): which template applies, and how a conversation
// is cut into the never-learned prompt parts and the learned answers that the SFT reader (sft_dataset.h) needs.
// Two kinds, as in PaddleNLP:
//  - PaddleNLP's own chat_template.json ({"system": ..., "conversation": [user, bot], "query": ...}, each a Jinja
//    snippet over {{user}} / {{bot}} and the record's "context"), rendered piece by piece; the system part is
//    separate and always kept;
//  - a Jinja chat template as Hugging Face writes them (tokenizer_config.json), split as PaddleNLP's
//    encode_chat_inputs does.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "chat/chat_template.h"
#include "data/sft_dataset.h"

namespace oar {

// Jinja template. Per round i the answer is render([user_i, assistant_i]) minus its prefix render([user_i], with
// the generation prompt); the whole conversation is rendered once and cut at the answers in order, giving the
// prompt parts (the template's BOS text, headers and user turns). There is no separate system part. A template
// whose renderings do not line up this way is an oar::Error naming the template.
ChatRenderer paddlenlp_chat_renderer(std::shared_ptr<const ChatTemplate> tmpl);

// PaddleNLP's chat_template.json object; `origin` names it in errors. Variables: user / bot, index (the round,
// from 0), is_training (true) and every key of the record's "context".
ChatRenderer legacy_chat_renderer(const nlohmann::json& spec, const std::string& origin);

struct SftChatChoice {
  ChatRenderer render;  // empty: no template, the plain src/tgt rules apply
  std::string origin;   // which template, for the log ("" when none)
  std::string warning;  // set when a chat_template path was given but not found (PaddleNLP warns and goes on)
};
// PaddleNLP's init_chat_template for run_finetune.py. chat_template is the config value: "" (unset) or equal to
// model_name_or_path -> the tokenizer's default; "none" -> no template; a directory -> its chat_template.json;
// a file -> that file (a chat_template.json object, {"chat_template": "<jinja>"}, or Jinja text); a path that
// does not exist -> a warning and the default. The default is tokenizer_dir/chat_template.json when present,
// else the tokenizer's own Jinja template (tokenizer_config.json), else none. Bad files are an oar::Error
// naming them.
SftChatChoice choose_sft_chat_template(const std::string& chat_template, const std::string& model_name_or_path,
                                       const std::string& tokenizer_dir, const Tokenizer& tok);

}  // namespace oar
